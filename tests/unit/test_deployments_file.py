"""The deployments file (PROVIDERS_FILE): what it defines, and every bad file refused at start-up naming the
file, the entry and the field, never a key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from ultra_tasks.config import load_settings
from ultra_tasks.errors import DeploymentsFileError, UnknownModelError
from ultra_tasks.providers.base import ChatMessage, LLMRequest
from ultra_tasks.providers.deployments import catalog, forget_catalogs, load_file
from ultra_tasks.providers.registry import provider_for_model
from ultra_tasks.resilience.chains import ChainEntry, chain_for

GOOD = """
deployments:
  - name: openai-main
    kind: openai
    models: ["gpt-4o-mini", "gpt-4o"]
    api_key: env:T17_OPENAI_KEY
    weight: 3
    rpm: 5000
    tpm: 2000000
    max_concurrency: 200
    timeout_s: 60
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
  - name: azure-eu
    kind: azure_openai
    models: ["gpt-4o"]
    base_url: https://example-eu.openai.azure.com
    api_key: env:T17_AZURE_KEY
    options: {api_version: "2024-10-21", deployment: gpt4o-eu}
  - name: claude
    kind: anthropic
    models: ["claude-*"]
    api_key: env:T17_ANTHROPIC_KEY
  - name: vllm
    kind: openai_compatible
    models: ["llama3:8b", "mistral-*"]
    base_url: http://127.0.0.1:9/v1
fallbacks:
  gpt-4o: ["claude-3-5-sonnet-latest"]
