"""The ledger: one SQL row per provider call, keyed by (job id, attempt id), written exactly once.

The attempt id is the run's lease token and the call's number in the job (``"<token>:<n>"``): a run that
takes a job over holds a newer token, so its calls get new ids, while the same run writing the same call
again (a write retried, replayed from the write buffer, or applied twice by two flushers) hits the unique
index and changes nothing (``INSERT ... ON CONFLICT DO NOTHING``). A call whose worker died before it was
recorded is written by the job's next run as ``unknown`` (jobs' calls sent, counted in their lease, minus
the rows the job has): ``lost_attempt_id`` names those by the dead run's token, so two runs cannot both
write them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Connection, Table, case, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import read_transaction, transaction
from ultra_tasks.db.models import LedgerEntry

ledger_t = cast(Table, LedgerEntry.__table__)


class CallStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Entry:
    """One call as the ledger records it (JSON-safe: it may wait in the write buffer)."""

    job_id: str
    attempt_id: str
    status: str
    tenant: str | None = None
    deployment: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_nusd: int | None = None
    worst_nusd: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


_FIELDS = tuple(Entry.__dataclass_fields__)


def attempt_id(token: int, call: int) -> str:
    return f"{token}:{call}"


def lost_attempt_id(previous_token: int, index: int) -> str:
    """The id of the ``index``-th call a dead run left unrecorded (its token: no other run writes it)."""
    return f"{previous_token}:lost{index}"


#: the idempotent insert per dialect, built once: building a Core statement costs more CPU than running it
#: (records.py), and every job that calls a provider runs this one
_INSERTS: dict[str, Any] = {
    "postgresql": postgresql.insert(ledger_t).on_conflict_do_nothing(index_elements=["job_id", "attempt_id"]),
    "sqlite": sqlite.insert(ledger_t).on_conflict_do_nothing(index_elements=["job_id", "attempt_id"]),
}
_COLUMNS = tuple(Entry.__dataclass_fields__)


def write(conn: Connection, entries: Iterable[Entry | dict[str, Any]], at: datetime | None = None) -> int:
    """Insert the calls not yet recorded, in the caller's transaction; returns how many were new."""
    when = at or utcnow()
    rows = []
    for e in entries:
        row = e.to_dict() if isinstance(e, Entry) else {k: e.get(k) for k in _COLUMNS}
        row["created_at"] = when
        rows.append(row)
    if not rows:
        return 0
    statement = _INSERTS.get(conn.dialect.name)
    if statement is not None:
        return int(conn.execute(statement, rows).rowcount or 0)
    written = 0
    for row in rows:  # another database: one savepoint per row, a duplicate rolls back alone
        try:
            with conn.begin_nested():
                conn.execute(insert(ledger_t), row)
            written += 1
        except IntegrityError:
            continue
    return written


def record(entries: Iterable[Entry | dict[str, Any]], at: datetime | None = None) -> int:
    """Insert the calls in their own transaction (``DependencyUnavailableError`` if the database is down)."""
    entries = list(entries)
    if not entries:
        return 0
    with transaction() as conn:
        return write(conn, entries, at)


def apply_buffered(job_id: str, entries: list[dict[str, Any]], at: datetime | None = None) -> bool:
    """The write buffer's form of ``record`` (jobs/record_buffer.py)."""
    record(entries, at)
    return True


def calls_of(job_id: str) -> list[Entry]:
    with transaction() as conn:
        rows = conn.execute(
            select(ledger_t)
            .where(ledger_t.c.job_id == job_id)
            .order_by(ledger_t.c.created_at, ledger_t.c.attempt_id)
        ).all()
    return [Entry.from_dict(dict(r._mapping)) for r in rows]


def count_of(job_id: str) -> int:
    with transaction() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(ledger_t).where(ledger_t.c.job_id == job_id)
            ).scalar()
            or 0
        )


#: what a row counts against a budget: its cost when known, its worst case when the call's usage is unknown
_CHARGED = case(
    (ledger_t.c.status == CallStatus.UNKNOWN.value, func.coalesce(ledger_t.c.worst_nusd, 0)),
    else_=func.coalesce(ledger_t.c.cost_nusd, 0),
)


def charged_nusd(tenant: str, since: datetime, until: datetime) -> int:
    """What the tenant's calls in [since, until) count against its budget (rebuilding a lost book)."""
    with transaction() as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(_CHARGED), 0)).where(
                ledger_t.c.tenant == tenant, ledger_t.c.created_at >= since, ledger_t.c.created_at < until
            )
        ).scalar()
    return int(total or 0)


@dataclass(frozen=True)
class UsageRow:
    tenant: str | None
    key: str | None
    calls: int
    unknown_calls: int
    input_tokens: int
    output_tokens: int
    cost_nusd: int | None
    #: calls whose cost is unknown (no price, or usage unknown): ``cost_nusd`` leaves them out
    uncosted_calls: int


def usage(*, tenant: str | None = None, by: str = "model", since: datetime | None = None) -> list[UsageRow]:
    """Calls, tokens and cost per tenant and ``by`` (model, deployment or day), from a read replica when
    there are some."""
    if by == "day":
        key: Any = func.substr(func.cast(ledger_t.c.created_at, _text()), 1, 10)
    elif by == "deployment":
        key = ledger_t.c.deployment
    else:
        key = ledger_t.c.model
    where = []
    if tenant is not None:
        where.append(ledger_t.c.tenant == tenant)
    if since is not None:
        where.append(ledger_t.c.created_at >= since)
    uncosted = func.sum(case((ledger_t.c.cost_nusd.is_(None) & (ledger_t.c.status != "error"), 1), else_=0))
    query = (
        select(
            ledger_t.c.tenant,
            key.label("key"),
            func.count().label("calls"),
            func.sum(case((ledger_t.c.status == CallStatus.UNKNOWN.value, 1), else_=0)).label("unknown"),
            func.coalesce(func.sum(ledger_t.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(ledger_t.c.output_tokens), 0).label("output_tokens"),
            func.sum(ledger_t.c.cost_nusd).label("cost"),
            uncosted.label("uncosted"),
        )
        .where(*where)
        .group_by(ledger_t.c.tenant, key)
        .order_by(ledger_t.c.tenant, key)
    )
    with read_transaction() as conn:
        rows = conn.execute(query).all()
    return [
        UsageRow(
            r.tenant,
            None if r.key is None else str(r.key),
            int(r.calls),
            int(r.unknown or 0),
            int(r.input_tokens or 0),
            int(r.output_tokens or 0),
            None if r.cost is None else int(r.cost),
            int(r.uncosted or 0),
        )
        for r in rows
    ]


def _text() -> Any:
    from sqlalchemy import String

    return String()
