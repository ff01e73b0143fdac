"""What the fleet's jobs did: the counters workers batch into Redis (metrics/jobs.py writes them), the queue
statistics over a window and the job table's size (both from SQL).

The counter hashes' fields are JSON label lists; a field this reader does not recognise is skipped, so a
newer worker's extra counter never breaks an older reader.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.jobs.retention import JobTableSummary, job_table_summary
from ultra_tasks.jobs.stats import QueueStats, queue_stats

#: the fallback counters, by their field's first label
FALLBACK_KINDS = ("primary_failures", "fallback_invocations", "fallback_successes")


@dataclass(frozen=True)
class LatencySeries:
    """Job latencies of one (provider, model, cached): count per bucket bound (not cumulative), count, sum."""

    provider: str
    model: str
    cached: str
    buckets: dict[float, float]
    count: float
    sum_s: float


@dataclass(frozen=True)
class JobCounters:
    """Fleet-wide job counters since the hashes began."""

    latency: list[LatencySeries] = field(default_factory=list)
    #: (status, model asked for) → jobs finished
    finished: dict[tuple[str, str], float] = field(default_factory=dict)
    #: kind (FALLBACK_KINDS) → model → jobs
    fallback: dict[str, dict[str, float]] = field(default_factory=dict)
    #: model → seconds summed over the jobs a fallback answered
    fallback_latency_sum: dict[str, float] = field(default_factory=dict)
    #: kind (job, operation) → messages refused for a bad signature
    refused: dict[str, float] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _labels(raw_field: Any) -> list[str] | None:
    try:
        labels = json.loads(_text(raw_field))
    except ValueError:
        return None
    return [str(x) for x in labels] if isinstance(labels, list) else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _latency(raw: dict[Any, Any]) -> list[LatencySeries]:
    series: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for raw_field, value in raw.items():
        labels = _labels(raw_field)
        number = _number(_text(value))
        if labels is None or len(labels) != 4 or number is None:
            continue
        series[(labels[0], labels[1], labels[2])][labels[3]] = number
    out = []
    for (provider, model, cached), values in sorted(series.items()):
        count, total = values.pop("count", 0.0), values.pop("sum", 0.0)
        buckets: dict[float, float] = defaultdict(float)
        for label, n in values.items():
            bound = _number(label)
            if bound is not None:
                buckets[bound] += n
        out.append(LatencySeries(provider, model, cached, dict(buckets), count, total))
    return out


def read_job_counters(client: redis.Redis) -> JobCounters:
    """The latency histogram, finished jobs, fallback and refusal counters from their Redis hashes."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.metrics_job_latency())
    pipe.hgetall(keys.metrics_jobs())
    latency_raw, jobs_raw = pipe.execute()
    counters = JobCounters(latency=_latency(latency_raw), fallback={kind: {} for kind in FALLBACK_KINDS})
    for raw_field, value in sorted(jobs_raw.items(), key=lambda kv: _text(kv[0])):
        labels = _labels(raw_field)
        number = _number(_text(value))
        if not labels or number is None:
            continue
        kind = labels[0]
        if kind == "refused" and len(labels) == 2:
            counters.refused[labels[1]] = number
        elif kind == "finished" and len(labels) == 3:
            counters.finished[(labels[1], labels[2])] = number
        elif kind in FALLBACK_KINDS and len(labels) == 2:
            counters.fallback[kind][labels[1]] = number
        elif kind == "fallback_latency_sum" and len(labels) == 2:
            counters.fallback_latency_sum[labels[1]] = number
    return counters


def read_queue_stats(window_s: float, now: datetime) -> QueueStats:
    """Jobs ended and started in the last ``window_s`` seconds, their rates and waits (the job table)."""
    upgrade_schema()
    return queue_stats(window_s, now=now)


def read_job_table() -> JobTableSummary:
    """The job table's rows, size and oldest kept job."""
    upgrade_schema()
    return job_table_summary()
