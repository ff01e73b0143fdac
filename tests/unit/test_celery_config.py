"""The Celery settings that decide correctness (DESIGN.md): no loss, JSON only, strict priority."""

from __future__ import annotations

from ultra_tasks.celery_app import app
from ultra_tasks.config import get_settings


def test_configured_for_no_loss_on_worker_death() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1


def test_json_is_the_only_accepted_serialization() -> None:
    conf = app.conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]


def test_visibility_timeout_exceeds_time_limit_everywhere_kombu_reads_it() -> None:
    conf = app.conf
    vt = get_settings().broker_visibility_timeout
    assert conf.broker_transport_options["visibility_timeout"] == vt
    assert conf.result_backend_transport_options["visibility_timeout"] == vt
    assert conf.visibility_timeout == vt
    assert vt > conf.task_time_limit > conf.task_soft_time_limit


def test_llm_queues_are_polled_in_strict_priority_order_then_ops() -> None:
    conf = app.conf
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert [q.name for q in conf.task_queues] == ["llm.high", "llm.default", "llm.low", "ops"]
    assert conf.task_default_queue == "llm.default"


def test_ops_tasks_route_to_the_ops_queue() -> None:
    route = app.amqp.router.route({}, "ultra.ops.health_check")
    assert route["queue"].name == "ops"


def test_beat_runs_health_checks_on_ops_every_interval() -> None:
    entry = app.conf.beat_schedule["health-check"]
    assert entry["task"] == "ultra.ops.health_check"
    assert entry["schedule"] == get_settings().health_check_interval
    assert entry["options"]["queue"] == "ops"
    app.loader.import_default_modules()  # what a worker does at start
    assert entry["task"] in app.tasks
