"""How component statuses make an operation mode (documented in docs/modes.md; pure, so easy to test).

- Redis or the broker critical → EMERGENCY (nothing can be queued or coordinated).
- Every LLM provider critical → EMERGENCY (no chain can be served).
- A provider deployment that is down while every model it serves has another deployment up does not
  count: its models are still served (``provider_groups``, the deployments that share a model).
- Anything else degraded or critical (some providers, the database, workers, queues, disk cache)
  → DEGRADED.
- Otherwise NORMAL.
A provider that is not configured (no API key, no USE_FAKE_PROVIDER) is neither healthy nor failing: jobs
never reach it (chains skip it), so it is shown but counts for nothing here.
Worsening applies at once; recovery only after it held for ``recovery_checks`` evaluations in a row
(hysteresis, in operation_mode.py), so a flapping check does not flap the mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    NORMAL = "NORMAL"
    DEGRADED = "DEGRADED"
    EMERGENCY = "EMERGENCY"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Mode.NORMAL: 0, Mode.DEGRADED: 1, Mode.EMERGENCY: 2}

OK, DEGRADED_STATUS, CRITICAL = "ok", "degraded", "critical"
#: components whose loss stops the whole system
CORE = ("redis", "broker")
PROVIDER_KIND = "llm_provider"
#: a provider left without credentials (health/checks.py reports it); not a failure
NOT_CONFIGURED = "not-configured"


def status_for_severity(severity: str) -> str:
    """A severity of ``mark_component_degraded`` (low, medium, high, critical) as a component status."""
    return CRITICAL if severity in ("high", "critical") else DEGRADED_STATUS


@dataclass(frozen=True)
class ComponentState:
    component: str
    kind: str
    status: str
    reason: str
    severity: str

    def as_reason(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "severity": self.severity,
        }


def is_unhealthy(component: ComponentState) -> bool:
    """Whether the component counts against the mode (neither ok nor a provider left unconfigured)."""
    return component.status not in (OK, NOT_CONFIGURED)


def covered_providers(
    components: list[ComponentState], provider_groups: Sequence[frozenset[str]]
) -> set[str]:
    """Unhealthy provider components whose every model another deployment still serves: each group
    (component names of the deployments sharing a model) they belong to has a member that is ok."""
    ok = {c.component for c in components if c.status == OK}
    covered = set()
    for c in components:
        if c.kind != PROVIDER_KIND or not is_unhealthy(c):
            continue
        groups = [g for g in provider_groups if c.component in g]
        if groups and all(g & ok for g in groups):
            covered.add(c.component)
    return covered


def evaluate(
    components: list[ComponentState], provider_groups: Sequence[frozenset[str]] = ()
) -> tuple[Mode, list[dict[str, Any]]]:
    """The mode the components call for, and the reasons (the components that are not ok and count)."""
    covered = covered_providers(components, provider_groups)
    unhealthy = [c for c in components if is_unhealthy(c) and c.component not in covered]
    reasons = [c.as_reason() for c in unhealthy]
    if any(c.kind in CORE and c.status == CRITICAL for c in unhealthy):
        return Mode.EMERGENCY, reasons
    providers = [c for c in components if c.kind == PROVIDER_KIND and c.status != NOT_CONFIGURED]
    if providers and all(c.status == CRITICAL for c in providers):
        return Mode.EMERGENCY, reasons
    if unhealthy:
        return Mode.DEGRADED, reasons
    return Mode.NORMAL, reasons
