"""A workaround for one upstream regression, applied when the Celery app is imported.

celery 5.7.0 / kombu 5.7.0: when a worker loses its Redis broker connection, the consumer first collects
the connection, then closes it. From then on, anything a channel of the old connection still does that
needs a Redis client (restoring its unacknowledged deliveries on close, acknowledging a task that
finished meanwhile) fails in ``_connparams`` with ``AttributeError`` ('NoneType' object has no attribute
'hostname' / 'client'). That is not a connection error, so neither ``ignore_errors`` nor ``ack_log_error``
absorbs it, and the consumer dies with "Unrecoverable error" while the process, its threads and its
heartbeat live on: the worker never takes another job (tests/chaos: after a Redis restart, or a broker
outage, most jobs would stay queued).

Releases 5.6.x reconnect, but their threads pool acknowledges a finished task only when the event loop
next wakes, up to seconds later, so a worker with a full prefetch window mostly waits (docs/benchmarks.md
has the measured rates). So 5.7 is required, and this module turns the collected connection
into what it is, a connection error, which Celery already handles:

- a channel whose connection was collected raises ``redis.ConnectionError`` when it needs a client, so a
  late ack is logged as not acknowledged (the broker redelivers it; the rerun finds the job done);
- restoring that channel's unacknowledged deliveries on close is skipped with a warning, so the close
  completes. Those deliveries stay in kombu's unacked set, from which a consumer restores them after the
  visibility timeout, and the sweeper republishes a published job that never started once its queue
  drains (jobs/queue.py): none is lost.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)


def tolerate_collected_broker_connection() -> None:
    import redis
    from kombu.transport import redis as kombu_redis

    connparams = kombu_redis.Channel._connparams
    if getattr(connparams, "_ultra_tolerant", False):
        return

    @functools.wraps(connparams)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.exceptions.ConnectionError("the broker connection of this channel was closed")
        return connparams(self, *args, **kwargs)

    restore = kombu_redis.QoS.restore_unacked

    @functools.wraps(restore)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return restore(self, client)
        except redis.exceptions.ConnectionError as exc:
            log.warning(
                "%d unacknowledged deliveries not restored at once (%s); they return after the "
                "visibility timeout or with the sweeper",
                len(self._delivered),
                exc,
            )
            return None

    _connparams._ultra_tolerant = True  # type: ignore[attr-defined]
    setattr(kombu_redis.Channel, "_connparams", _connparams)  # noqa: B010 - patching a method
    setattr(kombu_redis.QoS, "restore_unacked", restore_unacked)  # noqa: B010 - patching a method
