"""Per-model state is bounded: beyond the fleet's cap of tracked model names, a name shares the state of
``other`` (metrics labels, adaptive timeouts, latency lists), so producers choosing names cannot grow
Prometheus series or Redis keys without bound."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ultra_tasks import keys
from ultra_tasks.config import get_settings
from ultra_tasks.metrics.buffer import MetricsBuffer
from ultra_tasks.metrics.jobs import record_job_outcome
from ultra_tasks.model_names import OTHER, ModelNames
from ultra_tasks.resilience.timeouts import AdaptiveTimeouts

pytestmark = pytest.mark.usefixtures("redis_client")


def test_names_beyond_the_cap_fold_into_other_fleet_wide(redis_client: Any) -> None:
    redis_client.delete(keys.tracked_models())
    first, second = ModelNames(redis_client, cap=3), ModelNames(redis_client, cap=3)  # two processes
    names = [f"gpt-{uuid.uuid4().hex[:6]}" for _ in range(5)]
    assert [first.tracked(n) for n in names[:2]] == names[:2]
    assert second.tracked(names[2]) == names[2]
    assert [first.tracked(n) for n in names] == [*names[:3], OTHER, OTHER]
    assert second.tracked(names[0]) == names[0] and second.tracked(names[4]) == OTHER
    assert redis_client.scard(keys.tracked_models()) == 3


def test_five_thousand_model_names_add_no_more_labels_or_latency_lists_than_the_cap(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ultra_tasks.model_names as model_names

    redis_client.delete(keys.tracked_models(), keys.metrics_jobs())
    monkeypatch.setattr(model_names, "_names", ModelNames(redis_client, cap=20))
    buffer = MetricsBuffer(client_factory=lambda: redis_client)
    timeouts = AdaptiveTimeouts(redis_client, get_settings(), refresh_s=0)
    for i in range(5000):
        model = f"gpt-4o-{i}"
        record_job_outcome(
            {"status": "succeeded", "model": model, "provider": "openai"}, model, buffer=buffer
        )
        if i % 10 == 0:
            timeouts.record("openai", model, 0.1)
            timeouts.timeout("openai", model)
    buffer.flush()
    labels = {field for field in redis_client.hkeys(keys.metrics_jobs()) if field.startswith('["finished"')}
    assert len(labels) <= 21  # 20 tracked names and "other"
    lists = list(redis_client.scan_iter(match=keys.latencies("openai", "*"), count=1000))
    assert 0 < len(lists) <= 21
    assert all(0 < redis_client.ttl(name) <= 7 * 24 * 3600 for name in lists)
