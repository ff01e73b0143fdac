"""``ultra budgets set|list`` and ``ultra usage`` (registered by api/cli.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ultra_tasks.errors import ConfigurationError

console = Console(markup=False)

budgets_cli = typer.Typer(help="Tenants' budgets: an amount per day or month, an optional hard cap.")


def _notify(tenant_id: str) -> None:
    from ultra_tasks.billing.budgets import notify
    from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

    try:
        notify(shared_redis(), tenant_id)
    except REDIS_DOWN as exc:
        console.print(f"note: workers not told at once (Redis: {exc}); they read it within BUDGET_CACHE_S")


def spend_rows() -> list[dict[str, Any]]:
    """Every budget with the period's settled spend and open reservations (Redis, rebuilt from the
    ledger when missing)."""
    from ultra_tasks.billing.book import Book
    from ultra_tasks.billing.budgets import list_budgets
    from ultra_tasks.billing.prices import usd
    from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

    book = Book(shared_redis())
    out = []
    for budget in list_budgets():
        row: dict[str, Any] = budget.to_dict()
        try:
            totals = book.totals(budget)
            row["spent_usd"], row["reserved_usd"] = usd(totals.spent_nusd), usd(totals.reserved_nusd)
        except REDIS_DOWN:
            row["spent_usd"] = row["reserved_usd"] = None
        out.append(row)
    return out


def register(cli: typer.Typer, guarded: Callable[[Any], Any]) -> None:
    cli.add_typer(budgets_cli, name="budgets")

    @budgets_cli.command("set")
    @guarded
    def budgets_set(
        tenant: str = typer.Argument(..., help="The tenant's name."),
        usd: float | None = typer.Option(None, "--usd", min=0, help="The budget per period (USD)."),
        period: str | None = typer.Option(None, "--period", help="day or month (UTC; default month)."),
        hard_cap: float | None = typer.Option(
            None, "--hard-cap", min=0, help="Ceiling no call may cross (USD, at least --usd)."
        ),
        clear: bool = typer.Option(False, "--clear", help="Remove the tenant's budget."),
    ) -> None:
        """Set a tenant's budget; jobs parked for its budget run again at once and check it."""
        from ultra_tasks.billing.budgets import set_budget

        budget = set_budget(tenant, usd, period=period, hard_cap=hard_cap, clear=clear, publish=_notify)
        if budget is None:
            console.print(f"tenant {tenant}: no budget")
            return
        cap = f", hard cap ${budget.hard_cap_usd:g}" if budget.hard_cap_usd is not None else ""
        console.print(f"tenant {budget.tenant}: ${budget.usd:g} per {budget.period.value}{cap}")

    @budgets_cli.command("list")
    @guarded
    def budgets_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Every budget and this period's spend against it (settled, and reserved by calls in flight)."""
        rows = spend_rows()
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("tenant", "period", "budget", "hard cap", "spent", "reserved", "used")
        for r in rows:
            spent = r["spent_usd"]
            used = f"{spent / r['usd']:.0%}" if spent is not None and r["usd"] else "-"
            table.add_row(
                r["tenant"],
                r["period"],
                f"${r['usd']:g}",
                f"${r['hard_cap_usd']:g}" if r["hard_cap_usd"] is not None else "-",
                "unknown" if spent is None else f"${spent:.6f}",
                "unknown" if r["reserved_usd"] is None else f"${r['reserved_usd']:.6f}",
                used,
            )
        console.print(table)

    @cli.command("usage")
    @guarded
    def usage(
        tenant: str | None = typer.Option(None, "--tenant", help="One tenant (by name)."),
        by: str = typer.Option("model", "--by", help="model, deployment or day."),
        days: int | None = typer.Option(None, "--days", min=1, help="Only the last DAYS days."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Provider calls, tokens and cost from the ledger, per tenant and model, deployment or day. A cost
        that cannot be known (no price, or a call lost with its worker) is shown as unknown, never 0."""
        from ultra_tasks.billing import ledger
        from ultra_tasks.billing.budgets import tenant_id_of, tenant_names
        from ultra_tasks.billing.prices import show_usd, usd
        from ultra_tasks.clock import utcnow
        from ultra_tasks.db.migrate import upgrade_schema

        if by not in ("model", "deployment", "day"):
            raise ConfigurationError(f"--by: expected model, deployment or day, got {by!r}")
        upgrade_schema()
        tenant_id = None
        if tenant is not None:
            tenant_id = tenant_id_of(tenant)
            if tenant_id is None:
                raise ConfigurationError(f"no tenant named {tenant!r}")
        since: datetime | None = utcnow() - timedelta(days=days) if days else None
        rows = ledger.usage(tenant=tenant_id, by=by, since=since)
        names = tenant_names()
        out = [
            {
                "tenant": names.get(r.tenant or "", r.tenant) if r.tenant else None,
                by: r.key,
                "calls": r.calls,
                "unknown_calls": r.unknown_calls,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                # a sum that leaves calls out is not the cost: unknown
                "cost_usd": usd(r.cost_nusd) if r.uncosted_calls == 0 else None,
                "known_cost_usd": usd(r.cost_nusd or 0),
                "uncosted_calls": r.uncosted_calls,
            }
            for r in rows
        ]
        if as_json:
            print(json.dumps(out, indent=2))
            return
        table = Table("tenant", by, "calls", "unknown", "input tokens", "output tokens", "cost")
        for r, raw in zip(out, rows, strict=True):
            cost = show_usd(raw.cost_nusd) if raw.uncosted_calls == 0 else "unknown"
            if raw.uncosted_calls and raw.cost_nusd:
                cost = f"unknown (≥ {show_usd(raw.cost_nusd)})"
            table.add_row(
                str(r["tenant"] or "-"),
                str(r[by] or "-"),
                str(r["calls"]),
                str(r["unknown_calls"]),
                str(r["input_tokens"]),
                str(r["output_tokens"]),
                cost,
            )
        console.print(table)
