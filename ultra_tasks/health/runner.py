"""Run every health check at once, record what they found, and let the operation mode follow."""

from __future__ import annotations

import asyncio
from typing import Any

from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.health.checks import (
    NOT_CONFIGURED,
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
from ultra_tasks.mode.policy import ComponentState

#: probes by deployment (name, kind, base URL): a probe reuses its last answer within an interval
_probes: dict[tuple[str, str, str | None], ProviderProbe] = {}


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
    checks.extend(deployment_checks(settings))
    return checks


def deployment_checks(settings: Settings | None = None, names: list[str] | None = None) -> list[HealthCheck]:
    """One check per deployment (of every kind), or of those named: each probed on its own. A deployment
    the environment left unconfigured that nothing routes to by default (openai_compat without its base
    URL) is not shown: it is only ever used on purpose."""
    from ultra_tasks.providers.deployments import catalog
    from ultra_tasks.providers.kinds import get_kind

    settings = settings or get_settings()
    checks: list[HealthCheck] = []
    for deployment in catalog(settings).deployments:
        if names is not None and deployment.name not in names:
            continue
        unused = not deployment.configured and not deployment.models
        if names is None and deployment.source == "environment" and unused:
            continue
        get_kind(deployment.kind)  # a deployment of a kind no longer registered fails here, by name
        key = (deployment.name, deployment.kind, deployment.base_url)
        probe = _probes.get(key)
        if probe is None:
            probe = _probes[key] = ProviderProbe(
                deployment.name, min_interval_s=settings.health_check_interval
            )
        checks.append(LLMProviderHealthCheck(deployment.name, probe))
    return checks


async def run_checks(checks: list[HealthCheck]) -> dict[str, HealthStatus]:
    results = await asyncio.gather(*(check.run() for check in checks))
    return {check.name: result for check, result in zip(checks, results, strict=True)}


def check_and_evaluate(mode: SystemOperationMode, checks: list[HealthCheck] | None = None) -> dict[str, Any]:
    """Run the checks, record each component's status, evaluate the mode; returns a summary."""
    checks = checks if checks is not None else default_checks()
    results = asyncio.run(run_checks(checks))
    summary = {name: r.status for name, r in results.items()}
    states = []
    for check in checks:
        status = results[check.name]
        severity = {"ok": "low", NOT_CONFIGURED: "low", "degraded": "medium", "critical": "high"}.get(
            status.status, "medium"
        )
        states.append(
            ComponentState(check.name, check.component_type, status.status, status.message, severity)
        )
    try:
        mode.flush_buffered()
        for state in states:
            mode.record_component(
                state.component, state.status, state.reason, kind=state.kind, severity=state.severity
            )
        return {"mode": mode.evaluate(), "checks": summary}
    except DependencyUnavailableError as exc:
        if exc.dependency != "database":
            raise
        # the mode still follows the checks, through Redis; SQL gets the record when it is back
        return {"mode": mode.evaluate_without_database(states), "checks": summary}
