"""The LLM role: consumes llm.high, llm.default, llm.low in that strict order.

A threads pool, because a job spends nearly all its time waiting on a provider's HTTP response: threads
are cheap to park, share a few SDK clients per provider (one per 8 threads), and need no fork. Size it
with QUEUE_WORKER_COUNT (jobs one process runs at once); for I/O-bound LLM calls tens to hundreds are
normal.
"""

from ultra_tasks.keys import LLM_QUEUES
from workers import WorkerRole

ROLE = WorkerRole(
    name="llm",
    queues=LLM_QUEUES,
    pool="threads",
    concurrency=lambda s: s.queue_worker_count,
    description="LLM jobs, strict priority high > default > low",
)
