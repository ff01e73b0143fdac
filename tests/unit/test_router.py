"""The router's choice among a model's deployments: by weight, away from the busy and the slow."""

from __future__ import annotations

from collections import Counter

from ultra_tasks.providers.kinds.base import Deployment
from ultra_tasks.providers.router import EXPLORE_EVERY, DeploymentRouter

A = Deployment("a", "fake", ("m",), weight=3)
B = Deployment("b", "fake", ("m",), weight=1)


def _first_choices(
    router: DeploymentRouter, calls: int, latency: dict[str, float] | None = None
) -> Counter[str]:
    chosen: Counter[str] = Counter()
    for _ in range(calls):
        first = router.order([A, B])[0]
        chosen[first.name] += 1
        router.started(first)
        router.finished(first, (latency or {}).get(first.name, 0.01))
    return chosen


def test_idle_deployments_share_calls_exactly_by_weight_interleaved() -> None:
    router = DeploymentRouter()
    assert _first_choices(router, 400) == {"a": 300, "b": 100}
    assert [router.order([A, B])[0].name for _ in range(4)].count("b") == 1  # interleaved, not in blocks


def test_a_slow_deployment_loses_most_of_its_share_but_is_still_measured() -> None:
    router = DeploymentRouter()
    chosen = _first_choices(router, 400, latency={"a": 0.5, "b": 0.01})
    assert chosen["b"] > 300 and chosen["a"] >= 300 // EXPLORE_EVERY // 2


def test_a_busy_deployment_is_passed_over_for_an_idle_one() -> None:
    router = DeploymentRouter()
    for _ in range(6):
        router.started(A)  # six calls in flight at a, none at b
    assert all(router.order([A, B])[0] is B for _ in range(5))


def test_a_deployment_at_its_concurrency_cap_goes_last() -> None:
    capped = Deployment("c", "fake", ("m",), weight=100, max_concurrency=1)
    router = DeploymentRouter()
    router.started(capped)
    assert router.order([capped, B]) == [B, capped] and router.at_capacity(capped)


def test_one_deployment_is_returned_as_is() -> None:
    assert DeploymentRouter().order([A]) == [A]
