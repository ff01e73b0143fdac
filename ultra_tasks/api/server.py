"""Serve the API on uvicorn, secure by default: loopback unless TLS (or a TLS proxy) guards the keys."""

from __future__ import annotations

import copy
import logging
import logging.config
from typing import Any

from ultra_tasks.config import Settings, get_settings
from ultra_tasks.redaction import RedactingFilter, known_secrets
from ultra_tasks.security import check_api_exposure

log = logging.getLogger(__name__)


def log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging with a secret-masking filter on each of its handlers (the access log shows
    request paths, which a client may fill with anything), and the project's own loggers written through
    its default handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactingFilter, "secrets": known_secrets(settings)}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    config["root"] = {"handlers": ["default"], "level": settings.log_level.upper()}
    return config


def serve(host: str, port: int, *, behind_tls_proxy: bool = False, settings: Settings | None = None) -> None:
    """Run the API until interrupted (ConfigurationError before binding when the exposure is unsafe)."""
    import uvicorn

    from ultra_tasks.api.app import create_app

    settings = settings or get_settings()
    check_api_exposure(
        host, settings.api_tls_certfile, settings.api_tls_keyfile, behind_tls_proxy=behind_tls_proxy
    )
    config = log_config(settings)
    logging.config.dictConfig(config)
    scheme = "https" if settings.api_tls_certfile else "http"
    log.info("HTTP API on %s://%s:%d (OpenAPI page at /docs)", scheme, host, port)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        limit_concurrency=settings.api_max_connections,
        ssl_certfile=str(settings.api_tls_certfile) if settings.api_tls_certfile else None,
        ssl_keyfile=str(settings.api_tls_keyfile) if settings.api_tls_keyfile else None,
        # the access log names paths and statuses only: keys travel in headers, which it does not show
        access_log=True,
        log_config=config,
        log_level=settings.log_level.lower(),
        proxy_headers=behind_tls_proxy,
    )
