"""/metrics of the status server after a scripted run through real workers: the values are the fleet's, read
from Redis and SQL at scrape time, and match what happened (breaker transitions as published, jobs per
provider and model, queue depths as LLEN, the current mode)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from status_server import StatusServer, force_normal_mode

from ultra_tasks import CircuitBreaker, JobFailedError, SystemOperationMode, keys, submit
from ultra_tasks.jobs.stats import broker_keys

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("closed_provider_breakers")]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: StatusServer) -> Samples:
    status, headers, body = server.get("/metrics")
    assert status == 200, body[-2000:]
    assert headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def eventually(server: StatusServer, check: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    """Scrape until ``check`` holds (workers flush their counts at most once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.3)


class BreakerEvents:
    """Every breaker transition published on the events channel while it listens."""

    def __init__(self, client: Any) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(keys.breaker_events())
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message and message.get("type") == "message":
                event = json.loads(message["data"])
                self.seen[(event["name"], event["from"], event["to"])] += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.pubsub.close()


@pytest.fixture
def server(redis_client: Any, database: str, tmp_path: Path) -> Iterator[StatusServer]:
    force_normal_mode()
    status_server = StatusServer(tmp_path).start()
    yield status_server
    status_server.stop()
    force_normal_mode()


def _state_changes(samples: Samples) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == "ultra_circuit_breaker_state_changes_total":
            d = dict(labels)
            out[(d["breaker"], d["from_state"], d["to_state"])] = int(value)
    return out


