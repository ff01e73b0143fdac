"""Files of the API, in SQL with their tenant: batch inputs uploaded, batch outputs and errors written."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, select

from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import transaction
from ultra_tasks.db.models import ApiFile

files_t: Table = ApiFile.__table__  # type: ignore[assignment]
#: files one listing answers at most
MAX_LIST = 10_000
_META = (
    files_t.c.id,
    files_t.c.tenant_id,
    files_t.c.filename,
    files_t.c.purpose,
    files_t.c.bytes,
    files_t.c.created_at,
)


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class FileInfo:
    """A file's row without its content."""

    id: str
    tenant_id: str
    filename: str
    purpose: str
    bytes: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> FileInfo:
        mapping = row._mapping
        return cls(**{f.name: mapping[f.name] for f in fields(cls)})


def file_object(info: FileInfo) -> dict[str, Any]:
    """A file as OpenAI's ``FileObject``."""
    return {
        "id": info.id,
        "object": "file",
        "bytes": int(info.bytes),
        "created_at": int(info.created_at.timestamp()),
        "filename": info.filename,
        "purpose": info.purpose,
        "status": "processed",
        "status_details": None,
    }


def insert_file(
    conn: Connection, tenant_id: str, filename: str, purpose: str, content: bytes, file_id: str | None = None
) -> FileInfo:
    """Record a file in ``conn``'s transaction."""
    info = FileInfo(file_id or new_file_id(), tenant_id, filename[:255], purpose, len(content), utcnow())
    conn.execute(files_t.insert().values(**asdict(info), content=content))
    return info


def create_file(tenant_id: str, filename: str, purpose: str, content: bytes) -> FileInfo:
    with transaction() as conn:
        return insert_file(conn, tenant_id, filename, purpose, content)


def get_file(tenant_id: str, file_id: str) -> FileInfo | None:
    """The file when it is the tenant's, else None."""
    with transaction() as conn:
        row = conn.execute(
            select(*_META).where(files_t.c.id == file_id, files_t.c.tenant_id == tenant_id)
        ).first()
    return FileInfo.from_row(row) if row is not None else None


def file_content(tenant_id: str, file_id: str) -> bytes | None:
    with transaction() as conn:
        content = conn.execute(
            select(files_t.c.content).where(files_t.c.id == file_id, files_t.c.tenant_id == tenant_id)
        ).scalar()
    return bytes(content) if content is not None else None


def list_files(tenant_id: str, purpose: str | None = None, limit: int = MAX_LIST) -> list[FileInfo]:
    query = select(*_META).where(files_t.c.tenant_id == tenant_id)
    if purpose:
        query = query.where(files_t.c.purpose == purpose)
    with transaction() as conn:
        rows = conn.execute(query.order_by(files_t.c.created_at.desc()).limit(limit)).all()
    return [FileInfo.from_row(r) for r in rows]


def delete_file(tenant_id: str, file_id: str) -> bool:
    with transaction() as conn:
        result = conn.execute(
            delete(files_t).where(files_t.c.id == file_id, files_t.c.tenant_id == tenant_id)
        )
    return result.rowcount > 0
