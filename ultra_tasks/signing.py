"""Job messages carry an HMAC of what they ask a worker to do, under a secret producers and workers share.

Whoever can write to the broker (or reach Flower's API, which applies any task by name) could otherwise
make a worker run an unvalidated request on the organisation's API keys. Every message a project process
publishes (a job, a queued operation) is signed over its id and its JSON body; a worker checks the
signature before anything else, refuses (and counts) a message it cannot verify, and never reads the
database or Redis for it first, so an outage changes nothing.

The key is ``ULTRA_SECRET_KEY``; a worker also accepts ``ULTRA_SECRET_KEY_PREVIOUS`` during a rotation
(docs/security.md). Unset, every process on the machine shares a key generated once into
``ULTRA_VAR_DIR/secret.key`` (mode 0600), which suits the local stack and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from ultra_tasks.config import Settings, get_settings

#: the signature's version prefix: a later scheme can be told apart
VERSION = "v1"

_generated: dict[Path, bytes] = {}
_lock = threading.Lock()


def _local_key(var_dir: Path) -> bytes:
    """The machine-local key under ``var_dir``, created once (O_EXCL: two processes starting at once
    agree on one)."""
    path = var_dir / "secret.key"
    with _lock:
        if path in _generated:
            return _generated[path]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_text(encoding="ascii").strip()
        else:
            key = secrets.token_urlsafe(48)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(key + "\n")
        if len(key) < 32:
            # a file another process is writing this very moment, or one cut short: never sign with it
            raise RuntimeError(f"{path} holds no usable key; delete it to generate a new one")
        _generated[path] = key.encode()
        return _generated[path]


def signing_key(settings: Settings | None = None) -> bytes:
    settings = settings or get_settings()
    if settings.ultra_secret_key:
        return settings.ultra_secret_key.encode()
    return _local_key(settings.var_dir)


#: the keys of a settings object (held, so its id stays its own): every job message is verified, and
#: finding the local key resolves a path on disk
_accepted: dict[int, tuple[Settings, list[bytes]]] = {}


def accepted_keys(settings: Settings | None = None) -> list[bytes]:
    settings = settings or get_settings()
    known = _accepted.get(id(settings))
    if known is not None and known[0] is settings:
        return known[1]
    keys = [signing_key(settings)]
    if settings.ultra_secret_key_previous:
        keys.append(settings.ultra_secret_key_previous.encode())
    if len(_accepted) > 16:
        _accepted.clear()
    _accepted[id(settings)] = (settings, keys)
    return keys


def _digest(key: bytes, kind: str, message_id: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    mac = hmac.new(key, f"{kind}\n{message_id}\n{canonical}".encode(), hashlib.sha256)
    return f"{VERSION}:{mac.hexdigest()}"


def sign(kind: str, message_id: str, body: Any, settings: Settings | None = None) -> str:
    """The signature of a ``kind`` message ("job", "operation") with id ``message_id`` and JSON ``body``."""
    return _digest(signing_key(settings), kind, message_id, body)


def verify(kind: str, message_id: str, body: Any, signature: Any, settings: Settings | None = None) -> bool:
    """True if ``signature`` was made by a key this process accepts, over exactly this message."""
    if not isinstance(signature, str) or not signature.startswith(f"{VERSION}:"):
        return False
    try:
        return any(
            hmac.compare_digest(_digest(key, kind, message_id, body), signature)
            for key in accepted_keys(settings)
        )
    except (TypeError, ValueError):  # a body that is not JSON was not signed by us
        return False
