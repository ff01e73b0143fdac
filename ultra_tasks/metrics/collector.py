"""The fleet's Prometheus metrics, read at scrape time from the shared state in Redis and SQL.

One ``FleetCollector`` serves the whole fleet: nothing here is one process's counter. Each part (breakers,
queues, jobs and fallbacks, cache, mode, queue statistics) is read on its own, bounded by a timeout; a part
whose store cannot be read is left out and ``ultra_metrics_source_up{source}`` says which store failed,
so a scrape during an outage still answers with everything that can be known.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ultra_tasks import keys
from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings
from ultra_tasks.metrics.cache import SIZE_STALE_S
from ultra_tasks.metrics.jobs import LATENCY_BUCKETS_S
from ultra_tasks.redis_client import shared_redis

log = logging.getLogger(__name__)

#: the longest one part of a scrape may take before it is reported as failed (seconds)
PART_TIMEOUT_S = 3.0
#: the window of the queue statistics read from the job table (seconds)
QUEUE_STATS_WINDOW_S = 300.0
BREAKER_STATES = ("closed", "open", "half-open", "forced-open", "disabled")
MODES = ("NORMAL", "DEGRADED", "EMERGENCY")
COMPONENT_STATUSES = ("ok", "degraded", "critical", "not-configured")
CACHE_COUNTERS = {
    "hits": "Cache reads that found the entry at this level",
    "misses": "Cache reads that did not find the entry at this level",
    "errors": "Failures of this level (unreachable Redis, unwritable disk); the level is skipped a while",
    "corrupt": "Undecodable entries found at this level (treated as misses and removed)",
    "invalidations": "Invalidations applied at this level, summed over the processes that applied them",
}

Part = Callable[[], list[Metric]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _labels(field: Any) -> list[str] | None:
    try:
        labels = json.loads(_text(field))
    except ValueError:
        return None
    return [str(x) for x in labels] if isinstance(labels, list) else None


class FleetCollector(Collector):
    """A prometheus_client collector whose every value comes from Redis or SQL when scraped."""

    def __init__(
        self,
        redis_client: redis.Redis | None = None,
        broker_client: redis.Redis | None = None,
        *,
        part_timeout_s: float = PART_TIMEOUT_S,
    ) -> None:
        self._redis = redis_client
        self._broker = broker_client
        self.part_timeout_s = part_timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="metrics-scrape")

    # --- the stores ------------------------------------------------------------------------------------
    @property
    def state_redis(self) -> redis.Redis:
        return self._redis or shared_redis()

    def broker(self) -> redis.Redis | None:
        """The broker's Redis, or None when the broker is not Redis (AMQP queues are the broker's to show)."""
        if self._broker is not None:
            return self._broker
        url = get_settings().effective_broker_url
        return shared_redis(url) if url.startswith(("redis://", "rediss://", "unix://")) else None

    # --- collect -----------------------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return []  # values exist only at scrape time; registering must not read Redis or SQL

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        parts: dict[str, tuple[str, Part]] = {
            "breakers": ("redis", self._breakers),
            "jobs": ("redis", self._jobs),
            "cache": ("redis", self._cache),
            "queues": ("broker", self._queues),
            "admission": ("redis", self._admission),
            "mode": ("redis", self._current_mode),
            "mode_history": ("database", self._mode),
            "queue_stats": ("database", self._queue_stats),
        }
        futures = {name: self._pool.submit(fn) for name, (_, fn) in parts.items()}
        up: dict[str, int] = {"redis": 1, "broker": 1, "database": 1}
        failed = GaugeMetricFamily(
            "ultra_metrics_part_up", "1 if this part of the fleet metrics could be read", labels=["part"]
        )
        for name, future in futures.items():
            source = parts[name][0]
            try:
                yield from future.result(timeout=self.part_timeout_s)
                failed.add_metric([name], 1)
            except concurrent.futures.TimeoutError:
                log.warning("metrics part %s timed out after %.1fs", name, self.part_timeout_s)
                up[source] = 0
                failed.add_metric([name], 0)
            except Exception as exc:
                log.warning("metrics part %s could not be read: %s", name, exc)
                up[source] = 0
                failed.add_metric([name], 0)
        yield failed
        source_up = GaugeMetricFamily(
            "ultra_metrics_source_up", "1 if this store answered the scrape", labels=["source"]
        )
        for source, value in up.items():
            source_up.add_metric([source], value)
        yield source_up
        yield GaugeMetricFamily(
            "ultra_metrics_scrape_duration_seconds",
            "Time taken to read the fleet metrics",
            value=time.perf_counter() - started,
        )

    # --- circuit breakers (Redis) ------------------------------------------------------------------------
    def _breakers(self) -> list[Metric]:
        client = self.state_redis
        names = sorted(_text(n) for n in client.smembers(keys.breaker_index()))
        pipe = client.pipeline(transaction=False)
        for name in names:
            state_key, _, metrics_key, _ = keys.breaker(name)
            pipe.hgetall(state_key)
            pipe.hgetall(metrics_key)
        replies = pipe.execute() if names else []
        state = GaugeMetricFamily(
            "ultra_circuit_breaker_state",
            "1 for the breaker's current shared state, 0 for the others",
            labels=["breaker", "state"],
        )
        consecutive = GaugeMetricFamily(
            "ultra_circuit_breaker_consecutive_failures",
            "Consecutive failures counted fleet-wide while closed",
            labels=["breaker"],
        )
        last_failure = GaugeMetricFamily(
            "ultra_circuit_breaker_last_failure_timestamp_seconds",
            "Redis time of the breaker's last recorded failure (0: none)",
            labels=["breaker"],
        )
        counters = {
            what: CounterMetricFamily(f"ultra_circuit_breaker_{what}", doc, labels=["breaker"])
            for what, doc in (
                ("successes", "Calls through the breaker that succeeded, fleet-wide"),
                ("failures", "Calls through the breaker that failed and counted against it, fleet-wide"),
                ("rejections", "Calls the breaker refused while open, fleet-wide"),
                ("slow_calls", "Calls slower than the breaker's slow-call duration, fleet-wide"),
            )
        }
        changes = CounterMetricFamily(
            "ultra_circuit_breaker_state_changes",
            "State transitions of the breaker, fleet-wide, by from and to state",
            labels=["breaker", "from_state", "to_state"],
        )
        for i, name in enumerate(names):
            raw_state = {_text(k): _text(v) for k, v in replies[2 * i].items()}
            raw_metrics = {_text(k): _text(v) for k, v in replies[2 * i + 1].items()}
            shown = _shown_state(raw_state)
            for s in BREAKER_STATES:
                state.add_metric([name, s], 1 if s == shown else 0)
            consecutive.add_metric([name], float(raw_state.get("failures") or 0))
            last_failure.add_metric([name], float(raw_state.get("last_failure") or 0))
            for what, family in counters.items():
                family.add_metric([name], float(raw_metrics.get(what) or 0))
            for field, value in raw_metrics.items():
                if field.startswith("changes:") and "->" in field:
                    from_state, to_state = field.split(":", 1)[1].split("->", 1)
                    changes.add_metric([name, from_state, to_state], float(value))
        return [state, consecutive, last_failure, *counters.values(), changes]

    # --- jobs and fallbacks (Redis hashes the workers write) ---------------------------------------------
    def _jobs(self) -> list[Metric]:
        client = self.state_redis
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.metrics_job_latency())
        pipe.hgetall(keys.metrics_jobs())
        latency_raw, jobs_raw = pipe.execute()
        return [*_latency_histogram(latency_raw), *_job_counters(jobs_raw)]

    # --- cache (Redis hashes every process flushes) --------------------------------------------------------
    def _cache(self) -> list[Metric]:
        client = self.state_redis
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.metrics_cache())
        pipe.hgetall(keys.metrics_cache_sizes())
        counters_raw, sizes_raw = pipe.execute()
        counts: dict[str, dict[str, float]] = defaultdict(dict)
        for field, value in counters_raw.items():
            level, _, stat = _text(field).partition(":")
            counts[level][stat] = float(_text(value))
        families: list[Metric] = []
        for stat, doc in CACHE_COUNTERS.items():
            family = CounterMetricFamily(f"ultra_cache_{stat}", doc, labels=["level"])
            for level in sorted(counts):
                family.add_metric([level], counts[level].get(stat, 0.0))
            families.append(family)
        ratio = GaugeMetricFamily(
            "ultra_cache_hit_ratio", "Hits / reads at this level since the counters began", labels=["level"]
        )
        read_time = SummaryMetricFamily(
            "ultra_cache_read_seconds",
            "Time of a read at this level (average = sum / count)",
            labels=["level"],
        )
        for level in sorted(counts):
            reads = counts[level].get("reads", 0.0)
            if reads:
                ratio.add_metric([level], counts[level].get("hits", 0.0) / reads)
            read_time.add_metric([level], int(reads), counts[level].get("read_seconds", 0.0))
        families += [ratio, read_time]
        families += self._cache_sizes(client, sizes_raw)
        return families

    def _cache_sizes(self, client: redis.Redis, sizes_raw: dict[Any, Any]) -> list[Metric]:
        now = time.time()
        entries: dict[str, float] = defaultdict(float)
        capacity: dict[str, float] = defaultdict(float)
        disk_bytes = disk_capacity = 0.0
        disks: dict[tuple[str, str], dict[str, Any]] = {}
        stale: list[str] = []
        for field, value in sizes_raw.items():
            try:
                report = json.loads(_text(value))
            except ValueError:
                report = {}
            if now - float(report.get("at") or 0) > SIZE_STALE_S:
                stale.append(_text(field))
                continue
            entries["memory"] += float(report.get("memory_entries") or 0)
            capacity["memory"] += float(report.get("memory_capacity") or 0)
            if report.get("disk_dir"):
                # processes of one machine share a disk level: count each directory once (latest report)
                key = (str(report.get("host")), str(report["disk_dir"]))
                if key not in disks or disks[key]["at"] < report["at"]:
                    disks[key] = report
        for report in disks.values():
            entries["disk"] += float(report.get("disk_entries") or 0)
            disk_bytes += float(report.get("disk_bytes") or 0)
            disk_capacity += float(report.get("disk_capacity_bytes") or 0)
        if stale:
            client.hdel(keys.metrics_cache_sizes(), *stale)  # processes that are gone
        size = GaugeMetricFamily(
            "ultra_cache_entries", "Entries held at this level, summed over live processes", labels=["level"]
        )
        cap = GaugeMetricFamily(
            "ultra_cache_capacity_entries",
            "Entries this level may hold, summed over live processes",
            labels=["level"],
        )
        util = GaugeMetricFamily(
            "ultra_cache_utilization_ratio",
            "Entries / capacity (memory), bytes / limit (disk)",
            labels=["level"],
        )
        for level in sorted(entries):
            size.add_metric([level], entries[level])
        if capacity["memory"]:
            cap.add_metric(["memory"], capacity["memory"])
            util.add_metric(["memory"], entries["memory"] / capacity["memory"])
        if disk_capacity:
            util.add_metric(["disk"], disk_bytes / disk_capacity)
        disk = GaugeMetricFamily(
            "ultra_cache_disk_bytes", "Bytes used by the disk level, summed over machines", value=disk_bytes
        )
        return [size, cap, util, disk]

    # --- queues (the broker's lists and the parking sets) ---------------------------------------------------
    def _queues(self) -> list[Metric]:
        from ultra_tasks.jobs.stats import parked_depths, queue_depths

        depth = GaugeMetricFamily(
            "ultra_queue_depth", "Messages waiting in the Celery queue (all priority steps)", labels=["queue"]
        )
        from ultra_tasks.broker import is_amqp

        broker = self.broker()
        if broker is not None or is_amqp():
            for queue, n in queue_depths(broker).items():
                depth.add_metric([queue], n)
        parked = GaugeMetricFamily(
            "ultra_queue_parked", "Jobs parked in Redis off this queue, holding no worker", labels=["queue"]
        )
        for queue, n in parked_depths(self.state_redis).items():
            parked.add_metric([queue], n)
        return [depth, parked]

    # --- the admission bound (QUEUE_MAX_SIZE shed by priority) -------------------------------------------
    def _admission(self) -> list[Metric]:
        from ultra_tasks.jobs.admission import fill

        now = fill(self.state_redis)
        held = GaugeMetricFamily(
            "ultra_queue_admitted",
            "Jobs admitted and not final (queued, running or parked), per priority",
            labels=["priority"],
        )
        limit = GaugeMetricFamily(
            "ultra_queue_admission_limit",
            "Jobs held from which this priority is refused (its QUEUE_SHED_AT share of QUEUE_MAX_SIZE)",
            labels=["priority"],
        )
        for priority, n in now.held.items():
            held.add_metric([priority], n)
            limit.add_metric([priority], now.thresholds[priority].limit)
        bound = GaugeMetricFamily(
            "ultra_queue_max_size", "QUEUE_MAX_SIZE: the jobs the system holds at most", value=now.max_size
        )
        ratio = GaugeMetricFamily(
            "ultra_queue_fill_ratio", "Jobs held over QUEUE_MAX_SIZE", value=now.total / now.max_size
        )
        return [held, limit, bound, ratio]

    # --- queue statistics over a window (the job table) ---------------------------------------------------
    def _queue_stats(self) -> list[Metric]:
        from ultra_tasks.jobs.stats import queue_stats

        stats = queue_stats(QUEUE_STATS_WINDOW_S)
        window = stats["window_s"]
        out: list[Metric] = [
            GaugeMetricFamily(
                "ultra_queue_window_seconds", "Width of the window of the ultra_queue_window_* gauges", window
            )
        ]
        jobs = GaugeMetricFamily(
            "ultra_queue_window_jobs",
            "Jobs that ended in the window (failed includes expired), and jobs that started",
            labels=["outcome"],
        )
        for outcome in ("processed", "succeeded", "failed", "expired", "started"):
            jobs.add_metric([outcome], float(stats.get(outcome) or 0))
        out.append(jobs)
        for name, key, doc in (
            ("ultra_queue_processing_rate_per_second", "processing_rate_per_s", "Jobs ended per second"),
            ("ultra_queue_success_ratio", "success_rate", "Succeeded / processed in the window"),
            ("ultra_queue_failure_ratio", "failure_rate", "Failed / processed in the window"),
            ("ultra_queue_wait_seconds_avg", "avg_wait_s", "Average wait from submit to first start"),
            ("ultra_queue_wait_seconds_max", "max_wait_s", "Longest wait from submit to first start"),
        ):
            if stats.get(key) is not None:
                out.append(GaugeMetricFamily(name, doc + f" (last {window:g}s)", value=float(stats[key])))
        return out

    # --- operation mode and components (SQL; the Redis mirror first for the current mode) -----------------
    def _mode(self) -> list[Metric]:
        from sqlalchemy import func, select

        from ultra_tasks.db.engine import session_scope
        from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
        from ultra_tasks.mode.metrics import time_in_modes

        now = utcnow()
        with session_scope() as s:
            record = s.get(OperationModeRecord, 1)
            by_pair = {
                (str(from_mode), str(to_mode)): int(n)
                for from_mode, to_mode, n in s.execute(
                    select(ModeTransition.from_mode, ModeTransition.to_mode, func.count()).group_by(
                        ModeTransition.from_mode, ModeTransition.to_mode
                    )
                ).all()
            }
            latest = select(func.max(ComponentStatus.id)).group_by(ComponentStatus.component)
            components = [
                (r.component, r.kind, r.status)
                for r in s.execute(select(ComponentStatus).where(ComponentStatus.id.in_(latest))).scalars()
            ]
        override = GaugeMetricFamily(
            "ultra_operation_mode_override", "1 while an operator's override decides the mode", value=0
        )
        if record is not None and record.override_mode and record.override_until:
            until = record.override_until
            override = GaugeMetricFamily(
                "ultra_operation_mode_override",
                "1 while an operator's override decides the mode",
                value=1 if until > now else 0,
            )
        changed = GaugeMetricFamily(
            "ultra_operation_mode_changed_timestamp_seconds",
            "When the mode last changed (epoch seconds)",
            value=record.changed_at.timestamp() if record is not None else 0,
        )
        counts = CounterMetricFamily(
            "ultra_operation_mode_transitions",
            "Mode changes recorded in mode_transitions, by from and to mode",
            labels=["from_mode", "to_mode"],
        )
        for (from_mode, to_mode), n in sorted(by_pair.items()):
            counts.add_metric([from_mode, to_mode], n)
        seconds = CounterMetricFamily(
            "ultra_operation_mode_seconds",
            "Seconds spent in each mode since the first recorded transition (or the mode record's creation)",
            labels=["mode"],
        )
        stays = CounterMetricFamily(
            "ultra_operation_mode_stays",
            "Stays in each mode since the first recorded transition (a stay ends with a mode change)",
            labels=["mode"],
        )
        average = GaugeMetricFamily(
            "ultra_operation_mode_average_stay_seconds",
            "Average length of a stay in each mode (the current stay counted so far)",
            labels=["mode"],
        )
        for m, figures in sorted(time_in_modes(now=now)["modes"].items()):
            seconds.add_metric([m], float(figures["total_s"]))
            stays.add_metric([m], float(figures["stays"]))
            if figures["average_stay_s"] is not None:
                average.add_metric([m], float(figures["average_stay_s"]))
        reasons = GaugeMetricFamily(
            "ultra_operation_mode_reason",
            "1 for each current degradation reason of the mode",
            labels=["component", "severity"],
        )
        for reason in (record.reasons if record is not None else []) or []:
            if isinstance(reason, dict):
                reasons.add_metric([str(reason.get("component", "")), str(reason.get("severity", ""))], 1)
        status = GaugeMetricFamily(
            "ultra_component_status",
            "1 for the component's latest reported status, 0 for the others",
            labels=["component", "kind", "status"],
        )
        for component, kind, current_status in sorted(components):
            for st in COMPONENT_STATUSES:
                status.add_metric([component, kind, st], 1 if st == current_status else 0)
        return [override, changed, counts, seconds, stays, average, reasons, status]

    def _current_mode(self) -> list[Metric]:
        """From the Redis mirror (what workers act on); from SQL when Redis cannot answer."""
        current: str | None = None
        try:
            value = self.state_redis.hget(keys.mode_current(), "mode")
            current = _text(value) if value else None
        except redis.RedisError as exc:
            log.info("mode mirror unreadable (%s); reading the mode from SQL", exc)
        if current is None:
            from ultra_tasks.db.engine import session_scope
            from ultra_tasks.db.models import OperationModeRecord

            with session_scope() as s:
                record = s.get(OperationModeRecord, 1)
                current = record.mode if record is not None else "NORMAL"
        mode = GaugeMetricFamily(
            "ultra_operation_mode",
            "1 for the fleet's current operation mode, 0 for the others",
            labels=["mode"],
        )
        for m in MODES:
            mode.add_metric([m], 1 if m == current else 0)
        return [mode]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _shown_state(raw: dict[str, str]) -> str:
    forced = raw.get("forced") or ""
    if forced == "open":
        return "forced-open"
    if forced == "disabled":
        return "disabled"
    return raw.get("state") or "closed"


def _latency_histogram(raw: dict[Any, Any]) -> list[Metric]:
    series: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for field, value in raw.items():
        labels = _labels(field)
        if labels is None or len(labels) != 4:
            continue
        series[tuple(labels[:3])][labels[3]] = float(_text(value))
    family = HistogramMetricFamily(
        "ultra_job_latency_seconds",
        "Latency of finished jobs (the provider call, or the cache read when cached), fleet-wide",
        labels=["provider", "model", "cached"],
    )
    for key, values in sorted(series.items()):
        count = values.pop("count", 0.0)
        total = values.pop("sum", 0.0)
        # every standard bucket, so histogram_quantile() sees the same bounds on every series
        counts_by_le: dict[float, float] = dict.fromkeys(LATENCY_BUCKETS_S, 0.0)
        for label, n in values.items():
            if _is_number(label):
                counts_by_le[float(label)] = counts_by_le.get(float(label), 0.0) + n
        cumulative, buckets = 0.0, []
        for bound, n in sorted(counts_by_le.items()):
            cumulative += n
            buckets.append((_le(bound), cumulative))
        buckets.append(("+Inf", max(count, cumulative)))
        family.add_metric(list(key), buckets, total)
    return [family]


def _job_counters(raw: dict[Any, Any]) -> list[Metric]:
    finished = CounterMetricFamily(
        "ultra_jobs_finished",
        "Jobs that finished, fleet-wide, by status and the model they asked for",
        labels=["status", "model"],
    )
    fallback = {
        kind: CounterMetricFamily(name, doc, labels=["model"])
        for kind, name, doc in (
            ("primary_failures", "ultra_fallback_primary_failures", "Jobs not served by their first entry"),
            ("fallback_invocations", "ultra_fallback_invocations", "Jobs that went on to a fallback entry"),
            ("fallback_successes", "ultra_fallback_successes", "Jobs a fallback entry answered"),
        )
    }
    refused = CounterMetricFamily(
        "ultra_job_messages_refused",
        "Messages workers refused because their signature did not verify (kind: job or operation)",
        labels=["kind"],
    )
    latency_sum: dict[str, float] = {}
    successes: dict[str, float] = {}
    for field, value in sorted(raw.items(), key=lambda kv: _text(kv[0])):
        labels = _labels(field)
        if not labels:
            continue
        number = float(_text(value))
        if labels[0] == "refused" and len(labels) == 2:
            refused.add_metric(labels[1:], number)
        elif labels[0] == "finished" and len(labels) == 3:
            finished.add_metric(labels[1:], number)
        elif labels[0] in fallback and len(labels) == 2:
            fallback[labels[0]].add_metric(labels[1:], number)
            if labels[0] == "fallback_successes":
                successes[labels[1]] = number
        elif labels[0] == "fallback_latency_sum" and len(labels) == 2:
            latency_sum[labels[1]] = number
    latency = SummaryMetricFamily(
        "ultra_fallback_latency_seconds",
        "Latency of jobs a fallback entry answered (average = sum / count)",
        labels=["model"],
    )
    for model, n in sorted(successes.items()):
        latency.add_metric([model], int(n), latency_sum.get(model, 0.0))
    return [finished, *fallback.values(), latency, refused]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _le(bound: float) -> str:
    return repr(float(bound))


class _RedactedLabels(Collector):
    """Another collector's metrics with URL passwords and secret settings masked in every label value
    (breaker, component and model names come from the fleet's state, not from a fixed list)."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from ultra_tasks.redaction import known_secrets, redact_text

        secrets = known_secrets()
        for metric in self.inner.collect():
            metric.samples = [
                s._replace(labels={k: redact_text(v, secrets) for k, v in s.labels.items()})
                for s in metric.samples
            ]
            yield metric


def fleet_registry(collector: FleetCollector | None = None) -> CollectorRegistry:
    """A registry holding only the fleet collector (not this process's default metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RedactedLabels(collector or FleetCollector()))
    return registry
