"""The fleet's Prometheus metrics: one fleet snapshot (ultra_tasks/fleet/) per scrape, rendered.

One ``FleetCollector`` serves the whole fleet: nothing here is one process's counter. The snapshot is read
under its one deadline; a part it could not read has no families, ``ultra_metrics_part_up{part}`` is 0 for
it and ``ultra_metrics_source_up{source}`` 0 for its store, so a scrape during an outage still answers with
everything that can be known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ultra_tasks.fleet import FleetSnapshot, Store, read_fleet
from ultra_tasks.metrics import families
from ultra_tasks.redaction import known_secrets, redact_text

#: the part of ``ultra_metrics_part_up`` that is the current mode, from whichever store answered
MODE_PART = "mode"


def snapshot_families(snapshot: FleetSnapshot) -> Iterator[Metric]:
    """Every family of ``snapshot``: its parts', then which parts and stores could be read."""
    if snapshot.breakers is not None:
        yield from families.breaker_families(snapshot.breakers)
    if snapshot.jobs is not None:
        yield from families.job_families(snapshot.jobs)
    if snapshot.cache is not None:
        yield from families.cache_families(snapshot.cache)
    if snapshot.queues is not None:
        yield from families.queue_depth_families(snapshot.queues)
    if snapshot.parked is not None:
        yield from families.parked_families(snapshot.parked)
    if snapshot.admission is not None:
        yield from families.admission_families(snapshot.admission)
    mode = snapshot.mode
    if mode.source is not None:
        yield from families.mode_families(mode)
    if snapshot.mode_history is not None:
        yield from families.mode_history_families(snapshot.mode_history)
    if snapshot.components is not None:
        yield from families.component_families(snapshot.components)
    if snapshot.queue_stats is not None:
        yield from families.queue_stats_families(snapshot.queue_stats)
    if snapshot.billing is not None:
        yield from families.billing_families(snapshot.billing)
    if snapshot.budgets is not None:
        yield from families.budget_families(snapshot.budgets)
    yield from _read_families(snapshot)


def _read_families(snapshot: FleetSnapshot) -> Iterator[Metric]:
    part_up = GaugeMetricFamily(
        "ultra_metrics_part_up", "1 if this part of the fleet metrics could be read", labels=["part"]
    )
    for part in snapshot.parts:
        part_up.add_metric([part.value], 0 if part in snapshot.unavailable else 1)
    part_up.add_metric([MODE_PART], 0 if snapshot.mode.source is None else 1)
    yield part_up
    source_up = GaugeMetricFamily(
        "ultra_metrics_source_up", "1 if this store answered the scrape", labels=["source"]
    )
    for store in Store:
        source_up.add_metric([store.value], 0 if snapshot.store_failed(store) else 1)
    yield source_up
    yield GaugeMetricFamily(
        "ultra_metrics_scrape_duration_seconds", "Time taken to read the fleet metrics", value=snapshot.read_s
    )


class FleetCollector(Collector):
    """A prometheus_client collector that renders one fleet snapshot per scrape.

    ``read`` takes the snapshot (default: ``read_fleet`` with these clients); a caller that already holds a
    snapshot renders it with ``read=lambda: snapshot``."""

    def __init__(
        self,
        redis_client: redis.Redis | None = None,
        broker_client: redis.Redis | None = None,
        *,
        read: Callable[[], FleetSnapshot] | None = None,
    ) -> None:
        self._read = read or (lambda: read_fleet(redis_client=redis_client, broker_client=broker_client))

    def describe(self) -> Iterable[Metric]:
        return []  # values exist only at scrape time; registering must not read Redis or SQL

    def collect(self) -> Iterator[Metric]:
        yield from snapshot_families(self._read())


class _RedactedLabels(Collector):
    """Another collector's metrics with URL passwords and secret settings masked in every label value
    (breaker, component and model names come from the fleet's state, not from a fixed list)."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
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


__all__ = ["FleetCollector", "fleet_registry", "snapshot_families"]
