"""The process-wide Redis clients of ultra-tasks' own state (breakers, modes, limits, quotas, queues).

Short timeouts: a Redis that does not answer must cost a caller half a second, not minutes, and then the
component's stated policy applies. (The cache keeps a client of its own, without response decoding, so a
corrupt binary entry is read as bytes and dropped rather than failing the decode.)
"""

from __future__ import annotations

import threading

import redis
from redis._parsers.base import BaseParser

from ultra_tasks.config import get_settings


class RedisMisconfError(redis.ResponseError):
    """``MISCONF``: Redis refuses writes because it cannot persist (a full disk under RDB or AOF)."""


# redis-py maps OOM, READONLY, LOADING and MASTERDOWN replies to classes of their own but leaves MISCONF a
# plain ResponseError; registering it lets ``except REDIS_DOWN`` catch it like the others.
BaseParser.EXCEPTION_CLASSES.setdefault("MISCONF", RedisMisconfError)

#: errors that mean Redis cannot serve the project now, whatever the command: unreachable, or answering
#: but refusing work (out of memory under noeviction, a read-only replica after a failover, loading its
#: data set, unable to persist). Every component's "Redis is down" policy applies to all of them; a script
#: or command error (WRONGTYPE, NOSCRIPT, a syntax error) is a bug, and is raised.
REDIS_DOWN = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    RedisMisconfError,
)
#: seconds to connect or to wait for an answer
SOCKET_TIMEOUT_S = 0.5

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def shared_redis(url: str | None = None) -> redis.Redis:
    """One client (and connection pool) per URL per process; REDIS_URL by default."""
    url = url or get_settings().redis_url
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(
                    url,
                    socket_timeout=SOCKET_TIMEOUT_S,
                    socket_connect_timeout=SOCKET_TIMEOUT_S,
                    decode_responses=True,
                )
    return client
