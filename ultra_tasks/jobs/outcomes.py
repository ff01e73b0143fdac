"""What one run of a job ends in: a typed outcome per case, each with the JSON shape the result backend,
the job-metrics handler and ``JobHandle`` read.

Final outcomes (``Succeeded``, ``Failed``, ``Expired``) are the job's; the others are the run's alone:
``Parked`` (it waits in Redis until a provider or the mode lets it run), ``Duplicate`` (another run holds
the job) and ``Lost`` (another run took the job over mid-run: this one stopped without calling or writing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ultra_tasks.jobs.models import JobResult, JobStatus


@dataclass(frozen=True)
class Succeeded:
    result: JobResult
    status: ClassVar[str] = JobStatus.SUCCEEDED.value
    final: ClassVar[bool] = True

    @property
    def job_id(self) -> str:
        return self.result.job_id

    def to_dict(self) -> dict[str, Any]:
        return self.result.to_dict()


@dataclass(frozen=True)
class Failed:
    job_id: str
    #: the error as recorded: type, kind, message, and the attempts and provider calls where known
    error: dict[str, Any]
    status: ClassVar[str] = JobStatus.FAILED.value
    final: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "error": dict(self.error)}


@dataclass(frozen=True)
class Expired:
    job_id: str
    status: ClassVar[str] = JobStatus.EXPIRED.value
    final: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status}


@dataclass(frozen=True)
class Parked:
    job_id: str
    #: the queue it returns to when released
    queue: str
    #: seconds until it is due, at the latest (an event may release it earlier)
    retry_after: float
    reason: str
    #: what it waits for (jobs/parking.py CAUSE_*): the event that releases it
    cause: str
    #: it holds a DEGRADED start slot: released exactly when due, without jitter
    slot_reserved: bool = False
    status: ClassVar[str] = JobStatus.PARKED.value
    final: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "queue": self.queue,
            "retry_after": self.retry_after,
            "reason": self.reason,
            "cause": self.cause,
            "slot_reserved": self.slot_reserved,
        }


@dataclass(frozen=True)
class Duplicate:
    job_id: str
    #: seconds until the holder's lease would lapse if it stopped renewing it
    retry_after: float
    status: ClassVar[str] = "duplicate"
    final: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "retry_after": self.retry_after}


@dataclass(frozen=True)
class Lost:
    job_id: str
    status: ClassVar[str] = "lost"
    final: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status}


Outcome = Succeeded | Failed | Expired | Parked | Duplicate | Lost


def final_outcome(data: dict[str, Any]) -> Succeeded | Failed | Expired | None:
    """A final outcome from its JSON shape (a result backend's or a recorded row's), None if it is not one."""
    status = data.get("status")
    job_id = str(data.get("job_id") or "")
    if status == JobStatus.SUCCEEDED.value and "text" in data:
        return Succeeded(JobResult.from_dict(data))
    if status == JobStatus.FAILED.value:
        return Failed(job_id, dict(data.get("error") or {}))
    if status == JobStatus.EXPIRED.value:
        return Expired(job_id)
    return None
