"""A small demo batch: jobs at every priority through both providers, results shown as a table."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ultra_tasks.errors import UltraTasksError
from ultra_tasks.jobs.models import JobResult
from ultra_tasks.jobs.submit import JobHandle, submit

DEMO_JOBS: tuple[tuple[str, str, str], ...] = (
    ("high", "gpt-4o-mini", "Summarize why circuit breakers matter in one sentence."),
    ("high", "claude-3-5-haiku-latest", "Name three causes of provider outages."),
    ("default", "gpt-4o", "Explain exponential backoff with jitter."),
    ("default", "claude-3-5-sonnet-latest", "What does acks-late delivery guarantee?"),
    ("low", "gpt-4o-mini", "Write a haiku about message queues."),
    ("low", "claude-3-5-haiku-latest", "Why should cache keys be stable across processes?"),
)


@dataclass
class DemoOutcome:
    handle: JobHandle
    priority: str
    model: str
    result: JobResult | None
    error: str | None


def run_demo(timeout: float = 60.0) -> list[DemoOutcome]:
    """Submit the demo batch and wait for every job; failures are reported, not raised."""
    submitted = [
        (submit(prompt, model=model, priority=prio), prio, model) for prio, model, prompt in DEMO_JOBS
    ]
    deadline = time.monotonic() + timeout
    outcomes = []
    for handle, prio, model in submitted:
        try:
            result = handle.result(timeout=max(0.1, deadline - time.monotonic()))
            outcomes.append(DemoOutcome(handle, prio, model, result, None))
        except UltraTasksError as exc:
            outcomes.append(DemoOutcome(handle, prio, model, None, str(exc)))
    return outcomes
