"""Celery settings for ultra-tasks, built from the typed settings (environment driven).

The choices that decide correctness (see DESIGN.md):
- no loss on worker death: acks late, reject on worker lost, prefetch 1;
- the visibility timeout exceeds the job time limit, in every place kombu reads it;
- strict priority across the LLM queues: kombu's Redis transport polls queues round robin unless told
  ``queue_order_strategy="priority"``, and then polls them in the order of ``task_queues`` below;
- JSON only: a tampered message can never execute code.
"""

from __future__ import annotations

from beat_schedule import build_schedule
from ultra_tasks import broker
from ultra_tasks.config import get_settings
from ultra_tasks.keys import QUEUE_OPS
from ultra_tasks.providers.deployments import catalog

_s = get_settings()
# a bad deployments file stops every process of the app at start, naming the file, the entry and the field
catalog(_s)

broker_url = _s.effective_broker_url
result_backend = _s.effective_result_backend_url

# --- serialization: JSON only
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
event_serializer = "json"

# --- no loss
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# A job running when the broker connection drops finishes; its ack is lost, the broker redelivers it, and
# the redelivery finds the job claimed or done (runs are idempotent by job id), so it never runs twice in
# parallel. Cancelling it instead cannot work on our threads pools: Celery then calls the pool's kill_job,
# which the threads pool lacks, and the consumer died with "Unrecoverable error: NotImplementedError"
# while the process lived on (caught by tests/chaos: a Redis restart left 95 of 150 jobs queued).
worker_cancel_long_running_tasks_on_connection_loss = False
broker_connection_retry_on_startup = True
task_time_limit = _s.job_time_limit
task_soft_time_limit = _s.effective_soft_time_limit

_transport_options = {
    "visibility_timeout": _s.broker_visibility_timeout,
    "queue_order_strategy": "priority",
    # Flower reads queue lengths with these; keep them identical everywhere (kombu's defaults, made explicit).
    "priority_steps": [0, 3, 6, 9],
    "sep": "\x06\x16",
}
broker_transport_options = _transport_options
result_backend_transport_options = {"visibility_timeout": _s.broker_visibility_timeout}
visibility_timeout = _s.broker_visibility_timeout
# queued operations (PersistentRequestQueue) only: an LLM job stores nothing here, its row is the result
result_expires = _s.job_result_ttl
result_extended = False  # the job table keeps the request; no second copy of prompts in Redis

# --- queues: LLM jobs in strict priority order, then ops (on RabbitMQ, one native-priority queue for the
# LLM levels: ultra_tasks/broker.py says why)
task_queues = broker.task_queues(_s)
task_default_queue = broker.default_queue(_s)
task_default_exchange = broker.EXCHANGE
task_default_routing_key = "llm.default"
task_routes = {"ultra.ops.*": {"queue": QUEUE_OPS, "routing_key": QUEUE_OPS}}
task_create_missing_queues = False

# --- observability: task events cost several broker round trips per task, so workers send them only while
# someone watches: Flower switches them on at start (its --enable_events default) and keeps them on.
worker_send_task_events = False
task_send_sent_event = False
worker_hijack_root_logger = False

# --- beat
beat_schedule = build_schedule(_s)
timezone = "UTC"
enable_utc = True
