"""Typed settings: the seed's variables keep their names and defaults; bad values stop start-up by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ultra_tasks.config import load_settings
from ultra_tasks.errors import ConfigurationError

SEED_DEFAULTS = {
    "circuit_breaker_failure_threshold": 5,
    "circuit_breaker_reset_timeout": 60,
    "retry_max_attempts": 3,
    "retry_initial_delay": 0.1,
    "retry_max_delay": 2.0,
    "retry_backoff_factor": 2.0,
    "cache_memory_size": 1000,
    "cache_redis_url": None,
    "cache_default_ttl": 3600,
    "queue_max_size": 1000,
    "queue_worker_count": 5,
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in [
        *(k.upper() for k in SEED_DEFAULTS),
        "CACHE_DISK_DIR",
        "QUEUE_STORAGE_PATH",
        "ULTRA_VAR_DIR",
        "DATABASE_URL",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_seed_variables_keep_their_defaults_with_tmp_paths_moved_under_var(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    for name, default in SEED_DEFAULTS.items():
        assert getattr(settings, name) == default, name
    var = Path.cwd().resolve() / "var"
    assert settings.effective_cache_disk_dir == var / "cache"
    assert settings.effective_queue_storage_path == var / "spool" / "requests.jsonl"
    assert settings.effective_database_url == f"sqlite:///{var / 'ultra.db'}"


def test_seed_variables_are_read_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "9")
    clean_env.setenv("RETRY_BACKOFF_FACTOR", "1.5")
    clean_env.setenv("CACHE_DISK_DIR", "/srv/cache")
    settings = load_settings()
    assert settings.circuit_breaker_failure_threshold == 9
    assert settings.retry_backoff_factor == 1.5
    assert settings.effective_cache_disk_dir == Path("/srv/cache")


def test_dotenv_file_is_read(clean_env: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("RETRY_MAX_ATTEMPTS=7\n")
    assert load_settings().retry_max_attempts == 7


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("RETRY_MAX_ATTEMPTS", "abc", "valid integer"),
        ("RETRY_MAX_ATTEMPTS", "0", "greater than or equal to 1"),
        ("CACHE_MEMORY_SIZE", "-1", "greater than or equal to 0"),
        ("RETRY_INITIAL_DELAY", "soon", "valid number"),
        ("REDIS_URL", "localhost:6379", "Redis URL with a scheme"),
        ("BROKER_URL", "127.0.0.1", "broker URL with a scheme"),
        ("OPENAI_BASE_URL", "api.openai.com/v1", "HTTP URL with a scheme"),
        ("DATABASE_URL", "nonsense", "SQLAlchemy URL"),
        ("DATABASE_REPLICA_URLS", "postgresql://a/b,nonsense", "SQLAlchemy URL"),
        ("MODEL_MAP", "{not json", "JSON object"),
        ("HEALTH_CHECK_INTERVAL", "-5", "greater than 0"),
        ("LOG_LEVEL", "chatty", "should match"),
    ],
)
def test_malformed_value_stops_startup_naming_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert name in str(info.value)
    assert expected in str(info.value)


def test_inconsistent_visibility_timeout_is_refused_with_the_reason(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JOB_TIME_LIMIT", "600")
    clean_env.setenv("BROKER_VISIBILITY_TIMEOUT", "300")
    with pytest.raises(ConfigurationError, match="BROKER_VISIBILITY_TIMEOUT must exceed JOB_TIME_LIMIT"):
        load_settings()


def test_a_probe_lease_shorter_than_the_longest_call_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    # a probe lease that lapses while its call still runs would let a second probe start beside it
    clean_env.setenv("CIRCUIT_BREAKER_PROBE_LEASE", "30")
    with pytest.raises(ConfigurationError, match="CIRCUIT_BREAKER_PROBE_LEASE must exceed the longest"):
        load_settings()
    clean_env.setenv("CIRCUIT_BREAKER_PROBE_LEASE", "200")
    assert load_settings().effective_probe_lease == 200
    clean_env.delenv("CIRCUIT_BREAKER_PROBE_LEASE")
    assert load_settings().effective_probe_lease == 125  # ADAPTIVE_TIMEOUT_MAX 120 + 5


def test_error_messages_never_echo_passwords(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BROKER_URL", "http://user:s3cret@host/")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "s3cret" not in str(info.value)
    assert "BROKER_URL" in str(info.value)


def test_redacted_view_masks_keys_and_url_passwords(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-very-secret")
    clean_env.setenv("DATABASE_URL", "postgresql+psycopg2://app:pw123@db/ultra")
    shown = str(load_settings().redacted())
    assert "sk-very-secret" not in shown and "pw123" not in shown
    assert "postgresql+psycopg2://app:***@db/ultra" in shown


def test_cli_exits_2_with_the_variable_named_on_bad_configuration(tmp_path: Path) -> None:
    env = {**os.environ, "RETRY_MAX_ATTEMPTS": "abc"}
    out = subprocess.run(
        [sys.executable, "-m", "ultra_tasks.cli", "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "RETRY_MAX_ATTEMPTS='abc'" in out.stderr


def test_worker_start_fails_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": "localhost:6379"}
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "ultra_tasks", "worker", "-Q", "ops"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "REDIS_URL='localhost:6379'" in out.stderr
