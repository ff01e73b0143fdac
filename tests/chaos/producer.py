"""A producer process for chaos tests: submits COUNT jobs and appends each accepted job's id to IDS_FILE
(flushed at once), so the test knows exactly which jobs the system accepted, whatever it kills meanwhile.

Usage: python producer.py COUNT IDS_FILE PREFIX PAUSE_S
A submit refused (DependencyUnavailableError, QueueFullError) is retried after a short pause, with the
same job id (a submit whose outcome was unknown may have recorded the job: the same id cannot make a
second one): the producer keeps trying, as a real one would; only accepted ids count.
"""

from __future__ import annotations

import sys
import time
import uuid

from ultra_tasks import submit
from ultra_tasks.errors import UltraTasksError

PRIORITIES = ("high", "default", "low")
#: not a model the health checks probe, so provider counts are the jobs' own calls
MODEL = "gpt-4.1-mini"


def main() -> None:
    count, ids_file, prefix, pause = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    with open(ids_file, "a", encoding="utf-8") as out:
        for i in range(count):
            job_id = str(uuid.uuid4())
            while True:
                try:
                    handle = submit(
                        f"{prefix} {i}", model=MODEL, priority=PRIORITIES[i % 3], job_id=job_id, cache=False
                    )
                    break
                except UltraTasksError as exc:
                    print(f"submit {i} refused: {exc}", flush=True)
                    time.sleep(0.2)
            out.write(handle.id + "\n")
            out.flush()
            if pause:
                time.sleep(pause)
    print(f"producer {prefix}: {count} jobs accepted", flush=True)


if __name__ == "__main__":
    main()
