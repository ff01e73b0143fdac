"""``FleetSnapshot``: one read of the fleet's shared state, made of typed parts, each None when unavailable.

A part is read from one store (Redis, the broker, the database); a part that could not be read by the
deadline is None here and in ``unavailable`` with its reason. Renderers (/metrics, the status page and its
JSON, `ultra status`) show what is there and say what is not; none of them reads a store itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ultra_tasks.fleet.billing import BillingCounters, BudgetView
from ultra_tasks.fleet.breakers import BreakerView
from ultra_tasks.fleet.cache import FleetCache
from ultra_tasks.fleet.jobs import JobCounters
from ultra_tasks.fleet.mode import UNKNOWN, ComponentView, ModeHistory, ModeView
from ultra_tasks.jobs.admission import Fill
from ultra_tasks.jobs.retention import JobTableSummary
from ultra_tasks.jobs.stats import QueueStats


class Store(StrEnum):
    REDIS = "redis"
    BROKER = "broker"
    DATABASE = "database"


class Part(StrEnum):
    """The parts of a snapshot, in the order they are listed."""

    MODE_MIRROR = "mode_mirror"
    MODE_HISTORY = "mode_history"
    COMPONENTS = "components"
    BREAKERS = "breakers"
    QUEUES = "queues"
    PARKED = "parked"
    ADMISSION = "admission"
    JOBS = "jobs"
    QUEUE_STATS = "queue_stats"
    JOB_TABLE = "job_table"
    CACHE = "cache"
    BUDGETS = "budgets"
    BILLING = "billing"


#: the store each part is read from
STORE_OF = {
    Part.MODE_MIRROR: Store.REDIS,
    Part.MODE_HISTORY: Store.DATABASE,
    Part.COMPONENTS: Store.DATABASE,
    Part.BREAKERS: Store.REDIS,
    Part.QUEUES: Store.BROKER,
    Part.PARKED: Store.REDIS,
    Part.ADMISSION: Store.REDIS,
    Part.JOBS: Store.REDIS,
    Part.QUEUE_STATS: Store.DATABASE,
    Part.JOB_TABLE: Store.DATABASE,
    Part.CACHE: Store.REDIS,
    Part.BUDGETS: Store.DATABASE,
    Part.BILLING: Store.REDIS,
}


@dataclass(frozen=True)
class Unavailable:
    """Why a part is missing: its store failed, refused, or did not answer by the deadline."""

    part: Part
    store: Store
    reason: str


@dataclass(frozen=True)
class FleetSnapshot:
    generated_at: datetime
    #: seconds of history of ``queue_stats``
    window_s: float
    #: the parts asked for (a sampler may ask for a few)
    parts: tuple[Part, ...]
    #: host:port/db of the stores read, for messages (never a password)
    locations: dict[Store, str] = field(default_factory=dict)
    #: the broker is the state Redis itself (one server, one outage)
    broker_is_state: bool = False
    #: seconds the read took
    read_s: float = 0.0
    unavailable: dict[Part, Unavailable] = field(default_factory=dict)
    mode_mirror: ModeView | None = None
    mode_history: ModeHistory | None = None
    components: list[ComponentView] | None = None
    breakers: list[BreakerView] | None = None
    queues: dict[str, int] | None = None
    parked: dict[str, int] | None = None
    admission: Fill | None = None
    jobs: JobCounters | None = None
    queue_stats: QueueStats | None = None
    job_table: JobTableSummary | None = None
    cache: FleetCache | None = None
    budgets: list[BudgetView] | None = None
    billing: BillingCounters | None = None

    @property
    def mode(self) -> ModeView:
        """The record when the database answered, else the Redis mirror, else UNKNOWN."""
        if self.mode_history is not None:
            return self.mode_history.current
        if self.mode_mirror is not None:
            return self.mode_mirror
        return UNKNOWN

    def store_failed(self, store: Store) -> bool:
        """Whether some part read from ``store`` is unavailable."""
        return any(u.store is store for u in self.unavailable.values())
