"""kombu's Redis transport, with one change: reuse the channel's synchronous Redis client.

kombu builds a new ``redis.Redis`` object for every acknowledgement and every unacked-message bookkeeping
write. With redis-py 5+ each construction copies the client's ~200 response callbacks, which made up about
a third of a busy worker's CPU in scripts/bench_throughput.py (py-spy). A ``redis.Redis`` object is
thread-safe (each command borrows a connection from the shared pool; pipelines are still made per call), so
one client per channel does the same work without the rebuilding.

Selected in celeryconfig.py for redis:// and rediss:// broker URLs.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client is None:
            self._sync_client = super()._create_client(asynchronous=False)
        return self._sync_client


class RedisTransport(kombu_redis.Transport):
    Channel = Channel
