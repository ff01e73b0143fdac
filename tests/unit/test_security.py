"""Exposure checks and redaction (ultra_tasks.security, ultra_tasks.redaction): which addresses count as
loopback, which guard each service needs beyond it, and secrets masked in settings, text and log lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from ultra_tasks.config import is_secret_field, load_settings
from ultra_tasks.errors import ConfigurationError
from ultra_tasks.providers.fake_server import FakeProviderServer
from ultra_tasks.redaction import install_log_redaction, known_secrets, redact_text, redact_url
from ultra_tasks.security import (
    check_api_exposure,
    check_fake_provider_exposure,
    check_flower_exposure,
    check_status_exposure,
    is_loopback,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "flower"])
def test_every_interface_private_addresses_and_names_count_as_beyond_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_the_http_api_beyond_loopback_needs_tls_or_a_declared_tls_proxy_naming_the_setting() -> None:
    check_api_exposure("127.0.0.1", None, None)  # loopback: keys never leave the machine
    with pytest.raises(ConfigurationError, match="API_TLS_CERTFILE"):
        check_api_exposure("0.0.0.0", None, None)
    with pytest.raises(ConfigurationError, match="set both"):
        check_api_exposure("0.0.0.0", "cert.pem", None)
    check_api_exposure("0.0.0.0", "cert.pem", "key.pem")
    check_api_exposure("10.0.0.5", None, None, behind_tls_proxy=True)


@pytest.mark.parametrize("auth", ["ultra:ultra", "admin:ultra", "admin: ", "ops:long-and-own,ultra:ultra"])
def test_flower_beyond_loopback_refuses_default_or_empty_passwords_naming_the_setting(auth: str) -> None:
    with pytest.raises(ConfigurationError, match="FLOWER_BASIC_AUTH") as caught:
        check_flower_exposure("0.0.0.0", auth)
    assert "long-and-own" not in str(caught.value)  # no password is echoed
    check_flower_exposure("127.0.0.1", auth)  # the local stack's defaults are fine on loopback


def test_flower_beyond_loopback_accepts_credentials_of_its_own() -> None:
    check_flower_exposure("0.0.0.0", "admin:correct-horse-battery")


def test_status_server_beyond_loopback_needs_a_token_naming_STATUS_TOKEN() -> None:
    for token in (None, "", "  "):
        with pytest.raises(ConfigurationError, match="STATUS_TOKEN"):
            check_status_exposure("0.0.0.0", token)
    check_status_exposure("0.0.0.0", "a-token")
    check_status_exposure("127.0.0.1", None)


def test_fake_provider_refuses_to_bind_beyond_loopback_unless_allowed() -> None:
    with pytest.raises(ConfigurationError, match="--allow-remote"):
        FakeProviderServer("0.0.0.0")  # refused before anything binds
    check_fake_provider_exposure("0.0.0.0", allow_remote=True)


def test_settings_named_like_secrets_are_secret_and_others_are_not() -> None:
    for name in ("ULTRA_SECRET_KEY", "ultra_secret_key_previous", "status_token", "openai_api_key"):
        assert is_secret_field(name), name
    for name in ("redis_url", "cache_disk_dir", "circuit_breaker_failure_threshold", "flower_port"):
        assert not is_secret_field(name), name


def test_redacted_settings_mask_passwords_in_lists_and_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://ro:pw-one@r1/db,postgresql://ro:pw-two@r2/db")
    monkeypatch.setenv("STATUS_TOKEN", "tok-secret-value")
    monkeypatch.setenv("CACHE_REDIS_URL", "redis://:pw-three@cache:6379/1")
    shown = load_settings().redacted()
    assert shown["DATABASE_REPLICA_URLS"] == ["postgresql://ro:***@r1/db", "postgresql://ro:***@r2/db"]
    assert shown["STATUS_TOKEN"] == "***"
    assert shown["CACHE_REDIS_URL"] == "redis://:***@cache:6379/1"
    assert "pw-" not in str(shown) and "tok-secret" not in str(shown)


def test_a_bad_replica_list_is_reported_without_its_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://ro:pw-one@r1/db,not a url://x:pw-two@y")
    with pytest.raises(ConfigurationError, match="DATABASE_REPLICA_URLS") as caught:
        load_settings()
    assert "pw-one" not in str(caught.value) and "pw-two" not in str(caught.value)


def test_redact_url_masks_several_urls_and_secret_query_values_in_free_text() -> None:
    text = (
        "replicas postgresql+psycopg2://app:p/ss:w0rd@db1/x,redis://:r3d1s@h:6379/0 "
        "hook https://hooks.example/T?token=abc123&x=1&api_key=k3y sentinel://:s1@a:26379;sentinel://:s2@b"
    )
    masked = redact_url(text)
    for secret in ("p/ss", "w0rd", "r3d1s", "abc123", "k3y", ":s1@", ":s2@"):
        assert secret not in masked, secret
    assert "postgresql+psycopg2://app:***@db1/x" in masked and "redis://:***@h:6379/0" in masked
    assert "?token=***&x=1&api_key=***" in masked
    assert redact_url("http://127.0.0.1:8088/status.json") == "http://127.0.0.1:8088/status.json"


def test_secret_setting_values_are_masked_in_text_but_short_ones_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "admin:flower-pass-42,ops:short")
    secrets = known_secrets(load_settings())
    text = redact_text("key sk-live-0123456789 and flower-pass-42; short stays short", secrets)
    assert text == "key *** and ***; short stays short"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    logger = logging.getLogger("ultra-test-redaction")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_log_lines_and_tracebacks_never_carry_url_passwords_or_secret_settings(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    install_log_redaction(logger, secrets=["status-token-0123456789"])
    child = logging.getLogger("ultra-test-redaction.child")  # propagated records pass the handler too
    child.warning("replica %s down", "postgresql://ro:hunter2@replica/db")
    try:
        raise RuntimeError("bearer status-token-0123456789 refused")
    except RuntimeError:
        logger.exception("connect to %s failed", "redis://:r3d1s@cache:6379/0")
    out = stream.getvalue()
    assert "hunter2" not in out and "r3d1s" not in out and "status-token-0123456789" not in out
    assert "postgresql://ro:***@replica/db" in out and "bearer *** refused" in out


def test_worker_and_beat_logs_mask_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    from celery.signals import after_setup_logger

    import ultra_tasks.celery_app  # noqa: F401 - connects the log set-up handlers
    from ultra_tasks.config import reset_settings

    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789abcdef")
    reset_settings()
    stream = io.StringIO()
    logger = logging.getLogger(f"celery-test-{id(stream)}")
    logger.addHandler(logging.StreamHandler(stream))
    logger.propagate = False
    # Celery sends this once it has configured a worker's (or beat's) logging
    after_setup_logger.send(
        sender=None, logger=logger, loglevel=logging.INFO, logfile=None, format="", colorize=False
    )
    logger.error("provider refused key sk-live-0123456789abcdef at postgresql://u:hunter2secret@db/x")
    written = stream.getvalue()
    assert "sk-live-0123456789abcdef" not in written and "hunter2secret" not in written
    assert "provider refused key" in written


def test_a_masked_record_keeps_its_arguments_for_formatters_that_read_them(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    # uvicorn's access formatter unpacks record.args (client, method, path, version, status)
    logger, stream = captured

    class ArgsFormatter(logging.Formatter):
        def formatMessage(self, record: logging.LogRecord) -> str:
            _client, method, path, _version, status = record.args  # type: ignore[misc]
            return f"{method} {path} {status}"

    logger.handlers[0].setFormatter(ArgsFormatter())
    install_log_redaction(logger, secrets=["status-token-0123456789"])
    logger.warning(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/v1/files/status-token-0123456789", "1.1", 404
    )
    assert stream.getvalue().strip() == "GET /v1/files/*** 404"