"""
KEYS = {
    "T17_OPENAI_KEY": "sk-t17-openai-secret-value",
    "T17_AZURE_KEY": "azure-t17-secret-value",
    "T17_ANTHROPIC_KEY": "sk-ant-t17-secret-value",
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _refused(tmp_path: Path, text: str) -> DeploymentsFileError:
    path = _write(tmp_path, text)
    with pytest.raises(DeploymentsFileError) as info:
        load_file(path, load_settings(), environ=KEYS)
    assert str(path) in str(info.value)
    for secret in KEYS.values():
        assert secret not in str(info.value)
    return info.value


def test_a_file_defines_deployments_with_keys_resolved_from_the_environment_and_never_shown(
    tmp_path: Path,
) -> None:
    deployments = load_file(_write(tmp_path, GOOD), load_settings(), environ=KEYS)
    main = deployments.by_name["openai-main"]
    assert main.api_key == KEYS["T17_OPENAI_KEY"] and KEYS["T17_OPENAI_KEY"] not in repr(main)
    assert (main.weight, main.rpm, main.tpm, main.max_concurrency, main.timeout_s) == (3, 5000, 2e6, 200, 60)
    assert main.price is not None and main.price.output_per_mtok == 0.60
    assert [d.name for d in deployments.serving("gpt-4o")] == ["openai-main", "azure-eu"]
    assert [d.name for d in deployments.serving("llama3:8b")] == ["vllm"]
    assert deployments.rate_limits(load_settings())["openai-main"] == {"rpm": 5000, "tpm": 2e6}
    assert set(deployments.secrets()) == set(KEYS.values())


def test_providers_file_setting_routes_models_and_chains_through_the_files_deployments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, GOOD)
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROVIDERS_FILE", str(path))
    settings = load_settings()
    assert provider_for_model("gpt-4o", settings) == "openai-main"
    request = LLMRequest("gpt-4o", (ChatMessage("user", "hi"),), 8)
    # the model on any of its deployments, then the file's fallback
    assert chain_for(request, settings) == [
        ChainEntry("*", "gpt-4o"),
        ChainEntry("*", "claude-3-5-sonnet-latest"),
    ]
    with pytest.raises(UnknownModelError):
        provider_for_model("gemini-1.5-pro", settings)
    own = chain_for(request, settings, override=["azure-eu:gpt-4o", "llama3:8b"])
    assert own == [ChainEntry("*", "gpt-4o"), ChainEntry("azure-eu", "gpt-4o"), ChainEntry("*", "llama3:8b")]


def test_without_a_file_the_environment_defines_one_deployment_per_provider(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./providers.yaml here
    monkeypatch.delenv("PROVIDERS_FILE", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-openai")
    settings = load_settings()
    deployments = catalog(settings)
    assert not deployments.from_file
    assert [d.name for d in deployments.deployments] == ["openai", "anthropic", "openai_compat"]
    assert deployments.by_name["openai"].api_key == "sk-env-openai"
    assert provider_for_model("claude-3-5-haiku-latest", settings) == "anthropic"


def test_providers_yaml_in_the_working_directory_is_read_when_providers_file_is_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _write(tmp_path, "deployments: [{name: local, kind: fake, models: ['local-*']}]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVIDERS_FILE", raising=False)
    forget_catalogs()
    try:
        assert provider_for_model("local-1", load_settings()) == "local"
    finally:
        forget_catalogs()
    assert os.getcwd() == str(tmp_path)


def test_an_unknown_kind_is_refused_naming_the_entry_and_field(tmp_path: Path) -> None:
    error = _refused(tmp_path, "deployments: [{name: x, kind: cohere, models: [a]}]")
    assert (error.entry, error.field) == ("deployment 'x'", "kind") and "cohere" in str(error)


def test_an_unknown_key_is_refused_naming_the_entry_and_field(tmp_path: Path) -> None:
    error = _refused(tmp_path, "deployments: [{name: x, kind: fake, models: [a], wieght: 2}]")
    assert (error.entry, error.field) == ("deployment 'x'", "wieght") and "unknown key" in str(error)


def test_an_unknown_option_of_a_kind_is_refused(tmp_path: Path) -> None:
    error = _refused(
        tmp_path,
        """
        deployments:
          - {name: az, kind: azure_openai, models: [gpt-4o], base_url: "https://x",
             api_key: env:T17_AZURE_KEY, options: {api_version: "2024-10-21", region: eu}}
        """,
    )
    assert (error.entry, error.field) == ("deployment 'az'", "options.region")


def test_a_duplicate_name_is_refused(tmp_path: Path) -> None:
    error = _refused(
        tmp_path,
        """
        deployments:
          - {name: twin, kind: fake, models: [a]}
          - {name: twin, kind: fake, models: [b]}
        """,
    )
    assert (error.entry, error.field) == ("deployment 'twin'", "name") and "duplicate" in str(error)


def test_a_key_referring_to_an_unset_variable_is_refused_naming_the_variable(tmp_path: Path) -> None:
    error = _refused(
        tmp_path, "deployments: [{name: o, kind: openai, models: [gpt-4o], api_key: env:T17_NOT_SET}]"
    )
    assert (error.entry, error.field) == ("deployment 'o'", "api_key") and "T17_NOT_SET" in str(error)


def test_a_fallbacks_glob_no_deployment_serves_is_refused(tmp_path: Path) -> None:
    error = _refused(
        tmp_path,
        """
        deployments: [{name: f, kind: fake, models: ["gpt-*"]}]
        fallbacks: {gpt-4o: ["claude-*"]}
        """,
    )
    assert error.entry == "fallbacks" and error.field == "gpt-4o[0]" and "claude-*" in str(error)


def test_a_missing_field_or_value_of_the_wrong_type_is_refused_without_echoing_it(tmp_path: Path) -> None:
    error = _refused(
        tmp_path, "deployments: [{name: w, kind: fake, models: [a], weight: sk-t17-openai-secret-value}]"
    )
    assert (error.entry, error.field) == ("deployment 'w'", "weight")
    error = _refused(tmp_path, "deployments: [{name: m, kind: fake}]")
    assert (error.entry, error.field) == ("deployment 'm'", "models")


def test_a_worker_with_a_bad_deployments_file_refuses_to_start_naming_the_file_entry_and_field(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    path = _write(
        tmp_path, "deployments: [{name: o, kind: openai, models: [gpt-4o], api_key: env:T17_UNSET}]"
    )
    env = {**os.environ, "PROVIDERS_FILE": str(path), "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("T17_UNSET", None)
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "ultra_tasks", "worker", "-Q", "ops"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert f"{path}: deployment 'o': api_key: environment variable T17_UNSET is not set" in out.stderr
