"""``read_fleet()``: the parts of the fleet's shared state read at once, under one deadline.

Each part's reader runs in a daemon thread of its own, so a store that hangs costs the caller the deadline
(FLEET_READ_TIMEOUT) and no more, and a slow part never delays another. When the deadline passes, every
part not read yet is unavailable ("no answer within ..."); its thread ends on its own once the client's
socket timeout fires, and its answer is dropped.

A reader that fails is unavailable with the failure as its reason, and the other parts are kept:

- the store could not serve it: any Redis error (unreachable, timed out, out of memory, read-only, a
  command refused), any SQLAlchemy error, ``DependencyUnavailableError``, an OS error;
- anything else is a bug in the reader: logged with its traceback, so one broken reader never takes
  /metrics or the status page with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.fleet.billing import read_billing, read_budgets
from ultra_tasks.fleet.breakers import read_breakers
from ultra_tasks.fleet.cache import read_cache
from ultra_tasks.fleet.jobs import read_job_counters, read_job_table, read_queue_stats
from ultra_tasks.fleet.mode import read_components, read_mode_history, read_mode_mirror
from ultra_tasks.fleet.queues import read_parked, read_queue_depths
from ultra_tasks.fleet.snapshot import STORE_OF, FleetSnapshot, Part, Store, Unavailable
from ultra_tasks.jobs.admission import fill
from ultra_tasks.jobs.stats import redis_location
from ultra_tasks.redis_client import shared_redis

log = logging.getLogger(__name__)

#: seconds of history of the queue statistics unless asked otherwise
DEFAULT_WINDOW_S = 300.0
#: failures that mean a store could not serve a part (anything else is a reader's bug)
STORE_ERRORS = (DependencyUnavailableError, redis.RedisError, SQLAlchemyError, OSError)


@dataclass(frozen=True)
class Sources:
    """What the readers read: the state Redis, the broker's Redis (None on RabbitMQ), the window and now."""

    state: redis.Redis
    broker: redis.Redis | None
    window_s: float
    now: datetime


Reader = Callable[[Sources], Any]

#: one reader per part
READERS: dict[Part, Reader] = {
    Part.MODE_MIRROR: lambda s: read_mode_mirror(s.state),
    Part.MODE_HISTORY: lambda s: read_mode_history(s.now),
    Part.COMPONENTS: lambda s: read_components(),
    Part.BREAKERS: lambda s: read_breakers(s.state),
    Part.QUEUES: lambda s: read_queue_depths(s.broker),
    Part.PARKED: lambda s: read_parked(s.state),
    Part.ADMISSION: lambda s: fill(s.state),
    Part.JOBS: lambda s: read_job_counters(s.state),
    Part.QUEUE_STATS: lambda s: read_queue_stats(s.window_s, s.now),
    Part.JOB_TABLE: lambda s: read_job_table(),
    Part.CACHE: lambda s: read_cache(s.state),
    Part.BUDGETS: lambda s: read_budgets(s.now),
    Part.BILLING: lambda s: read_billing(s.state),
}


def _broker_client() -> redis.Redis | None:
    url = get_settings().effective_broker_url
    return shared_redis(url) if url.startswith(("redis://", "rediss://", "unix://")) else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__  # drivers' messages span lines


class _PartRead:
    """One part's reader in a daemon thread; ``value`` or ``error`` once it is done."""

    def __init__(self, part: Part, read: Reader, sources: Sources) -> None:
        self.part = part
        self.value: Any = None
        self.error: str | None = None
        #: the error is the driver's own, without the store's address: the address goes in front
        self.located = False
        self._read = read
        self._sources = sources
        self._thread = threading.Thread(target=self._run, name=f"fleet-read-{part}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.value = self._read(self._sources)
        except STORE_ERRORS as exc:
            self.error = _one_line(exc)
            self.located = not isinstance(exc, DependencyUnavailableError)
        except Exception as exc:
            log.exception("fleet read: the %s reader failed", self.part)
            self.error = f"{type(exc).__name__}: {_one_line(exc)}"

    def wait(self, seconds: float) -> bool:
        self._thread.join(max(0.0, seconds))
        return not self._thread.is_alive()


def read_fleet(
    *,
    parts: Collection[Part] | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    redis_client: redis.Redis | None = None,
    broker_client: redis.Redis | None = None,
    timeout_s: float | None = None,
    now: datetime | None = None,
    readers: Mapping[Part, Reader] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FleetSnapshot:
    """Every part (or ``parts``) read at once; the call returns within ``timeout_s`` (FLEET_READ_TIMEOUT).

    ``redis_client`` replaces the state Redis (REDIS_URL), ``broker_client`` the broker's (BROKER_URL);
    ``readers`` replaces some parts' readers.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")
    timeout_s = get_settings().fleet_read_timeout if timeout_s is None else timeout_s
    started = clock()
    state = redis_client or shared_redis()
    broker = broker_client if broker_client is not None else _broker_client()
    sources = Sources(state, broker, window_s, now or utcnow())
    locations = {
        Store.REDIS: redis_location(state),
        Store.BROKER: redis_location(broker) if broker is not None else "the broker",
        Store.DATABASE: "the database",
    }
    table = {**READERS, **(readers or {})}
    wanted = [p for p in Part if parts is None or p in parts]
    running = [_PartRead(part, table[part], sources) for part in wanted]

    deadline = started + timeout_s
    values: dict[str, Any] = {}
    unavailable: dict[Part, Unavailable] = {}
    for read in running:
        store = STORE_OF[read.part]
        if not read.wait(deadline - clock()):
            reason = f"{locations[store]}: no answer within {timeout_s:g}s"
        elif read.error is not None:
            reason = f"{locations[store]}: {read.error}" if read.located else read.error
        else:
            values[read.part.value] = read.value
            continue
        unavailable[read.part] = Unavailable(read.part, store, reason)
    _log(unavailable)
    return FleetSnapshot(
        generated_at=sources.now,
        window_s=window_s,
        parts=tuple(wanted),
        locations=locations,
        broker_is_state=broker is state,
        read_s=clock() - started,
        unavailable=unavailable,
        **values,
    )


def _log(unavailable: dict[Part, Unavailable]) -> None:
    by_reason: dict[str, list[str]] = defaultdict(list)
    for u in unavailable.values():
        by_reason[u.reason].append(u.part.value)
    for reason, names in by_reason.items():
        log.warning("fleet read: %s unavailable: %s", ", ".join(names), reason)
