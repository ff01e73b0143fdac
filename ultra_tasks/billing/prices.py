"""What a call costs: dollars per million tokens per deployment (the deployments file's ``price``) or per
model (the defaults below), and the arithmetic in integer nano-dollars (exact sums, exact in Lua).

A model with no price has an unknown cost: None, shown as "unknown", never zero.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from ultra_tasks.providers.kinds.base import Deployment, Price

#: when the defaults were read off the providers' public price pages
DEFAULT_PRICES_TAKEN = "2026-11-30"
#: list prices (input, output) in USD per million tokens of common models; a deployment's own ``price``
#: wins. Globs: first match wins, so the more specific names come first.
DEFAULT_PRICES: tuple[tuple[str, Price], ...] = (
    ("gpt-4o-mini*", Price(0.15, 0.60)),
    ("gpt-4o*", Price(2.50, 10.00)),
    ("gpt-4.1-nano*", Price(0.10, 0.40)),
    ("gpt-4.1-mini*", Price(0.40, 1.60)),
    ("gpt-4.1*", Price(2.00, 8.00)),
    ("o4-mini*", Price(1.10, 4.40)),
    ("o3-mini*", Price(1.10, 4.40)),
    ("o3*", Price(2.00, 8.00)),
    ("gpt-3.5-turbo*", Price(0.50, 1.50)),
    ("claude-3-5-haiku*", Price(0.80, 4.00)),
    ("claude-3-haiku*", Price(0.25, 1.25)),
    ("claude-3-5-sonnet*", Price(3.00, 15.00)),
    ("claude-3-7-sonnet*", Price(3.00, 15.00)),
    ("claude-sonnet-4*", Price(3.00, 15.00)),
    ("claude-3-opus*", Price(15.00, 75.00)),
    ("claude-opus-4*", Price(15.00, 75.00)),
)

#: nano-dollars per dollar: costs are integers of 1e-9 USD
NANO = 1_000_000_000
#: characters per token when a worst case is estimated: fewer than the usual four, so the estimate errs
#: high for text that tokenizes densely
ESTIMATE_CHARS_PER_TOKEN = 3
#: tokens a message costs beyond its text (role, separators)
ESTIMATE_TOKENS_PER_MESSAGE = 4


def default_price(model: str) -> Price | None:
    for pattern, price in DEFAULT_PRICES:
        if fnmatch.fnmatchcase(model, pattern):
            return price
    return None


def price_for(model: str, deployment: Deployment | None = None) -> Price | None:
    """The price of ``model`` on ``deployment``: the deployment's own, else the defaults', else None."""
    if deployment is not None and deployment.price is not None:
        return deployment.price
    return default_price(model)


def cost_nusd(price: Price | None, input_tokens: int, output_tokens: int) -> int | None:
    """The cost of a call in nano-USD, rounded up; None when the price is unknown."""
    if price is None:
        return None
    # per million tokens → per token in nano-USD: price * 1000
    return math.ceil(
        input_tokens * price.input_per_mtok * 1000 + output_tokens * price.output_per_mtok * 1000
    )


def estimate_input_tokens(chars: int, messages: int) -> int:
    return -(-chars // ESTIMATE_CHARS_PER_TOKEN) + ESTIMATE_TOKENS_PER_MESSAGE * messages


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The most a call can cost: its estimated input and all of ``max_tokens`` out, at its price."""

    input_tokens: int
    output_tokens: int
    nusd: int | None


def worst_case(price: Price | None, chars: int, messages: int, max_tokens: int) -> WorstCase:
    tokens = estimate_input_tokens(chars, messages)
    return WorstCase(tokens, max_tokens, cost_nusd(price, tokens, max_tokens))


def usd(nusd: int | None) -> float | None:
    return None if nusd is None else nusd / NANO


def to_nusd(amount_usd: float) -> int:
    return round(amount_usd * NANO)


def show_usd(nusd: int | None) -> str:
    """A cost as people read it: ``$0.000123``, or ``unknown``."""
    if nusd is None:
        return "unknown"
    return f"${nusd / NANO:,.6f}"
