"""The degradation policy: which component statuses make which operation mode."""

from __future__ import annotations

from ultra_tasks.mode.policy import ComponentState, Mode, evaluate, status_for_severity


def c(component: str, kind: str, status: str) -> ComponentState:
    return ComponentState(component, kind, status, f"{component} is {status}", "medium")


def test_all_ok_is_normal() -> None:
    assert evaluate([c("redis", "redis", "ok"), c("openai", "llm_provider", "ok")]) == (Mode.NORMAL, [])


def test_some_providers_down_is_degraded_with_the_reasons() -> None:
    mode, reasons = evaluate([c("openai", "llm_provider", "critical"), c("anthropic", "llm_provider", "ok")])
    assert mode is Mode.DEGRADED
    assert [r["component"] for r in reasons] == ["openai"]


def test_no_provider_left_is_emergency() -> None:
    states = [c("openai", "llm_provider", "critical"), c("anthropic", "llm_provider", "critical")]
    assert evaluate(states)[0] is Mode.EMERGENCY


def test_a_provider_that_is_not_configured_is_neither_a_reason_to_degrade_nor_a_provider_left() -> None:
    # not configured (no key, no USE_FAKE_PROVIDER): chains skip it, so it is not a failing provider
    working = [c("openai", "llm_provider", "not-configured"), c("anthropic", "llm_provider", "ok")]
    assert evaluate(working) == (Mode.NORMAL, [])
    # and the providers that are configured decide alone whether any is left
    down = [c("openai", "llm_provider", "not-configured"), c("anthropic", "llm_provider", "critical")]
    mode, reasons = evaluate(down)
    assert mode is Mode.EMERGENCY and [r["component"] for r in reasons] == ["anthropic"]


def test_redis_or_broker_critical_is_emergency_but_database_is_degraded() -> None:
    assert evaluate([c("redis", "redis", "critical")])[0] is Mode.EMERGENCY
    assert evaluate([c("broker", "broker", "critical")])[0] is Mode.EMERGENCY
    assert evaluate([c("database", "database", "critical")])[0] is Mode.DEGRADED


def test_seed_severities_map_to_statuses() -> None:
    assert status_for_severity("low") == status_for_severity("medium") == "degraded"
    assert status_for_severity("high") == status_for_severity("critical") == "critical"


def test_a_deployment_down_counts_only_when_no_other_deployment_of_its_models_is_up() -> None:
    # two deployments of gpt-4o, one of them also the only one serving gpt-4o-mini
    groups = [frozenset({"azure", "openai"}), frozenset({"openai"})]
    azure_down = [c("azure", "llm_provider", "critical"), c("openai", "llm_provider", "ok")]
    assert evaluate(azure_down, groups) == (Mode.NORMAL, [])
    openai_down = [c("azure", "llm_provider", "ok"), c("openai", "llm_provider", "critical")]
    mode, reasons = evaluate(openai_down, groups)  # gpt-4o-mini has no other deployment
    assert mode is Mode.DEGRADED and [r["component"] for r in reasons] == ["openai"]
    both_down = [c("azure", "llm_provider", "critical"), c("openai", "llm_provider", "critical")]
    assert evaluate(both_down, groups)[0] is Mode.EMERGENCY
