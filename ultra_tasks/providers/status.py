"""Readers of the deployments for display and for the mode: one row per deployment (kind, models, where,
limits, breaker state) for `ultra providers list`, `ultra status` and the status page, and the sets of
health components that share a model for the mode policy. No key is ever part of a row.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ultra_tasks.errors import ConfigurationError

if TYPE_CHECKING:
    import redis

    from ultra_tasks.config import Settings
    from ultra_tasks.providers.kinds.base import Deployment

log = logging.getLogger(__name__)

#: the health component of a deployment is named like this (health/checks.py LLMProviderHealthCheck)
COMPONENT_PREFIX = "llm_provider_"


def component_name(deployment_name: str) -> str:
    return f"{COMPONENT_PREFIX}{deployment_name}"


def provider_groups(settings: Settings | None = None) -> list[frozenset[str]]:
    """Health components of the deployments that share a model, for the mode policy; [] when the
    deployments cannot be read (the policy then counts each deployment on its own, as before)."""
    from ultra_tasks.providers.deployments import catalog

    try:
        groups = catalog(settings).model_groups()
    except ConfigurationError as exc:
        log.warning("deployments unreadable, each counts on its own for the mode: %s", exc)
        return []
    return [frozenset(component_name(n) for n in group) for group in groups]


def _where(deployment: Deployment) -> str:
    from ultra_tasks.redaction import redact_url

    if not deployment.configured:
        return f"not configured ({deployment.missing} is not set)"
    if deployment.is_fake:
        return f"fake provider at {redact_url(deployment.base_url or '')}"
    return redact_url(deployment.base_url) if deployment.base_url else "official API"


def deployment_rows(
    settings: Settings | None = None, client: redis.Redis | None = None
) -> list[dict[str, Any]]:
    """One row per deployment: name, kind, models, weight, limits, where its calls go and, when Redis is
    given, its breaker state (``unknown`` when Redis does not answer)."""
    from ultra_tasks.providers.deployments import catalog
    from ultra_tasks.redis_client import REDIS_DOWN

    rows = []
    for d in catalog(settings).deployments:
        row: dict[str, Any] = {
            "name": d.name,
            "kind": d.kind,
            "models": list(d.models),
            "weight": d.weight,
            "rpm": d.rpm,
            "tpm": d.tpm,
            "max_concurrency": d.max_concurrency,
            "timeout_s": d.timeout_s,
            "configured": d.configured,
            "where": _where(d),
            "source": d.source,
        }
        if client is not None:
            from ultra_tasks.resilience.breaker import CircuitBreaker

            try:
                row["breaker"] = CircuitBreaker(d.name, redis_client=client).state
            except REDIS_DOWN:
                row["breaker"] = "unknown"
        rows.append(row)
    return rows


def with_health(
    rows: list[dict[str, Any]], components: list[dict[str, Any]] | None, breakers: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """``rows`` with each deployment's last health status (from the component table) and breaker state
    (from the breakers read), where those were readable: what the status page and `ultra status` show."""
    health = {str(c.get("component")): c for c in components or []}
    states = {str(b.get("name")): b.get("state") for b in breakers or []}
    out = []
    for row in rows:
        component = health.get(component_name(row["name"]))
        out.append(
            {
                **row,
                "health": component.get("status") if component else None,
                "breaker": row.get("breaker") or states.get(row["name"]),
            }
        )
    return out
