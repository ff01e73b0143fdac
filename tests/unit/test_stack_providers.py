"""`ultra up` (and so ./scripts/run) chooses the local fake provider explicitly, and says so, only when no
API key is set; otherwise a provider without a key stays not configured, never silently faked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ultra_tasks.config import reset_settings
from ultra_tasks.stack import choose_providers, uses_fake_provider


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_COMPAT_API_KEY", "USE_FAKE_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env file either
    reset_settings()
    return monkeypatch


def test_up_chooses_the_fake_provider_explicitly_and_says_so_when_no_api_key_is_set(
    no_keys: pytest.MonkeyPatch,
) -> None:
    settings, notes = choose_providers()
    assert os.environ["USE_FAKE_PROVIDER"] == "1"  # what the stack's children inherit
    assert settings.use_fake_provider and uses_fake_provider(settings)
    assert len(notes) == 1 and "choosing the local fake provider" in notes[0]
    assert "USE_FAKE_PROVIDER=1" in notes[0]


def test_up_with_one_key_leaves_the_other_provider_not_configured_rather_than_faked(
    no_keys: pytest.MonkeyPatch,
) -> None:
    no_keys.setenv("OPENAI_API_KEY", "sk-test")
    reset_settings()
    settings, notes = choose_providers()
    assert "USE_FAKE_PROVIDER" not in os.environ and not settings.use_fake_provider
    assert not uses_fake_provider(settings)  # so no fake provider process is started either
    assert notes == ["anthropic: not configured (ANTHROPIC_API_KEY is not set); its jobs fail at once"]


def test_up_keeps_an_explicit_choice_against_the_fake(no_keys: pytest.MonkeyPatch) -> None:
    no_keys.setenv("USE_FAKE_PROVIDER", "0")
    reset_settings()
    settings, notes = choose_providers()
    assert os.environ["USE_FAKE_PROVIDER"] == "0" and not settings.use_fake_provider
    assert [n.split(":")[0] for n in notes] == ["openai", "anthropic"]


def test_up_with_a_deployments_file_chooses_nothing_and_starts_the_fake_only_if_the_file_names_it(
    no_keys: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text("deployments: [{name: local, kind: fake, models: ['gpt-*']}]\n")
    settings, notes = choose_providers()
    assert "USE_FAKE_PROVIDER" not in os.environ and notes == [f"provider deployments from {path.name}"]
    assert uses_fake_provider(settings)  # its base URL defaults to FAKE_PROVIDER_URL
    path.write_text(
        "deployments: [{name: vllm, kind: openai_compatible, models: ['x'], base_url: 'http://h/v1'}]\n"
    )
    from ultra_tasks.providers.deployments import forget_catalogs

    forget_catalogs()
    assert not uses_fake_provider(settings)
