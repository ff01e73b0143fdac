"""The Prometheus metric families of each part of a fleet snapshot.

Pure functions of the snapshot's typed parts: nothing here reads a store. A part that is unavailable has no
families at all (``ultra_metrics_part_up`` says so), rather than zeros that would look like a quiet fleet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from ultra_tasks.fleet.billing import BillingCounters, BudgetView
from ultra_tasks.fleet.breakers import BreakerView
from ultra_tasks.fleet.cache import FleetCache
from ultra_tasks.fleet.jobs import JobCounters
from ultra_tasks.fleet.mode import ComponentView, ModeHistory, ModeView
from ultra_tasks.jobs.admission import Fill
from ultra_tasks.jobs.stats import QueueStats
from ultra_tasks.metrics.jobs import LATENCY_BUCKETS_S, bucket_label

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
_BREAKER_COUNTERS = (
    ("successes", "Calls through the breaker that succeeded, fleet-wide"),
    ("failures", "Calls through the breaker that failed and counted against it, fleet-wide"),
    ("rejections", "Calls the breaker refused while open, fleet-wide"),
    ("slow_calls", "Calls slower than the breaker's slow-call duration, fleet-wide"),
)
_FALLBACK_FAMILIES = (
    ("primary_failures", "ultra_fallback_primary_failures", "Jobs not served by their first entry"),
    ("fallback_invocations", "ultra_fallback_invocations", "Jobs that went on to a fallback entry"),
    ("fallback_successes", "ultra_fallback_successes", "Jobs a fallback entry answered"),
)


# --- circuit breakers ------------------------------------------------------------------------------------
def breaker_families(breakers: list[BreakerView]) -> list[Metric]:
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
        for what, doc in _BREAKER_COUNTERS
    }
    changes = CounterMetricFamily(
        "ultra_circuit_breaker_state_changes",
        "State transitions of the breaker, fleet-wide, by from and to state",
        labels=["breaker", "from_state", "to_state"],
    )
    for b in breakers:
        for s in BREAKER_STATES:
            state.add_metric([b.name, s], 1 if s == b.state else 0)
        consecutive.add_metric([b.name], float(b.failure_count))
        last_failure.add_metric([b.name], b.last_failure_time)
        for what, family in counters.items():
            family.add_metric([b.name], float(getattr(b, what)))
        for pair, n in b.state_changes.items():
            if "->" in pair:
                from_state, to_state = pair.split("->", 1)
                changes.add_metric([b.name, from_state, to_state], float(n))
    return [state, consecutive, last_failure, *counters.values(), changes]


# --- jobs and fallbacks ------------------------------------------------------------------------------------
def job_families(counters: JobCounters) -> list[Metric]:
    histogram = HistogramMetricFamily(
        "ultra_job_latency_seconds",
        "Latency of finished jobs (the provider call, or the cache read when cached), fleet-wide",
        labels=["provider", "model", "cached"],
    )
    for series in counters.latency:
        # every standard bucket, so histogram_quantile() sees the same bounds on every series
        by_bound: dict[float, float] = dict.fromkeys(LATENCY_BUCKETS_S, 0.0)
        for bound, n in series.buckets.items():
            by_bound[bound] = by_bound.get(bound, 0.0) + n
        cumulative, buckets = 0.0, []
        for bound, n in sorted(by_bound.items()):
            cumulative += n
            buckets.append((bucket_label(bound), cumulative))
        buckets.append(("+Inf", max(series.count, cumulative)))
        histogram.add_metric([series.provider, series.model, series.cached], buckets, series.sum_s)
    finished = CounterMetricFamily(
        "ultra_jobs_finished",
        "Jobs that finished, fleet-wide, by status and the model they asked for",
        labels=["status", "model"],
    )
    for (status, model), n in counters.finished.items():
        finished.add_metric([status, model], n)
    fallback = []
    for kind, name, doc in _FALLBACK_FAMILIES:
        family = CounterMetricFamily(name, doc, labels=["model"])
        for model, n in counters.fallback.get(kind, {}).items():
            family.add_metric([model], n)
        fallback.append(family)
    latency = SummaryMetricFamily(
        "ultra_fallback_latency_seconds",
        "Latency of jobs a fallback entry answered (average = sum / count)",
        labels=["model"],
    )
    for model, n in sorted(counters.fallback.get("fallback_successes", {}).items()):
        latency.add_metric([model], int(n), counters.fallback_latency_sum.get(model, 0.0))
    refused = CounterMetricFamily(
        "ultra_job_messages_refused",
        "Messages workers refused because their signature did not verify (kind: job or operation)",
        labels=["kind"],
    )
    for kind, n in counters.refused.items():
        refused.add_metric([kind], n)
    return [histogram, finished, *fallback, latency, refused]


# --- cache ------------------------------------------------------------------------------------------------
def cache_families(cache: FleetCache) -> list[Metric]:
    families: list[Metric] = []
    for stat, doc in CACHE_COUNTERS.items():
        family = CounterMetricFamily(f"ultra_cache_{stat}", doc, labels=["level"])
        for level, stats in cache.levels.items():
            family.add_metric([level], float(getattr(stats, stat)))
        families.append(family)
    ratio = GaugeMetricFamily(
        "ultra_cache_hit_ratio", "Hits / reads at this level since the counters began", labels=["level"]
    )
    read_time = SummaryMetricFamily(
        "ultra_cache_read_seconds", "Time of a read at this level (average = sum / count)", labels=["level"]
    )
    for level, stats in cache.levels.items():
        if stats.hit_rate is not None:
            ratio.add_metric([level], stats.hit_rate)
        read_time.add_metric([level], stats.reads, stats.read_seconds)
    sizes = cache.sizes
    entries = GaugeMetricFamily(
        "ultra_cache_entries", "Entries held at this level, summed over live processes", labels=["level"]
    )
    for level, n in sizes.entries.items():
        entries.add_metric([level], n)
    capacity = GaugeMetricFamily(
        "ultra_cache_capacity_entries",
        "Entries this level may hold, summed over live processes",
        labels=["level"],
    )
    utilization = GaugeMetricFamily(
        "ultra_cache_utilization_ratio",
        "Entries / capacity (memory), bytes / limit (disk)",
        labels=["level"],
    )
    if sizes.memory_capacity:
        capacity.add_metric(["memory"], sizes.memory_capacity)
        utilization.add_metric(["memory"], sizes.entries.get("memory", 0.0) / sizes.memory_capacity)
    if sizes.disk_capacity_bytes:
        utilization.add_metric(["disk"], sizes.disk_bytes / sizes.disk_capacity_bytes)
    disk = GaugeMetricFamily(
        "ultra_cache_disk_bytes", "Bytes used by the disk level, summed over machines", value=sizes.disk_bytes
    )
    return [*families, ratio, read_time, entries, capacity, utilization, disk]


# --- queues and admission -----------------------------------------------------------------------------------
def queue_depth_families(depths: dict[str, int]) -> list[Metric]:
    depth = GaugeMetricFamily(
        "ultra_queue_depth", "Messages waiting in the Celery queue (all priority steps)", labels=["queue"]
    )
    for queue, n in depths.items():
        depth.add_metric([queue], n)
    return [depth]


def parked_families(parked: dict[str, int]) -> list[Metric]:
    family = GaugeMetricFamily(
        "ultra_queue_parked", "Jobs parked in Redis off this queue, holding no worker", labels=["queue"]
    )
    for queue, n in parked.items():
        family.add_metric([queue], n)
    return [family]


def admission_families(fill: Fill) -> list[Metric]:
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
    for priority, n in fill.held.items():
        held.add_metric([priority], n)
        limit.add_metric([priority], fill.thresholds[priority].limit)
    bound = GaugeMetricFamily(
        "ultra_queue_max_size", "QUEUE_MAX_SIZE: the jobs the system holds at most", value=fill.max_size
    )
    ratio = GaugeMetricFamily(
        "ultra_queue_fill_ratio", "Jobs held over QUEUE_MAX_SIZE", value=fill.total / fill.max_size
    )
    return [held, limit, bound, ratio]


def queue_stats_families(stats: QueueStats) -> list[Metric]:
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
    ended = {
        "processed": stats["processed"],
        "succeeded": stats["succeeded"],
        "failed": stats["failed"],
        "expired": stats["expired"],
        "started": stats["started"],
    }
    for outcome, n in ended.items():
        jobs.add_metric([outcome], float(n))
    out.append(jobs)
    for name, value, doc in (
        ("ultra_queue_processing_rate_per_second", stats["processing_rate_per_s"], "Jobs ended per second"),
        ("ultra_queue_success_ratio", stats["success_rate"], "Succeeded / processed in the window"),
        ("ultra_queue_failure_ratio", stats["failure_rate"], "Failed / processed in the window"),
        ("ultra_queue_wait_seconds_avg", stats["avg_wait_s"], "Average wait from submit to first start"),
        ("ultra_queue_wait_seconds_max", stats["max_wait_s"], "Longest wait from submit to first start"),
    ):
        if value is not None:
            out.append(GaugeMetricFamily(name, doc + f" (last {window:g}s)", value=float(value)))
    return out


# --- operation mode and components ------------------------------------------------------------------------
def mode_families(mode: ModeView) -> list[Metric]:
    family = GaugeMetricFamily(
        "ultra_operation_mode", "1 for the fleet's current operation mode, 0 for the others", labels=["mode"]
    )
    for m in MODES:
        family.add_metric([m], 1 if m == mode.mode else 0)
    return [family]


def mode_history_families(history: ModeHistory) -> list[Metric]:
    current = history.current
    override = GaugeMetricFamily(
        "ultra_operation_mode_override",
        "1 while an operator's override decides the mode",
        value=1 if current.override is not None else 0,
    )
    changed = GaugeMetricFamily(
        "ultra_operation_mode_changed_timestamp_seconds",
        "When the mode last changed (epoch seconds)",
        value=current.changed_at.timestamp() if current.changed_at is not None else 0,
    )
    counts = CounterMetricFamily(
        "ultra_operation_mode_transitions",
        "Mode changes recorded in mode_transitions, by from and to mode",
        labels=["from_mode", "to_mode"],
    )
    for (from_mode, to_mode), n in sorted(history.transitions.items()):
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
    for m, stay in sorted(history.time_in_modes.items()):
        seconds.add_metric([m], stay.total_s)
        stays.add_metric([m], float(stay.stays))
        if stay.average_stay_s is not None:
            average.add_metric([m], float(stay.average_stay_s))
    reasons = GaugeMetricFamily(
        "ultra_operation_mode_reason",
        "1 for each current degradation reason of the mode",
        labels=["component", "severity"],
    )
    for reason in current.reasons:
        if isinstance(reason, dict):
            reasons.add_metric([str(reason.get("component", "")), str(reason.get("severity", ""))], 1)
    return [override, changed, counts, seconds, stays, average, reasons]


def component_families(components: list[ComponentView]) -> list[Metric]:
    status = GaugeMetricFamily(
        "ultra_component_status",
        "1 for the component's latest reported status, 0 for the others",
        labels=["component", "kind", "status"],
    )
    for c in sorted(components, key=lambda c: (c.component, c.kind, c.status)):
        for st in COMPONENT_STATUSES:
            status.add_metric([c.component, c.kind, st], 1 if st == c.status else 0)
    return [status]


# --- billing ----------------------------------------------------------------------------------------------
def billing_families(billing: BillingCounters) -> list[Metric]:
    """Cost, tokens and calls by tenant and model (bounded: metrics/billing.py)."""

    def counter(
        name: str, doc: str, labels: list[str], values: Mapping[Any, float], unit: float = 1
    ) -> Metric:
        family = CounterMetricFamily(name, doc, labels=labels)
        for key, n in sorted(values.items()):
            family.add_metric(list(key), n / unit)
        return family

    return [
        counter(
            "ultra_billing_cost_usd",
            "What provider calls cost, fleet-wide, by tenant and model (calls of unknown cost left out)",
            ["tenant", "model"],
            billing.cost_nusd,
            unit=1e9,  # nano-USD
        ),
        counter(
            "ultra_billing_tokens",
            "Tokens of provider calls, fleet-wide, by tenant, model and direction (input, output)",
            ["tenant", "model", "direction"],
            billing.tokens,
        ),
        counter(
            "ultra_billing_calls",
            "Provider calls entered in the ledger, by tenant, model and status (ok, error, unknown)",
            ["tenant", "model", "status"],
            billing.calls,
        ),
        counter(
            "ultra_billing_uncosted_calls",
            "Provider calls whose cost is unknown (no price, or usage lost), by tenant and model",
            ["tenant", "model"],
            billing.uncosted,
        ),
    ]


def budget_families(budgets: list[BudgetView]) -> list[Metric]:
    budget = GaugeMetricFamily(
        "ultra_budget_usd", "Each tenant's budget for its current period", labels=["tenant", "period"]
    )
    spent = GaugeMetricFamily(
        "ultra_budget_spent_usd",
        "Each tenant's settled spend in its current period (lost calls at their worst case)",
        labels=["tenant", "period"],
    )
    for b in budgets:
        budget.add_metric([b.tenant, b.period], b.usd)
        if b.spent_usd is not None:
            spent.add_metric([b.tenant, b.period], b.spent_usd)
    return [budget, spent]
