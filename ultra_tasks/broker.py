"""Which broker carries the queues, and what that changes. Everything that depends on it is here.

- **Redis** (the default; ``BROKER_URL`` unset or ``redis://``): one Redis list per queue, ``llm.high``,
  ``llm.default``, ``llm.low`` and ``ops``; workers poll the three LLM queues in that strict order
  (``queue_order_strategy="priority"``).
- **RabbitMQ** (``BROKER_URL=amqp://...``): a consumer of several AMQP queues is pushed messages from all of
  them at once, so three queues could not be consumed in strict order. Instead the three priorities are
  routing keys into one queue, ``llm``, declared with RabbitMQ's native priorities
  (``x-max-priority``): a job's message carries its level as priority (high 3, default 2, low 1) and
  RabbitMQ hands out the highest first. Producers, the sweeper and the starvation guard still name
  ``llm.high`` / ``llm.default`` / ``llm.low``; workers consume ``llm`` and ``ops``. Unacknowledged messages
  of a worker that dies return to the queue when its connection closes (no visibility timeout); keep
  RabbitMQ's ``consumer_timeout`` (30 min by default) above ``JOB_TIME_LIMIT``.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue, binding

from ultra_tasks.config import Settings, get_settings
from ultra_tasks.keys import LLM_QUEUES, QUEUE_DEFAULT, QUEUE_OPS

EXCHANGE = "ultra"
#: RabbitMQ: the one queue the three LLM priorities are routed into
AMQP_LLM_QUEUE = "llm"
#: RabbitMQ message priority of each LLM level (higher first)
AMQP_PRIORITY = {"llm.high": 3, "llm.default": 2, "llm.low": 1}
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_amqp(settings: Settings | None = None) -> bool:
    return (settings or get_settings()).effective_broker_url.startswith(AMQP_SCHEMES)


def task_queues(settings: Settings) -> list[Queue]:
    """The queues Celery declares and consumes, in the order the workers poll them."""
    exchange = Exchange(EXCHANGE, type="direct")
    ops = Queue(QUEUE_OPS, exchange, routing_key=QUEUE_OPS)
    if is_amqp(settings):
        llm = Queue(
            AMQP_LLM_QUEUE,
            exchange,
            bindings=[binding(exchange, routing_key=name) for name in LLM_QUEUES],
            queue_arguments={"x-max-priority": max(AMQP_PRIORITY.values())},
        )
        return [llm, ops]
    return [*(Queue(name, exchange, routing_key=name) for name in LLM_QUEUES), ops]


def default_queue(settings: Settings) -> str:
    return AMQP_LLM_QUEUE if is_amqp(settings) else QUEUE_DEFAULT


def consumed_queues(queues: tuple[str, ...] | list[str], settings: Settings | None = None) -> list[str]:
    """The broker queues a worker consumes to serve the given logical queues."""
    if not is_amqp(settings):
        return list(queues)
    out: list[str] = []
    for name in queues:
        physical = AMQP_LLM_QUEUE if name in LLM_QUEUES else name
        if physical not in out:
            out.append(physical)
    return out


def publish_options(queue: str, settings: Settings | None = None) -> dict[str, Any]:
    """``send_task`` options that put a message on logical queue ``queue``."""
    if is_amqp(settings) and queue in LLM_QUEUES:
        return {"exchange": EXCHANGE, "routing_key": queue, "priority": AMQP_PRIORITY[queue]}
    return {"queue": queue, "routing_key": queue}


def amqp_depths() -> dict[str, int]:
    """Messages waiting in each RabbitMQ queue (``llm``, ``ops``), by passive declare: the broker's count
    of ready messages, not those a worker holds unacknowledged."""
    from ultra_tasks.celery_app import app

    out: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for name in (AMQP_LLM_QUEUE, QUEUE_OPS):
            try:
                out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except Exception as exc:  # a queue no worker has declared yet holds nothing
                if "NOT_FOUND" not in str(exc) and "404" not in str(exc):
                    raise
                channel = conn.channel()  # a failed passive declare closes the channel
                out[name] = 0
    return out
