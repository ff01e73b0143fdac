"""The tenants' spend against their budgets (budgets and this period's spend from SQL: the ledger is the
record), and the billing counters workers batch into Redis (metrics/billing.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.billing import ledger
from ultra_tasks.billing.budgets import list_budgets, period_bounds
from ultra_tasks.billing.prices import usd
from ultra_tasks.db.migrate import upgrade_schema


@dataclass(frozen=True)
class BudgetView:
    tenant: str
    period: str
    usd: float
    hard_cap_usd: float | None
    #: settled spend in the period (calls of unknown usage at their worst case)
    spent_usd: float | None

    def to_json(self) -> dict[str, Any]:
        used = self.spent_usd / self.usd if self.spent_usd is not None and self.usd else None
        return {
            "tenant": self.tenant,
            "period": self.period,
            "usd": self.usd,
            "hard_cap_usd": self.hard_cap_usd,
            "spent_usd": self.spent_usd,
            "used": used,
        }


def read_budgets(now: datetime) -> list[BudgetView]:
    """Every budget and its period's spend from the ledger (the database alone: the page shows what was
    spent even while Redis is away; ``ultra budgets list`` adds the reservations in flight)."""
    upgrade_schema()
    out = []
    for budget in list_budgets():
        start, end = period_bounds(budget.period, now)
        spent = usd(ledger.charged_nusd(budget.tenant_id, start, end))
        out.append(BudgetView(budget.tenant, budget.period.value, budget.usd, budget.hard_cap_usd, spent))
    return out


@dataclass(frozen=True)
class BillingCounters:
    """Fleet-wide, since the hash began: (tenant, model, status) → calls; (tenant, model, direction) →
    tokens; (tenant, model) → cost in nano-USD, and → calls whose cost is unknown."""

    calls: dict[tuple[str, str, str], float] = field(default_factory=dict)
    tokens: dict[tuple[str, str, str], float] = field(default_factory=dict)
    cost_nusd: dict[tuple[str, str], float] = field(default_factory=dict)
    uncosted: dict[tuple[str, str], float] = field(default_factory=dict)


def parse_billing(raw: dict[Any, Any]) -> BillingCounters:
    counters = BillingCounters()
    for raw_field, value in raw.items():
        try:
            labels = [str(x) for x in json.loads(_text(raw_field))]
            number = float(_text(value))
        except (TypeError, ValueError):
            continue
        if not labels:
            continue
        kind, rest = labels[0], tuple(labels[1:])
        if kind == "calls" and len(rest) == 3:
            counters.calls[(rest[0], rest[1], rest[2])] = number
        elif kind == "tokens" and len(rest) == 3:
            counters.tokens[(rest[0], rest[1], rest[2])] = number
        elif kind == "cost_nusd" and len(rest) == 2:
            counters.cost_nusd[(rest[0], rest[1])] = number
        elif kind == "uncosted" and len(rest) == 2:
            counters.uncosted[(rest[0], rest[1])] = number
    return counters


def read_billing(client: redis.Redis) -> BillingCounters:
    return parse_billing(client.hgetall(keys.metrics_billing()))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
