"""SDK clients shared out among calling threads: a pool serves a handful of threads, not the whole worker."""

from __future__ import annotations

import threading
from typing import Any

from ultra_tasks.providers.clients import THREADS_PER_CLIENT, ClientShards, shared_tls_context


class _Client:
    def __init__(self, http: dict[str, Any]) -> None:
        self.http = http
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _clients_seen_by(shards: ClientShards[_Client], threads: int) -> list[list[_Client]]:
    seen: list[list[_Client]] = [[] for _ in range(threads)]

    def call(i: int) -> None:
        for _ in range(3):  # a thread keeps the client it was given
            seen[i].append(shards.get())

    pool = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return seen


def test_a_200_thread_pool_gets_one_client_per_eight_threads_each_thread_keeping_its_own() -> None:
    shards: ClientShards[_Client] = ClientShards(_Client, threads=200)
    assert shards.size == 25
    seen = _clients_seen_by(shards, 200)
    assert all(len({id(c) for c in calls}) == 1 for calls in seen)
    per_client: dict[int, int] = {}
    for calls in seen:
        per_client[id(calls[0])] = per_client.get(id(calls[0]), 0) + 1
    assert len(per_client) == 25
    assert max(per_client.values()) == THREADS_PER_CLIENT


def test_clients_are_built_on_first_use_share_one_tls_context_and_all_close() -> None:
    shards: ClientShards[_Client] = ClientShards(_Client, threads=16)
    assert shards.built() == []
    seen = _clients_seen_by(shards, 3)
    built = shards.built()
    assert len(built) == 2  # three threads dealt round robin to two clients
    assert {id(calls[0]) for calls in seen} == {id(c) for c in built}
    assert all(c.http["verify"] is shared_tls_context() for c in built)
    assert all(c.http["limits"].max_keepalive_connections >= THREADS_PER_CLIENT for c in built)
    shards.close()
    assert all(c.closed for c in built) and shards.built() == []


def test_a_single_threaded_caller_uses_one_client() -> None:
    shards: ClientShards[_Client] = ClientShards(_Client, threads=1)
    assert shards.get() is shards.get()
    assert shards.size == 1
