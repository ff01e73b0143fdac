"""The queues as the fleet holds them: messages waiting on the broker, and jobs parked in Redis.

Two readers, because they are two stores: the broker may be a Redis of its own, or RabbitMQ.
"""

from __future__ import annotations

import redis

from ultra_tasks.broker import is_amqp
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs.stats import parked_depths, queue_depths


def read_queue_depths(broker: redis.Redis | None) -> dict[str, int]:
    """Messages waiting per queue: ``llm.high``, ``llm.default``, ``llm.low``, ``ops`` on a Redis broker;
    ``llm`` (its three levels share one native-priority queue) and ``ops`` on RabbitMQ."""
    if broker is None and not is_amqp():
        raise DependencyUnavailableError(
            "broker", "queue depths are read from a Redis or RabbitMQ broker only"
        )
    return queue_depths(broker)


def read_parked(client: redis.Redis) -> dict[str, int]:
    """Jobs parked off each LLM queue, holding no worker slot."""
    return parked_depths(client)
