"""The seed's Fallback decorator, sync and async, with its metrics."""

from __future__ import annotations

import pytest

from ultra_tasks import Fallback, ServiceUnavailableException, TimeoutException


def _unavailable() -> ServiceUnavailableException:
    return ServiceUnavailableException("down", provider="openai")


async def test_async_primary_failure_calls_the_fallback_with_the_same_arguments() -> None:
    async def anthropic_fallback(prompt: str, model: str, **kwargs: object) -> str:
        return f"fallback:{prompt}:{model}:{kwargs}"

    openai_with_fallback = Fallback(
        fallback_function=anthropic_fallback,
        should_fallback_on=[ServiceUnavailableException, TimeoutException],
    )

    @openai_with_fallback
    async def call_openai_with_fallback(prompt: str, model: str, **kwargs: object) -> str:
        raise _unavailable()

    assert (
        await call_openai_with_fallback("hi", "gpt-4o", temperature=0)
        == "fallback:hi:gpt-4o:{'temperature': 0}"
    )
    m = openai_with_fallback.metrics.as_dict()
    assert m["invocations"] == 1 and m["fallback_invocations"] == 1 and m["fallback_success_rate"] == 1.0
    assert m["average_fallback_latency_s"] is not None and m["average_fallback_latency_s"] >= 0


def test_sync_success_does_not_fall_back_and_unlisted_errors_propagate() -> None:
    fallback = Fallback(lambda x: "fallback", should_fallback_on=[TimeoutException])

    @fallback
    def primary(x: int) -> str:
        if x == 0:
            raise ValueError("not a fallback case")
        if x == 1:
            raise TimeoutException("slow")
        return "primary"

    assert primary(2) == "primary"
    assert primary(1) == "fallback"
    with pytest.raises(ValueError):
        primary(0)
    m = fallback.metrics
    assert (m.invocations, m.primary_failures, m.fallback_invocations) == (3, 1, 1)
    assert m.primary_failure_rate == pytest.approx(1 / 3)


def test_a_failing_fallback_is_counted_and_raises() -> None:
    def broken(*_: object) -> str:
        raise RuntimeError("fallback down too")

    fallback = Fallback(broken)

    @fallback
    def primary() -> str:
        raise _unavailable()

    with pytest.raises(RuntimeError):
        primary()
    assert fallback.metrics.fallback_success_rate == 0.0
