"""A workaround for one upstream regression, applied when the Celery app is imported.

celery 5.7.0 / kombu 5.7.0: when a worker loses its Redis broker connection, the consumer first collects
the connection, then closes it. Closing a Redis channel restores its unacknowledged deliveries, which
needs the connection that was just collected: ``_connparams`` raises ``AttributeError`` ('NoneType' object
has no attribute 'hostname'), which ``ignore_errors`` does not ignore, and the consumer dies with
"Unrecoverable error" while the process, its threads and its liveness key live on: the worker never takes
another job (tests/chaos: a Redis restart left most jobs queued).

Older releases (5.6.x) reconnect, but their threads pool acknowledges a finished task only when the event
loop next wakes, up to seconds later: with the prefetch window full, a worker took 11 jobs/s instead of
175 (scripts/bench_throughput.py). So 5.7 is required, and this patch lets the consumer reconnect.

What the patch gives up: the deliveries that channel held are not put back at once. They stay in kombu's
unacked set, from which any consumer restores them after the visibility timeout, and the sweeper
republishes a published job that never started once its queue drains (jobs/queue.py), so none is lost.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)


def tolerate_collected_connection_on_restore() -> None:
    from kombu.transport import redis as kombu_redis

    restore = kombu_redis.QoS.restore_unacked
    if getattr(restore, "_ultra_tolerant", False):
        return

    @functools.wraps(restore)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return restore(self, client)
        except AttributeError as exc:  # the channel's connection was collected (see the module docstring)
            log.warning(
                "%d unacknowledged deliveries not restored at once (broker connection already "
                "collected: %s); they return after the visibility timeout or with the sweeper",
                len(self._delivered),
                exc,
            )
            return None

    restore_unacked._ultra_tolerant = True  # type: ignore[attr-defined]
    setattr(kombu_redis.QoS, "restore_unacked", restore_unacked)  # noqa: B010 - patching a method
