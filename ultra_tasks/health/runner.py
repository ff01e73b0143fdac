"""Run every health check at once, record what they found, and let the operation mode follow."""

from __future__ import annotations

import asyncio
from typing import Any

from ultra_tasks.config import Settings, get_settings
from ultra_tasks.health.checks import (
    BrokerHealthCheck,
    DatabaseHealthCheck,
    DiskCacheHealthCheck,
    HealthCheck,
    HealthStatus,
    LLMProviderHealthCheck,
    ProviderProbe,
    QueueDepthHealthCheck,
    RedisHealthCheck,
    WorkersHealthCheck,
)
from ultra_tasks.mode.operation_mode import SystemOperationMode

_probes: dict[str, ProviderProbe] = {}


def default_checks(settings: Settings | None = None) -> list[HealthCheck]:
    settings = settings or get_settings()
    checks: list[HealthCheck] = [
        RedisHealthCheck(settings.redis_url),
        BrokerHealthCheck(),
        DatabaseHealthCheck(),
        WorkersHealthCheck(),
        QueueDepthHealthCheck(settings.effective_broker_url, settings.queue_max_size),
        DiskCacheHealthCheck(settings.effective_cache_disk_dir),
    ]
    for provider in ("openai", "anthropic"):
        probe = _probes.get(provider)
        if probe is None:
            probe = _probes[provider] = ProviderProbe(provider, min_interval_s=settings.health_check_interval)
        checks.append(LLMProviderHealthCheck(provider, probe))
    return checks


async def run_checks(checks: list[HealthCheck]) -> dict[str, HealthStatus]:
    results = await asyncio.gather(*(check.run() for check in checks))
    return {check.name: result for check, result in zip(checks, results, strict=True)}


def check_and_evaluate(mode: SystemOperationMode, checks: list[HealthCheck] | None = None) -> dict[str, Any]:
    """Run the checks, record each component's status, evaluate the mode; returns a summary."""
    checks = checks if checks is not None else default_checks()
    results = asyncio.run(run_checks(checks))
    for check in checks:
        status = results[check.name]
        severity = {"ok": "low", "degraded": "medium", "critical": "high"}.get(status.status, "medium")
        mode.record_component(
            check.name, status.status, status.message, kind=check.component_type, severity=severity
        )
    return {"mode": mode.evaluate(), "checks": {name: r.status for name, r in results.items()}}
