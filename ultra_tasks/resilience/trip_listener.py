"""Trips pushed, not polled: every process drops its cached breaker verdicts the moment a transition is
published.

The breaker's script publishes each transition on the events channel (breaker_script.py). One thread per
process and Redis subscribes to it; on a message it forgets the cached verdict of every breaker of that
name in the process, so the next call asks Redis and sees the trip at once, while the closed path still
costs no Redis round trip. While subscribed, a "closed" verdict is trusted for
CIRCUIT_BREAKER_PUSHED_SYNC_INTERVAL. When the subscription is down (Redis restarting, a network blip)
nothing is pushed: each verdict then expires after CIRCUIT_BREAKER_SYNC_INTERVAL. Once subscribed again
(the server confirmed it), every cached verdict of the process is dropped, since events published
meanwhile were missed. The thread reconnects by itself, logs once per outage and counts the outages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

log = logging.getLogger(__name__)

#: seconds between attempts to subscribe again after the subscription failed
RESUBSCRIBE_S = 1.0


class TripListener(threading.Thread):
    """Subscribes to one Redis' breaker channels and calls ``forget(name)`` for each message (a transition,
    or a closed breaker's first failure), and ``forget(None)`` (every breaker) each time the subscription
    starts."""

    def __init__(
        self, client: redis.Redis, channels: tuple[str, ...], forget: Callable[[str | None], None]
    ) -> None:
        super().__init__(name="breaker-trip-listener", daemon=True)
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # its own connection, without the shared client's short read timeout: it waits for messages
        kwargs.update(socket_timeout=None, health_check_interval=30)
        if pool.connection_class is redis.Connection:
            kwargs["socket_keepalive"] = True
        self._client = redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
        self.channels, self._forget = channels, forget
        self.subscribed = threading.Event()
        self.outages = 0

    def run(self) -> None:
        down_since: float | None = None
        while True:
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(*self.channels)
                # only once the server confirms are events delivered: a verdict cached before that may
                # have missed one
                for _ in self.channels:
                    confirmed = pubsub.get_message(timeout=5.0)
                    if confirmed is None or confirmed.get("type") != "subscribe":
                        raise redis.ConnectionError("the breaker events subscription was not confirmed")
                self._forget(None)
                self.subscribed.set()
                if down_since is not None:
                    lost_for = time.monotonic() - down_since
                    log.info("breaker events subscription restored after %.1fs", lost_for)
                    down_since = None
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._handle(message.get("data"))
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                with contextlib.suppress(Exception):  # its connection is dead or unconfirmed anyway
                    pubsub.close()
                if down_since is None:
                    down_since = time.monotonic()
                    self.outages += 1
                    log.warning(
                        "breaker events subscription lost (%s); trips reach this process within "
                        "CIRCUIT_BREAKER_SYNC_INTERVAL until it is back",
                        exc,
                    )
                time.sleep(RESUBSCRIBE_S)

    def _handle(self, data: Any) -> None:
        try:
            name = json.loads(data)["name"]
        except (TypeError, ValueError, KeyError):
            return  # not one of ours: ignore
        self._forget(str(name))


_listeners: dict[tuple[Any, ...], TripListener] = {}
_lock = threading.Lock()
_pid = os.getpid()


def ensure_listener(
    client: redis.Redis, channels: tuple[str, ...], breakers: Callable[[], Iterable[Any]]
) -> TripListener:
    """The process's listener for ``client``'s Redis and ``channels``, started on first use. ``breakers``
    returns the live breakers of the process (each has ``name`` and ``forget_verdict()``)."""
    global _pid
    kwargs = client.connection_pool.connection_kwargs
    key = (kwargs.get("host"), kwargs.get("port"), kwargs.get("db"), kwargs.get("path"), channels)
    with _lock:
        if os.getpid() != _pid:  # a forked child: its parent's threads did not come along
            _listeners.clear()
            _pid = os.getpid()
        listener = _listeners.get(key)
        if listener is None:

            def forget(name: str | None) -> None:
                for breaker in list(breakers()):
                    if name is None or breaker.name == name:
                        breaker.forget_verdict()

            listener = _listeners[key] = TripListener(client, channels, forget)
            listener.start()
    return listener
