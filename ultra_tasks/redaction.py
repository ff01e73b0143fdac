"""Masking secrets wherever settings or errors are shown: `ultra config`, the status page and its JSON, the
fleet's metrics labels and log lines.

Three things are masked: the password of every URL (``scheme://user:***@host``, also several URLs in one
string and URLs inside free text), the value of query parameters whose name says secret
(``?token=***``), and the literal value of every secret setting (API keys, FLOWER_BASIC_AUTH's passwords,
STATUS_TOKEN, ULTRA_SECRET_KEY...) wherever it appears. Literal values shorter than ``MIN_LITERAL_CHARS``
are not searched for: masking a short word everywhere would mangle the text and a secret that short is
no secret; the places that hold such a value mask it by name instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
#: shortest secret value searched for (and masked) in free text
MIN_LITERAL_CHARS = 8

# scheme://user:password@ (user may be empty: redis://:pw@host); the password may not hold "://", so two
# URLs in one string are masked one by one
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):(?P<password>(?:(?!://)[^\s@])+)@"
)
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&;](?:[^=&;#\s]*(?:token|key|secret|password|passwd|pwd|signature|sig|auth)[^=&;#\s]*)=)"
    r"(?P<value>[^&;#\s]+)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` (or any text holding URLs) with every URL password and secret query value masked."""
    if "://" not in url:
        return url
    masked = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", url)
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}{MASK}", masked)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, secret query values and the literal ``secrets`` masked."""
    text = redact_url(text)
    # longest first, so a secret that contains another is masked whole
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_LITERAL_CHARS and secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``value`` (str, or lists, tuples and dicts of them, nested) with every string redacted."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {redact_value(k, secrets): redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v, secrets) for v in value)
    return value


def known_secrets(settings: Any = None) -> tuple[str, ...]:
    """The literal secret values of ``settings`` (default: the process's), to search for in free text."""
    from ultra_tasks.config import get_settings, is_secret_field

    settings = settings if settings is not None else get_settings()
    found: set[str] = set()
    for name, value in settings.model_dump().items():
        if not is_secret_field(name) or not value:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            text = str(item)
            found.add(text)
            if name == "flower_basic_auth":  # user:password[,user:password]
                found.update(pair.partition(":")[2] for pair in text.split(","))
    found.update(_deployment_keys(settings))
    return tuple(s for s in found if len(s) >= MIN_LITERAL_CHARS)


def _deployment_keys(settings: Any) -> tuple[str, ...]:
    """The keys the deployments file resolved (``env:`` references and literals alike)."""
    from ultra_tasks.errors import ConfigurationError
    from ultra_tasks.providers.deployments import catalog

    try:
        return catalog(settings).secrets()
    except ConfigurationError:  # a bad file stops start-up elsewhere, naming what is wrong
        return ()


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before any handler formats it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)
        self._formatter = logging.Formatter()

    def _masked(self, record: logging.LogRecord, clean: str) -> tuple[Any, Any]:
        """(msg, args) of the masked record: the arguments masked one by one when that gives the same
        text, so formatters that read ``record.args`` (uvicorn's access log) still find them; else the
        whole message, with no arguments."""
        if isinstance(record.msg, str) and isinstance(record.args, tuple):
            msg = redact_text(record.msg, self.secrets)
            args = tuple(redact_text(a, self.secrets) if isinstance(a, str) else a for a in record.args)
            try:
                if msg % args == clean:
                    return msg, args
            except (TypeError, ValueError):
                pass
        return clean, None

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's to report, unchanged
            return True
        clean = redact_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = self._masked(record, clean)
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        return True


def install_log_redaction(logger: logging.Logger | None = None, secrets: Iterable[str] | None = None) -> None:
    """Add a RedactingFilter to every handler of ``logger`` (default: the root logger), once.

    Handler filters, not logger filters: records propagated from child loggers pass only the former.
    """
    logger = logger or logging.getLogger()
    chosen = tuple(secrets) if secrets is not None else known_secrets()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(chosen))
