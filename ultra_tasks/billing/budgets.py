"""Tenants' budgets: an amount per period (a UTC day or month) and an optional hard cap, kept in the
tenants table; read by workers and the API through a short in-process cache (BUDGET_CACHE_S), so a job
costs no SQL read for its tenant's budget and a job without one costs nothing at all.

``usd`` is the budget: a job is refused at submit when the period's settled spend leaves no room for its
worst case. ``hard_cap_usd`` (at least ``usd``) is the ceiling that no call's reservation may cross: jobs
accepted before the budget ran out still run up to it. Without a hard cap the budget is the ceiling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, select, update

from ultra_tasks import keys
from ultra_tasks.billing.prices import to_nusd
from ultra_tasks.db.engine import transaction
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import Tenant
from ultra_tasks.errors import ConfigurationError, DependencyUnavailableError

log = logging.getLogger(__name__)

tenants_t = cast(Table, Tenant.__table__)
_WITH_BUDGET = select(tenants_t).where(tenants_t.c.budget_usd.is_not(None))


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"


def period_bounds(period: Period | str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC period holding ``now``: [start, end)."""
    now = now.astimezone(UTC)
    if Period(period) is Period.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def period_id(period: Period | str, now: datetime) -> str:
    """``d20261201`` or ``m202612``: the name of the period holding ``now`` in Redis keys."""
    start, _ = period_bounds(period, now)
    return f"d{start:%Y%m%d}" if Period(period) is Period.DAY else f"m{start:%Y%m}"


@dataclass(frozen=True)
class Budget:
    tenant_id: str
    tenant: str
    usd: float
    period: Period
    hard_cap_usd: float | None = None

    @property
    def limit_nusd(self) -> int:
        """The ceiling reservations are checked against."""
        return to_nusd(self.hard_cap_usd if self.hard_cap_usd is not None else self.usd)

    @property
    def budget_nusd(self) -> int:
        return to_nusd(self.usd)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "tenant_id": self.tenant_id,
            "usd": self.usd,
            "period": self.period.value,
            "hard_cap_usd": self.hard_cap_usd,
        }


def _check(usd: float | None, period: str | None, hard_cap: float | None) -> None:
    if usd is not None and usd < 0:
        raise ConfigurationError("--usd: expected a non-negative amount")
    if period is not None and period not in (Period.DAY.value, Period.MONTH.value):
        raise ConfigurationError(f"--period: expected day or month, got {period!r}")
    if hard_cap is not None and (hard_cap < 0 or (usd is not None and hard_cap < usd)):
        raise ConfigurationError("--hard-cap: expected an amount at least the budget's (--usd)")


def set_budget(
    tenant: str,
    usd: float | None,
    *,
    period: str | None = None,
    hard_cap: float | None = None,
    clear: bool = False,
    publish: Callable[[str], Any] | None = None,
) -> Budget | None:
    """Set (or with ``clear`` remove) a tenant's budget; the tenant must exist (``ultra keys create``).
    ``publish`` tells the fleet (releasing the jobs parked for a budget). Returns the budget now."""
    _check(usd, period, hard_cap)
    upgrade_schema()
    with transaction() as conn:
        row = conn.execute(select(tenants_t).where(tenants_t.c.name == tenant.strip())).first()
        if row is None:
            raise ConfigurationError(
                f"no tenant named {tenant!r} (make one with `ultra keys create --tenant`)"
            )
        values: dict[str, Any] = {}
        if clear:
            values = {"budget_usd": None, "budget_hard_cap_usd": None}
        else:
            if usd is None and row.budget_usd is None:
                raise ConfigurationError("--usd: the tenant has no budget yet; give its amount")
            if usd is not None:
                values["budget_usd"] = usd
            if period is not None:
                values["budget_period"] = period
            if hard_cap is not None:
                values["budget_hard_cap_usd"] = hard_cap
            amount = usd if usd is not None else row.budget_usd
            cap = hard_cap if hard_cap is not None else row.budget_hard_cap_usd
            if cap is not None and cap < amount:
                raise ConfigurationError("--hard-cap: expected an amount at least the budget's (--usd)")
        conn.execute(update(tenants_t).where(tenants_t.c.id == row.id).values(**values))
        after = conn.execute(select(tenants_t).where(tenants_t.c.id == row.id)).one()
    forget()
    if publish is not None:
        publish(after.id)
    return _budget(after)


def _budget(row: Any) -> Budget | None:
    if row.budget_usd is None:
        return None
    return Budget(
        row.id, row.name, float(row.budget_usd), Period(row.budget_period or "month"), row.budget_hard_cap_usd
    )


def list_budgets() -> list[Budget]:
    upgrade_schema()
    with transaction() as conn:
        rows = conn.execute(
            select(tenants_t).where(tenants_t.c.budget_usd.is_not(None)).order_by(tenants_t.c.name)
        ).all()
    return [b for b in (_budget(r) for r in rows) if b is not None]


def tenant_id_of(name: str) -> str | None:
    with transaction() as conn:
        found = conn.execute(select(tenants_t.c.id).where(tenants_t.c.name == name)).scalar()
    return None if found is None else str(found)


def tenant_names() -> dict[str, str]:
    """Tenant id → name."""
    with transaction() as conn:
        return {str(r.id): str(r.name) for r in conn.execute(select(tenants_t.c.id, tenants_t.c.name))}


def notify(client: Any, tenant_id: str) -> None:
    """Tell every releaser a budget changed (jobs parked for cause budget run again and check)."""
    import json

    client.publish(keys.budget_events(), json.dumps({"tenant": tenant_id}))


class BudgetCache:
    """Every budget, read at most once per ``ttl_s`` per process (one query for all tenants)."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self._clock = ttl_s, clock
        self._budgets: dict[str, Budget] = {}
        self._read_at = -float("inf")
        #: whether the budgets were ever read (a forgotten cache still holds what it read)
        self._loaded = False
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> Budget | None:
        if self._clock() - self._read_at >= self.ttl_s:
            with self._lock:
                if self._clock() - self._read_at >= self.ttl_s:
                    self._refresh()
        return self._budgets.get(tenant_id)

    def _refresh(self) -> None:
        try:
            with transaction() as conn:
                rows = conn.execute(_WITH_BUDGET).all()
        except DependencyUnavailableError as exc:
            if not self._loaded:
                raise  # never read: a tenant's budget is not known, so its jobs wait for the database
            # The budgets last read still hold while the database is down (a change made meanwhile
            # cannot have been saved either), so budgeted jobs run on; asked again after the TTL.
            log.warning("budgets: the database is unreachable (%s); using the budgets read before", exc)
            self._read_at = self._clock()
            return
        self._budgets = {b.tenant_id: b for b in (_budget(r) for r in rows) if b is not None}
        self._read_at = self._clock()
        self._loaded = True

    def forget(self) -> None:
        self._read_at = -float("inf")


_cache: BudgetCache | None = None


def cached(ttl_s: float) -> BudgetCache:
    global _cache
    if _cache is None or _cache.ttl_s != ttl_s:
        _cache = BudgetCache(ttl_s)
    return _cache


def forget() -> None:
    if _cache is not None:
        _cache.forget()
