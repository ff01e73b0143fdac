"""Worker roles: which queues a worker consumes, with which pool and how many at once.

Start one with ``ultra worker ROLE`` (or the ``celery`` command that ``ultra worker ROLE --print`` shows).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ultra_tasks.broker import consumed_queues
from ultra_tasks.config import Settings


@dataclass(frozen=True)
class WorkerRole:
    name: str
    queues: tuple[str, ...]
    pool: str
    concurrency: Callable[[Settings], int]
    description: str

    def argv(
        self,
        settings: Settings,
        *,
        concurrency: int | None = None,
        node_name: str | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """The command line of a Celery worker in this role."""
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "ultra_tasks",
            "worker",
            "-Q",
            ",".join(consumed_queues(self.queues, settings)),
            "-P",
            self.pool,
            "-c",
            str(concurrency or self.concurrency(settings)),
            "-n",
            node_name or f"{self.name}@%h",
            "--loglevel",
            settings.log_level.upper(),
            *extra,
        ]


def roles() -> dict[str, WorkerRole]:
    from workers.llm import ROLE as LLM
    from workers.ops import ROLE as OPS

    return {LLM.name: LLM, OPS.name: OPS}
