"""Prices: a deployment's own price wins over the defaults; a model with no price costs "unknown", never 0;
costs are exact integers of nano-dollars; periods are UTC days and months."""

from __future__ import annotations

from datetime import UTC, datetime

from ultra_tasks.billing import prices
from ultra_tasks.billing.budgets import Budget, Period, period_bounds, period_id
from ultra_tasks.providers.kinds.base import Deployment, Price


def _deployment(price: Price | None) -> Deployment:
    return Deployment(name="east", kind="openai", models=("*",), price=price)


def test_a_deployments_own_price_wins_over_the_models_default() -> None:
    own = Price(1.0, 2.0)
    assert prices.price_for("gpt-4o-mini", _deployment(own)) == own
    assert prices.price_for("gpt-4o-mini", _deployment(None)) == Price(0.15, 0.60)
    assert prices.price_for("gpt-4o-mini") == Price(0.15, 0.60)


def test_the_more_specific_default_matches_first() -> None:
    assert prices.default_price("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)
    assert prices.default_price("gpt-4o-2024-08-06") == Price(2.50, 10.00)


def test_an_unknown_price_is_an_unknown_cost_shown_as_such_never_zero() -> None:
    assert prices.price_for("llama3:8b", _deployment(None)) is None
    assert prices.cost_nusd(None, 1000, 1000) is None
    assert prices.show_usd(None) == "unknown"
    assert prices.worst_case(None, 100, 1, 50).nusd is None
    assert prices.show_usd(0) == "$0.000000"


def test_costs_are_exact_nano_dollars_rounded_up() -> None:
    price = Price(0.15, 0.60)
    # 1M input tokens at $0.15 and 1M output at $0.60
    assert prices.cost_nusd(price, 1_000_000, 1_000_000) == 750_000_000
    assert prices.cost_nusd(price, 3, 4) == 3 * 150 + 4 * 600
    # a fraction of a nano-dollar is billed as a whole one
    assert prices.cost_nusd(Price(0.0001, 0.0), 1, 0) == 1
    assert prices.usd(750_000_000) == 0.75


def test_the_worst_case_is_the_estimated_input_and_all_of_max_tokens() -> None:
    price = Price(1.0, 10.0)
    worst = prices.worst_case(price, chars=30, messages=2, max_tokens=100)
    assert worst.input_tokens == 10 + 2 * prices.ESTIMATE_TOKENS_PER_MESSAGE
    assert worst.output_tokens == 100
    assert worst.nusd == worst.input_tokens * 1000 + 100 * 10_000


def test_periods_are_utc_days_and_months_with_their_names() -> None:
    at = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds(Period.DAY, at) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds(Period.MONTH, at) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_id("day", at) == "d20261231" and period_id("month", at) == "m202612"
    assert period_bounds("month", datetime(2026, 2, 10, tzinfo=UTC))[1] == datetime(2026, 3, 1, tzinfo=UTC)


def test_the_ceiling_is_the_hard_cap_when_there_is_one() -> None:
    assert Budget("t", "acme", 1.0, Period.MONTH).limit_nusd == 1_000_000_000
    capped = Budget("t", "acme", 1.0, Period.MONTH, hard_cap_usd=1.5)
    assert capped.limit_nusd == 1_500_000_000 and capped.budget_nusd == 1_000_000_000
