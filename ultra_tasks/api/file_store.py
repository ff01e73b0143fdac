"""Files of the API, in SQL with their tenant: batch inputs uploaded, batch outputs and errors written."""

from __future__ import annotations

import uuid
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


def file_object(row: Any) -> dict[str, Any]:
    """A file's row as OpenAI's ``FileObject``."""
    created: datetime = row.created_at
    return {
        "id": row.id,
        "object": "file",
        "bytes": int(row.bytes),
        "created_at": int(created.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


def insert_file(
    conn: Connection, tenant_id: str, filename: str, purpose: str, content: bytes, file_id: str | None = None
) -> dict[str, Any]:
    """Record a file in ``conn``'s transaction; its FileObject."""
    row = {
        "id": file_id or new_file_id(),
        "tenant_id": tenant_id,
        "filename": filename[:255],
        "purpose": purpose,
        "bytes": len(content),
        "content": content,
        "created_at": utcnow(),
    }
    conn.execute(files_t.insert().values(**row))
    return file_object(type("Row", (), row))


def create_file(tenant_id: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
    with transaction() as conn:
        return insert_file(conn, tenant_id, filename, purpose, content)


def get_file(tenant_id: str, file_id: str) -> Any | None:
    """The file's metadata row when it is the tenant's, else None."""
    with transaction() as conn:
        return conn.execute(
            select(*_META).where(files_t.c.id == file_id, files_t.c.tenant_id == tenant_id)
        ).first()


def file_content(tenant_id: str, file_id: str) -> bytes | None:
    with transaction() as conn:
        content = conn.execute(
            select(files_t.c.content).where(files_t.c.id == file_id, files_t.c.tenant_id == tenant_id)
        ).scalar()
    return bytes(content) if content is not None else None


def list_files(tenant_id: str, purpose: str | None = None, limit: int = MAX_LIST) -> list[Any]:
    query = select(*_META).where(files_t.c.tenant_id == tenant_id)
    if purpose:
        query = query.where(files_t.c.purpose == purpose)
    with transaction() as conn:
        return list(conn.execute(query.order_by(files_t.c.created_at.desc()).limit(limit)).all())


def delete_file(tenant_id: str, file_id: str) -> bool:
    with transaction() as conn:
        result = conn.execute(
            delete(files_t).where(files_t.c.id == file_id, files_t.c.tenant_id == tenant_id)
        )
    return result.rowcount > 0
