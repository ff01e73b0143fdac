"""The tenants' spend against their budgets (the budgets from SQL, this period's totals from their books in
Redis, rebuilt from the ledger when missing), and the billing counters workers batch into Redis
(metrics/billing.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.billing.book import Book
from ultra_tasks.billing.budgets import list_budgets
from ultra_tasks.billing.prices import usd


@dataclass(frozen=True)
class BudgetView:
    tenant: str
    period: str
    usd: float
    hard_cap_usd: float | None
    spent_usd: float | None
    reserved_usd: float | None

    def to_json(self) -> dict[str, Any]:
        used = self.spent_usd / self.usd if self.spent_usd is not None and self.usd else None
        return {
            "tenant": self.tenant,
            "period": self.period,
            "usd": self.usd,
            "hard_cap_usd": self.hard_cap_usd,
            "spent_usd": self.spent_usd,
            "reserved_usd": self.reserved_usd,
            "used": used,
        }


def read_budgets(client: redis.Redis) -> list[BudgetView]:
    """Every budget; its spend is None (unknown) when Redis cannot say: the budgets are the database's part,
    and a Redis outage shows in Redis' own parts."""
    book = Book(client)
    out = []
    for budget in list_budgets():
        spent = reserved = None
        try:
            totals = book.totals(budget)
            spent, reserved = usd(totals.spent_nusd), usd(totals.reserved_nusd)
        except redis.RedisError:
            pass
        out.append(
            BudgetView(budget.tenant, budget.period.value, budget.usd, budget.hard_cap_usd, spent, reserved)
        )
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
