"""``ultra budgets set|list``, ``ultra usage`` and ``ultra keys create --period`` as an operator runs them
(the real CLI in a subprocess, the session's Redis and SQL database)."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import ultra_cli

from ultra_tasks.api.tenants import create_key
from ultra_tasks.billing import ledger
from ultra_tasks.billing.budgets import tenant_id_of
from ultra_tasks.billing.ledger import Entry

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("database", "redis_client")]

BAD_INPUT = 2


def _tenant() -> str:
    name = f"cli-billing-{uuid.uuid4().hex[:8]}"
    create_key(name)
    return name


def test_budgets_set_list_and_clear_a_tenants_budget() -> None:
    name = _tenant()
    made = ultra_cli("budgets", "set", name, "--usd", "12.5", "--period", "day", "--hard-cap", "15")
    assert made.returncode == 0, made.stderr
    assert f"tenant {name}: $12.5 per day, hard cap $15" in made.stdout
    listed = json.loads(ultra_cli("budgets", "list", "--json").stdout)
    [mine] = [b for b in listed if b["tenant"] == name]
    assert (mine["usd"], mine["period"], mine["hard_cap_usd"], mine["spent_usd"]) == (12.5, "day", 15.0, 0.0)
    table = ultra_cli("budgets", "list").stdout
    assert name in table and "$12.5" in table and "0%" in table
    # only the amount changes: the period and the cap stay
    assert ultra_cli("budgets", "set", name, "--usd", "14").returncode == 0
    [mine] = [b for b in json.loads(ultra_cli("budgets", "list", "--json").stdout) if b["tenant"] == name]
    assert (mine["usd"], mine["period"], mine["hard_cap_usd"]) == (14.0, "day", 15.0)
    cleared = ultra_cli("budgets", "set", name, "--clear")
    assert cleared.returncode == 0 and "no budget" in cleared.stdout
    assert all(b["tenant"] != name for b in json.loads(ultra_cli("budgets", "list", "--json").stdout))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--usd", "5", "--period", "week"], "--period: expected day or month"),
        (["--usd", "5", "--hard-cap", "4"], "--hard-cap: expected an amount at least the budget's"),
        (["--period", "day"], "--usd: the tenant has no budget yet"),
    ],
)
def test_budgets_set_refuses_what_cannot_be_a_budget(args: list[str], says: str) -> None:
    done = ultra_cli("budgets", "set", _tenant(), *args)
    assert done.returncode == BAD_INPUT and says in done.stderr


def test_budgets_set_names_a_tenant_that_does_not_exist() -> None:
    done = ultra_cli("budgets", "set", "nobody-at-all", "--usd", "1")
    assert done.returncode == BAD_INPUT and "no tenant named 'nobody-at-all'" in done.stderr


def test_keys_create_sets_the_budgets_period() -> None:
    name = f"cli-billing-{uuid.uuid4().hex[:8]}"
    made = ultra_cli("keys", "create", "--tenant", name, "--budget-usd", "3", "--period", "day")
    assert made.returncode == 0, made.stderr
    [mine] = [b for b in json.loads(ultra_cli("budgets", "list", "--json").stdout) if b["tenant"] == name]
    assert (mine["usd"], mine["period"]) == (3.0, "day")
    bad = ultra_cli("keys", "create", "--tenant", name, "--budget-usd", "3", "--period", "year")
    assert bad.returncode == BAD_INPUT and "--period" in bad.stderr


def test_usage_sums_the_ledger_by_model_deployment_and_day_and_says_unknown_for_unknown_costs() -> None:
    name = _tenant()
    tenant = tenant_id_of(name)
    job = str(uuid.uuid4())
    ledger.record(
        [
            Entry(job, "1:1", "ok", tenant, "east", "gpt-4o-mini", 10, 20, cost_nusd=13_500),
            Entry(job, "1:2", "error", tenant, "east", "gpt-4o-mini", 0, 0, cost_nusd=0),
            Entry(job, "2:1", "ok", tenant, "west", "gpt-4o-mini", 10, 20, cost_nusd=13_500),
            Entry(job, "2:lost1", "unknown", tenant, None, "gpt-4o-mini", worst_nusd=50_000),
        ]
    )
    by_model = json.loads(ultra_cli("usage", "--tenant", name, "--json").stdout)
    assert by_model == [
        {
            "tenant": name,
            "model": "gpt-4o-mini",
            "calls": 4,
            "unknown_calls": 1,
            "input_tokens": 20,
            "output_tokens": 40,
            # a call of unknown usage makes the sum unknown: what is known is said beside it
            "cost_usd": None,
            "known_cost_usd": 0.000027,
            "uncosted_calls": 1,
        }
    ]
    by_deployment = json.loads(ultra_cli("usage", "--tenant", name, "--by", "deployment", "--json").stdout)
    assert {(r["deployment"], r["calls"], r["cost_usd"]) for r in by_deployment} == {
        (None, 1, None),
        ("east", 2, 0.0000135),
        ("west", 1, 0.0000135),
    }
    [today] = json.loads(ultra_cli("usage", "--tenant", name, "--by", "day", "--days", "1", "--json").stdout)
    assert today["calls"] == 4 and len(today["day"]) == 10
    table = ultra_cli("usage", "--tenant", name).stdout
    assert "unknown (≥ $0.000027)" in table
    assert ultra_cli("usage", "--by", "week").returncode == BAD_INPUT
    assert ultra_cli("usage", "--tenant", "nobody-at-all").returncode == BAD_INPUT
