"""Fleet-wide job metrics, recorded by the workers: a latency histogram per provider and model, finished
jobs per status, and how often fallbacks were needed and served.

``ultra_tasks/celery_app.py`` imports this module, which connects a ``task_postrun`` handler: every
finished ``ultra.run_job`` outcome (the dict the task returns: provider, model, latency_ms, status, cached,
fallback_used) is added to in-process counters, which the metrics buffer sends to Redis hashes with
batched HINCRBY (at most once a second, and at worker shutdown). The fleet reader (fleet/jobs.py) reads
those hashes at scrape time, so one endpoint shows the whole fleet.

Hash fields are JSON label lists, so any model name is a safe field.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.signals import task_postrun, worker_process_shutdown, worker_shutdown

from ultra_tasks import keys
from ultra_tasks.metrics.buffer import BUFFER, MetricsBuffer
from ultra_tasks.model_names import tracked_model

log = logging.getLogger(__name__)

#: the task whose outcomes are measured
JOB_TASK = "ultra.run_job"
#: upper bounds of the latency histogram buckets (seconds); +Inf is implied
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: statuses of a finished job (a deferred or duplicate run is not an outcome: it raises Retry / Ignore)
FINAL_STATUSES = ("succeeded", "failed", "expired")


def field(*labels: str) -> str:
    return json.dumps(list(labels), separators=(",", ":"), ensure_ascii=False)


def bucket_label(bound: float) -> str:
    """The ``le`` label of a bucket, as Prometheus clients print it."""
    return repr(float(bound))


def record_job_outcome(
    outcome: dict[str, Any], requested_model: str | None = None, *, buffer: MetricsBuffer = BUFFER
) -> None:
    """Count one finished job (an ``execute_job`` outcome); other outcomes are ignored."""
    status = outcome.get("status")
    if status not in FINAL_STATUSES:
        return
    # label values are bounded: names beyond the fleet's cap of tracked models count under "other"
    model_asked = tracked_model(str(requested_model or outcome.get("model") or "unknown"))
    jobs_key = keys.metrics_jobs()
    buffer.incr(jobs_key, field("finished", str(status), model_asked))
    fallback_used = bool(outcome.get("fallback_used"))
    if status == "failed":
        # the primary did not answer; past it, a fallback was tried when attempts name two or more entries
        buffer.incr(jobs_key, field("primary_failures", model_asked))
        attempts = (outcome.get("error") or {}).get("attempts") or []
        entries = {a.get("entry") for a in attempts if isinstance(a, dict)}
        if len(entries) > 1:
            buffer.incr(jobs_key, field("fallback_invocations", model_asked))
        return
    if status != "succeeded":
        return
    latency_s = max(0.0, float(outcome.get("latency_ms") or 0.0) / 1000.0)
    if fallback_used:
        buffer.incr(jobs_key, field("primary_failures", model_asked))
        buffer.incr(jobs_key, field("fallback_invocations", model_asked))
        buffer.incr(jobs_key, field("fallback_successes", model_asked))
        buffer.incr_float(jobs_key, field("fallback_latency_sum", model_asked), latency_s)
    labels = (
        str(outcome.get("provider") or "unknown"),
        tracked_model(str(outcome.get("model") or "unknown")),
        "true" if outcome.get("cached") else "false",
    )
    hist_key = keys.metrics_job_latency()
    for bound in LATENCY_BUCKETS_S:
        if latency_s <= bound:
            buffer.incr(hist_key, field(*labels, bucket_label(bound)))
            break
    buffer.incr(hist_key, field(*labels, "count"))
    buffer.incr_float(hist_key, field(*labels, "sum"), latency_s)


@task_postrun.connect
def _on_task_postrun(
    sender: Any = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    retval: Any = None,
    **_: Any,
) -> None:
    if getattr(task or sender, "name", None) != JOB_TASK or not isinstance(retval, dict):
        return
    try:
        payload = (args[1] if args and len(args) > 1 else (kwargs or {}).get("payload")) or {}
        record_job_outcome(retval, payload.get("model") if isinstance(payload, dict) else None)
    except Exception:  # metrics must never fail a job
        log.exception("could not record the metrics of a job outcome")


@worker_shutdown.connect
@worker_process_shutdown.connect
def _flush_on_shutdown(**_: Any) -> None:
    # prefork children leave with os._exit (no atexit): send what they counted now
    BUFFER.flush()
