"""Tenants and their API keys, in SQL. A key is shown once, when it is made; the table keeps its SHA-256.

A key is 32 random bytes (``uk-`` + URL-safe base64): with that much entropy a plain SHA-256 cannot be
reversed or guessed, and it lets every request find its key with one indexed lookup (a slow password hash
would cost each request tens of milliseconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.exc import IntegrityError

from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import transaction
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import ApiKey, Tenant
from ultra_tasks.errors import ConfigurationError

tenants_t: Table = Tenant.__table__  # type: ignore[assignment]
keys_t: Table = ApiKey.__table__  # type: ignore[assignment]

KEY_PREFIX = "uk-"
#: characters of a key kept to tell keys apart in a listing
SHOWN_CHARS = 10


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class TenantInfo:
    id: str
    name: str
    rpm: int | None
    budget_usd: float | None


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def create_key(
    tenant: str,
    *,
    rpm: int | None = None,
    budget_usd: float | None = None,
    budget_period: str | None = None,
) -> tuple[KeyInfo, str]:
    """A new key for ``tenant`` (made on first use; ``rpm``, ``budget_usd`` and ``budget_period`` (day or
    month) update it when given): (its record, the key itself, which is not kept)."""
    name = tenant.strip()
    if not name or len(name) > 128:
        raise ConfigurationError("--tenant: expected a name of 1 to 128 characters")
    if rpm is not None and rpm < 1:
        raise ConfigurationError("--rpm: expected a positive number of requests per minute")
    if budget_usd is not None and budget_usd < 0:
        raise ConfigurationError("--budget-usd: expected a non-negative amount")
    if budget_period is not None and budget_period not in ("day", "month"):
        raise ConfigurationError(f"--period: expected day or month, got {budget_period!r}")
    upgrade_schema()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    info = KeyInfo(f"key_{uuid.uuid4().hex[:24]}", name, key[:SHOWN_CHARS], now, None)
    for _ in range(2):  # two makers of one new tenant at once: the loser reads the winner's row
        try:
            with transaction() as conn:
                tenant_id = conn.execute(select(tenants_t.c.id).where(tenants_t.c.name == name)).scalar()
                if tenant_id is None:
                    tenant_id = str(uuid.uuid4())
                    conn.execute(
                        tenants_t.insert().values(
                            id=tenant_id,
                            name=name,
                            rpm=rpm,
                            budget_usd=budget_usd,
                            budget_period=budget_period or "month",
                            created_at=now,
                        )
                    )
                else:
                    changes: dict[str, Any] = {}
                    if rpm is not None:
                        changes["rpm"] = rpm
                    if budget_usd is not None:
                        changes["budget_usd"] = budget_usd
                    if budget_period is not None:
                        changes["budget_period"] = budget_period
                    if changes:
                        conn.execute(update(tenants_t).where(tenants_t.c.id == tenant_id).values(**changes))
                conn.execute(
                    keys_t.insert().values(
                        id=info.id,
                        tenant_id=tenant_id,
                        key_hash=hash_key(key),
                        prefix=info.prefix,
                        created_at=now,
                    )
                )
            if budget_usd is not None or budget_period is not None:
                _budget_changed(tenant_id)
            return info, key
        except IntegrityError:
            continue
    raise ConfigurationError(f"tenant {name!r} could not be recorded; try again")


def _budget_changed(tenant_id: str) -> None:
    """Tell the fleet (billing/budgets.py); a fleet that cannot be told reads it within BUDGET_CACHE_S."""
    from ultra_tasks.billing.budgets import forget, notify
    from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

    forget()
    with contextlib.suppress(*REDIS_DOWN):
        notify(shared_redis(), tenant_id)


def list_keys() -> list[KeyInfo]:
    upgrade_schema()
    with transaction() as conn:
        rows = conn.execute(
            select(keys_t, tenants_t.c.name)
            .join(tenants_t, tenants_t.c.id == keys_t.c.tenant_id)
            .order_by(keys_t.c.created_at)
        ).all()
    return [KeyInfo(r.id, r.name, r.prefix, r.created_at, r.revoked_at) for r in rows]


def revoke_key(key_id: str) -> bool:
    """Revoke a key by id; False when there is no such key or it was revoked already."""
    upgrade_schema()
    with transaction() as conn:
        result = conn.execute(
            update(keys_t)
            .where(keys_t.c.id == key_id, keys_t.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    return result.rowcount > 0


def tenant_for_key(key: str) -> TenantInfo | None:
    """The tenant a live key belongs to, or None (unknown or revoked)."""
    with transaction() as conn:
        row = conn.execute(
            select(tenants_t.c.id, tenants_t.c.name, tenants_t.c.rpm, tenants_t.c.budget_usd)
            .join(keys_t, keys_t.c.tenant_id == tenants_t.c.id)
            .where(keys_t.c.key_hash == hash_key(key), keys_t.c.revoked_at.is_(None))
        ).first()
    return TenantInfo(row.id, row.name, row.rpm, row.budget_usd) if row is not None else None
