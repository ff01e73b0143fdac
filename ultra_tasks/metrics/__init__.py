"""Fleet-wide Prometheus metrics: writers batch their counts into Redis (buffer, jobs, cache); one collector
renders the fleet snapshot (ultra_tasks/fleet/) taken at scrape time, so any one endpoint shows the whole
fleet."""

from __future__ import annotations

from ultra_tasks.metrics.collector import FleetCollector, fleet_registry

__all__ = ["FleetCollector", "fleet_registry", "render_metrics"]


def render_metrics(collector: FleetCollector | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition of the fleet's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(fleet_registry(collector)), CONTENT_TYPE_LATEST
