"""The SDK clients of one provider, shared out among the threads that call it.

Why not one client per provider: httpcore's connection pool admits every request under one lock and, each
time a request starts or ends, walks all its connections (probing each idle one's socket). With one client
shared by a 200-thread worker, calls queue on that lock longer than they wait for the provider, and most
threads sit in ``ConnectionPool.handle_request`` (docs/benchmarks.md). So each calling thread is given one
of ``ceil(threads / THREADS_PER_CLIENT)`` clients for its life, and a pool serves a handful of threads.

Why one TLS context for all: building one loads the CA bundle, the largest part of building a client.
Built as the SDKs build theirs (``verify=True``, honouring SSL_CERT_FILE / SSL_CERT_DIR).
"""

from __future__ import annotations

import functools
import itertools
import math
import ssl
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

#: threads sharing one SDK client (and its connection pool)
THREADS_PER_CLIENT = 8

C = TypeVar("C")


def _httpx() -> Any:
    try:
        import httpx2 as httpx  # the transport of current SDK releases
    except ImportError:  # pragma: no cover - older SDK releases are built on httpx
        import httpx  # type: ignore[no-redef]
    return httpx


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """The process's TLS context for provider clients (default verification, environment CA overrides)."""
    return _httpx().create_ssl_context()


def http_client_options(threads: int) -> dict[str, Any]:
    """Keyword arguments for an SDK's ``DefaultHttpxClient`` serving ``threads`` threads: one kept-alive
    connection per thread (the SDKs' default keeps 100 for all, so a larger burst would reconnect), no cap
    below what the threads can ask for, and the shared TLS context."""
    size = max(THREADS_PER_CLIENT, threads)
    limits = _httpx().Limits(max_connections=max(1000, size), max_keepalive_connections=size)
    return {"limits": limits, "verify": shared_tls_context()}


class ClientShards(Generic[C]):
    """``get()`` returns the calling thread's client, built on first use by ``build(http_client_options)``.

    Threads are dealt round robin to ``ceil(threads / THREADS_PER_CLIENT)`` clients, so a worker whose
    pool has ``threads`` threads puts at most THREADS_PER_CLIENT on each (other callers, a producer's
    threads say, share them the same way)."""

    def __init__(self, build: Callable[[dict[str, Any]], C], threads: int) -> None:
        # built now, with the provider: later its cost would fall on the first call, after that call was
        # granted its rate-limit slot
        shared_tls_context()
        self._build = build
        self._count = max(1, math.ceil(threads / THREADS_PER_CLIENT))
        self._clients: list[C | None] = [None] * self._count
        self._dealt = itertools.count()
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._count

    def get(self) -> C:
        index = getattr(self._local, "index", None)
        if index is None:
            index = self._local.index = next(self._dealt) % self._count
        client = self._clients[index]
        if client is None:
            with self._lock:
                client = self._clients[index]
                if client is None:
                    # room for callers beyond the pool's own threads (a producer's, say) without reconnecting
                    client = self._clients[index] = self._build(http_client_options(2 * THREADS_PER_CLIENT))
        return client

    def built(self) -> list[C]:
        return [c for c in self._clients if c is not None]

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self.built(), [None] * self._count
        for client in clients:
            client.close()  # type: ignore[attr-defined]