def test_metrics_after_a_scripted_run_match_breaker_transitions_jobs_queues_and_mode(
    server: StatusServer, worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    before = scrape(server)
    assert total(before, "ultra_metrics_source_up") == 3  # redis, broker, database all answered
    events = BreakerEvents(redis_client)
    try:
        # Given two jobs waiting in llm.low with no worker to take them, the depth is the queue's LLEN
        waiting = [submit(f"waiting {i} {tag}", model="gpt-4o-mini", priority="low") for i in range(2)]
        for queue in (*keys.LLM_QUEUES, keys.QUEUE_OPS):
            llen = sum(int(redis_client.llen(k)) for k in broker_keys(queue))
            parked = int(redis_client.zcard(keys.parked(queue))) if queue in keys.LLM_QUEUES else None
            samples = scrape(server)
            assert total(samples, "ultra_queue_depth", queue=queue) == llen, queue
            if parked is not None:
                assert total(samples, "ultra_queue_parked", queue=queue) == parked, queue
        assert total(scrape(server), "ultra_queue_depth", queue="llm.low") >= 2

        # When a worker runs them and a scripted mix of jobs
        worker_factory(
            concurrency=4,
            env={"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "3", "CIRCUIT_BREAKER_RESET_TIMEOUT": "2"},
        )
        results = [h.result(timeout=60) for h in waiting]
        results += [submit(f"openai {i} {tag}", model="gpt-4o-mini").result(timeout=30) for i in range(2)]
        results.append(submit(f"anthropic {tag}", model="claude-3-5-haiku-latest").result(timeout=30))
        # ... one answered twice, the second time from the cache
        results += [submit(f"cache me {tag}", model="gpt-4o", temperature=0).result(timeout=30) for _ in "ab"]
        assert results[-1].cached and not results[-2].cached
        # ... one whose provider fails: three failures trip its breaker, a fallback answers
        fake_provider.add_fault("status", api="anthropic", status=503)
        fell_back = submit(f"falls back {tag}", model="claude-3-5-haiku-latest").result(timeout=60)
        assert fell_back.fallback_used and fell_back.provider == "openai"
        results.append(fell_back)
        assert CircuitBreaker("anthropic").state == CircuitBreaker.OPEN
        # ... one refused for good (a permanent error)
        fake_provider.clear_faults()
        fake_provider.add_fault("status", api="openai", model="gpt-4.1-nano", status=400)
        with pytest.raises(JobFailedError):
            submit(f"refused {tag}", model="gpt-4.1-nano").result(timeout=30)
        fake_provider.clear_faults()
        # ... and one that waits for the open breaker, probes it and closes it
        results.append(
            submit(f"after {tag}", model="claude-3-5-haiku-latest", fallback=False).result(timeout=60)
        )
        assert CircuitBreaker("anthropic").state == CircuitBreaker.CLOSED

        # Then the latency histogram counts the jobs per provider and model that served them
        per_model = Counter((r.provider, r.model) for r in results)

        def jobs_counted(samples: Samples) -> bool:
            return all(
                total(samples, "ultra_job_latency_seconds_count", provider=p, model=m)
                - total(before, "ultra_job_latency_seconds_count", provider=p, model=m)
                == n
                for (p, m), n in per_model.items()
            )

        after = eventually(server, jobs_counted)
        for (provider, model), n in per_model.items():
            labels = {"provider": provider, "model": model}
            counted = total(after, "ultra_job_latency_seconds_count", **labels) - total(
                before, "ultra_job_latency_seconds_count", **labels
            )
            assert counted == n, (provider, model)
            inf = total(after, "ultra_job_latency_seconds_bucket", le="+Inf", **labels) - total(
                before, "ultra_job_latency_seconds_bucket", le="+Inf", **labels
            )
            assert inf == n
        assert total(after, "ultra_job_latency_seconds_count", cached="true") - total(
            before, "ultra_job_latency_seconds_count", cached="true"
        ) == sum(1 for r in results if r.cached)

        def delta(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert delta("ultra_jobs_finished_total", status="succeeded") == len(results)
        assert delta("ultra_jobs_finished_total", status="failed", model="gpt-4.1-nano") == 1
        assert delta("ultra_fallback_successes_total", model="claude-3-5-haiku-latest") == 1
        assert delta("ultra_fallback_latency_seconds_count", model="claude-3-5-haiku-latest") == 1
        assert delta("ultra_cache_hits_total") >= 1

        # ... and the breakers' state changes equal the transitions they published
        expected = Counter({k: v for k, v in events.seen.items() if k[0] in ("openai", "anthropic")})
        assert expected[("anthropic", "closed", "open")] == 1
        assert expected[("anthropic", "open", "half-open")] == 1
        assert expected[("anthropic", "half-open", "closed")] == 1
        changes = _state_changes(after) - _state_changes(before)
        assert Counter({k: v for k, v in changes.items() if k[0] in ("openai", "anthropic")}) == expected
        assert total(after, "ultra_circuit_breaker_state", breaker="anthropic", state="closed") == 1
        assert delta("ultra_circuit_breaker_failures_total", breaker="anthropic") >= 3
    finally:
        events.close()

    # And the mode gauge shows the current mode, and its changes are counted
    assert total(after, "ultra_operation_mode", mode="NORMAL") == 1
    SystemOperationMode().set_override("DEGRADED", 60, reason="metrics test")
    degraded = scrape(server)
    assert total(degraded, "ultra_operation_mode", mode="DEGRADED") == 1
    assert total(degraded, "ultra_operation_mode", mode="NORMAL") == 0
    assert total(degraded, "ultra_operation_mode_override") == 1
    assert (
        total(degraded, "ultra_operation_mode_transitions_total", from_mode="NORMAL", to_mode="DEGRADED")
        - total(after, "ultra_operation_mode_transitions_total", from_mode="NORMAL", to_mode="DEGRADED")
        == 1
    )
    assert total(degraded, "ultra_operation_mode_reason", component="operator") == 1
    assert total(degraded, "ultra_operation_mode_stays_total", mode="DEGRADED") >= 1
    parts = {dict(ls)["part"]: v for (n, ls), v in degraded.items() if n == "ultra_metrics_part_up"}
    known = {"breakers", "jobs", "cache", "queues", "admission", "mode", "mode_history", "queue_stats"}
    assert known <= set(parts)
    assert all(v == 1 for v in parts.values()), parts


def test_metrics_report_a_store_that_cannot_be_read_and_still_answer(
    redis_client: Any, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a status server whose Redis is unreachable (nothing listens on its port)
    from conftest import _free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    server = StatusServer(tmp_path).start()
    try:
        # When it is scraped, it answers with what SQL can tell and says which store failed
        samples = scrape(server)
        assert total(samples, "ultra_metrics_source_up", source="redis") == 0
        assert total(samples, "ultra_metrics_source_up", source="database") == 1
        assert total(samples, "ultra_metrics_part_up", part="breakers") == 0
        assert total(samples, "ultra_operation_mode") == 1  # from SQL when the mirror cannot be read
        # and /readyz says it is not ready, and why
        status, _, body = server.get("/readyz")
        assert status == 503
        answer = json.loads(body)
        assert answer["ready"] is False and answer["checks"]["database"]["ok"] is True
        assert "redis" in answer["reason"]
        assert server.get("/healthz")[0] == 200
    finally:
        server.stop()
