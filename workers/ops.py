"""The ops role: beat's health checks and sweeps, on their own queue so they never wait behind jobs."""

from ultra_tasks.keys import QUEUE_OPS
from workers import WorkerRole

#: ops tasks are short and few; a handful of threads keeps a slow check from blocking the others
OPS_CONCURRENCY = 4

ROLE = WorkerRole(
    name="ops",
    queues=(QUEUE_OPS,),
    pool="threads",
    concurrency=lambda s: OPS_CONCURRENCY,
    description="health checks, mode evaluation and sweeps",
)
