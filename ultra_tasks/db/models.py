"""SQLAlchemy 2 models. The schema itself is created by the Alembic migrations next door."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    """One LLM job through its life: queued → running (⇄ parked) → succeeded | failed | expired."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(8))
    queue: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_used: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: when the message reached the broker; NULL = recorded but not (yet) published: the sweeper sends it
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: past this the job is not run; it ends "expired"
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: a parked job is released back onto its queue at this time (or sooner, on recovery)
    parked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: why the job is in its status, for producers (e.g. why it is parked)
    status_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    #: fencing token of the run that holds (or last held) the job: it only grows, and a write of a run's
    #: outcome applies only while the row's token is not newer than the run's (jobs/lease.py)
    lease_token: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: the holder renews its lease while it runs; past this (and a grace) the sweeper republishes the job
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: the API tenant that submitted the job (NULL: submitted from Python or the CLI)
    tenant: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: the API batch the job is a line of (NULL: not a batch line); batch lines are bounded by the batch's
    #: own limits, not QUEUE_MAX_SIZE (jobs/admission.py)
    batch_id: Mapped[str | None] = mapped_column(String(40), nullable=True)

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
        Index("ux_jobs_idempotency_key", "idempotency_key", unique=True),
        # queue statistics read the jobs started or finished in a recent window (jobs/stats.py)
        Index("ix_jobs_finished_at", "finished_at"),
        Index("ix_jobs_started_at", "started_at"),
        Index("ix_jobs_status_lease_expires", "status", "lease_expires_at"),
    )


class OperationModeRecord(Base):
    """The one current operation mode (id 1), with a manual override and the recovery hysteresis state."""

    __tablename__ = "operation_mode"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[Any]] = mapped_column(JSON)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    override_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    override_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    better_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    better_checks: Mapped[int] = mapped_column(Integer, default=0)


class ModeTransition(Base):
    __tablename__ = "mode_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    from_mode: Mapped[str] = mapped_column(String(16))
    to_mode: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class ComponentStatus(Base):
    __tablename__ = "component_status"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    component: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(1000))
    severity: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_component_status_component_at", "component", "at"),)


class Tenant(Base):
    """Who calls the HTTP API: its jobs, files and batches are its own."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: requests per minute its keys may make together (NULL: no limit)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: spending limit in US dollars per ``budget_period`` (NULL: none; billing/budgets.py)
    budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: "day" or "month" (UTC): the period ``budget_usd`` is for
    budget_period: Mapped[str] = mapped_column(String(8), default="month", server_default="month")
    #: the ceiling no call's worst case may cross (NULL: ``budget_usd`` is the ceiling too)
    budget_hard_cap_usd: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiKey(Base):
    """One API key of a tenant, stored as the SHA-256 of the key (the key itself is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: the key's first characters, enough to tell keys apart in a listing, useless to authenticate
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiFile(Base):
    """A file uploaded through the API (purpose ``batch``) or written by a batch (its output and errors)."""

    __tablename__ = "api_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[builtins.bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_api_files_tenant_created", "tenant_id", "created_at"),)


class Batch(Base):
    """An OpenAI-style batch: one job per line of its input file, recorded with it in one transaction."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    input_file_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    total: Mapped[int] = mapped_column(Integer)
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_batches_tenant_created", "tenant_id", "created_at"),)


class BatchLine(Base):
    """Which job runs which ``custom_id`` of a batch."""

    __tablename__ = "batch_lines"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(40))
    line: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(512))

    __table_args__ = (Index("ux_batch_lines_batch_custom", "batch_id", "custom_id", unique=True),)


class LedgerEntry(Base):
    """One provider call of a job (billing/ledger.py): exactly one row per (job, attempt), the attempt
    named by the run's lease token and the call's number. ``status``: ``ok`` (usage known), ``error``
    (the provider answered with an error: nothing billed) or ``unknown`` (the call may have been billed:
    it timed out, or its worker died). Costs in nano-USD; NULL when the price or the usage is unknown."""

    __tablename__ = "ledger"

    #: the key is the call itself: a second write of the same call is refused by it (and ignored)
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    attempt_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(36), nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(8))
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: what the call's worst case was (what an ``unknown`` call counts against its budget)
    worst_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # one index beside the key: every job that calls a provider inserts a row, and each index costs it
    __table_args__ = (Index("ix_ledger_tenant_created", "tenant", "created_at"),)
