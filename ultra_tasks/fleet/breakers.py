"""Every circuit breaker the fleet has used, as its shared state in Redis says.

Read with plain hash reads in one pipeline, never through the breaker's script: a reader changes nothing.
An operator state whose duration has passed is shown as the breaker's next call will find it (closed), using
Redis' clock as the script does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.config import get_settings
from ultra_tasks.errors import ConfigurationError
from ultra_tasks.providers.deployments import catalog
from ultra_tasks.providers.registry import PROVIDER_NAMES


@dataclass(frozen=True)
class BreakerView:
    """One breaker: its shown state (closed, open, half-open, forced-open, disabled) and fleet-wide counts."""

    name: str
    state: str
    #: consecutive failures counted while closed
    failure_count: int
    #: epoch seconds (Redis clock) of the last recorded failure; 0 if none
    last_failure_time: float
    successes: int
    failures: int
    rejections: int
    slow_calls: int
    #: "from->to" → transitions
    state_changes: dict[str, int]

    @property
    def success_rate(self) -> float | None:
        total = self.successes + self.failures
        return self.successes / total if total else None

    def to_json(self) -> dict[str, Any]:
        last = self.last_failure_time
        return {
            "name": self.name,
            "state": self.state,
            "successes": self.successes,
            "failures": self.failures,
            "rejections": self.rejections,
            "slow_calls": self.slow_calls,
            "state_changes": dict(self.state_changes),
            "success_rate": self.success_rate,
            "failure_count": self.failure_count,
            "last_failure_time": last,
            "last_failure_at": datetime.fromtimestamp(last, UTC).isoformat() if last else None,
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(raw: dict[str, str], field: str) -> float:
    try:
        return float(raw.get(field) or 0)
    except ValueError:
        return 0.0


def _shown_state(raw: dict[str, str], now: float) -> str:
    forced = raw.get("forced") or ""
    until = _number(raw, "forced_until")
    if forced and until > 0 and now >= until:
        return "closed"  # the script ends an operator state given a duration on the next call
    if forced == "open":
        return "forced-open"
    if forced == "disabled":
        return "disabled"
    return raw.get("state") or "closed"


def read_breakers(client: redis.Redis) -> list[BreakerView]:
    """Every breaker in the index, by name."""
    names = sorted(_text(n) for n in client.smembers(keys.breaker_index()))
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for name in names:
        state_key, _, metrics_key, _ = keys.breaker(name)
        pipe.hgetall(state_key)
        pipe.hgetall(metrics_key)
    replies = pipe.execute()
    seconds, micros = replies[0]
    now = int(seconds) + int(micros) / 1e6
    out = []
    for i, name in enumerate(names):
        state = {_text(k): _text(v) for k, v in replies[1 + 2 * i].items()}
        counts = {_text(k): _text(v) for k, v in replies[2 + 2 * i].items()}
        out.append(
            BreakerView(
                name=name,
                state=_shown_state(state, now),
                failure_count=int(_number(state, "failures")),
                last_failure_time=_number(state, "last_failure"),
                successes=int(_number(counts, "successes")),
                failures=int(_number(counts, "failures")),
                rejections=int(_number(counts, "rejections")),
                slow_calls=int(_number(counts, "slow_calls")),
                state_changes={
                    k.split(":", 1)[1]: int(_number(counts, k)) for k in counts if k.startswith("changes:")
                },
            )
        )
    return out


def _deployment_names() -> set[str]:
    """The deployments' names (their breakers are named after them); the built-in providers' when the
    deployments file cannot be read (start-up refuses such a file; a reader must not)."""
    try:
        return set(catalog().by_name)
    except ConfigurationError:
        return set(PROVIDER_NAMES)


def all_providers_down(breakers: list[BreakerView]) -> str | None:
    """What the fleet does while every provider's breaker is open (the all-down policy), or None."""
    providers = [b for b in breakers if b.name.split(":")[0] in _deployment_names()]
    if not providers or any(b.state in ("closed", "disabled") for b in providers):
        return None
    interval = get_settings().health_check_interval
    return (
        "every provider's breaker is open: LLM jobs are parked (cause: provider) instead of failing, and "
        f"the health checks probe each open breaker every {interval:g}s once its reset timeout has passed, "
        "as do the first jobs parked against it; a breaker that closes releases the others in a ramp "
        "(PARK_RAMP_FIRST, doubling every PARK_RAMP_INTERVAL). A breaker forced open waits for its operator."
    )
