"""One process's shared parts, built once: the settings, the Redis client, the provider registry, the
resilient pipeline, the mode's effects, the job cache and the job leases.

A worker builds its ``Runtime`` when it starts (celery_app.py); any other process (a producer, the CLI, a
test) gets one on first use. Everything the job path needs comes from here, so one process never holds
two pipelines (whose adaptive timeouts and quota views would disagree) or two lease sets (the heartbeat
renews one). A test passes its own parts to ``Runtime`` or to the job path directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from ultra_tasks.cache.layered import DistributedCache
from ultra_tasks.cache.llm import job_cache
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.jobs.lease import Leases
from ultra_tasks.mode.effects import ModeEffects
from ultra_tasks.providers.registry import ProviderRegistry, default_registry
from ultra_tasks.redis_client import shared_redis
from ultra_tasks.resilience.pipeline import ResilientCaller

if TYPE_CHECKING:
    import redis

    from ultra_tasks.billing.meter import Accounts

T = TypeVar("T")


class Runtime:
    """The parts of one process. Each is made on first use, once, under a lock (threads share them)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_client: redis.Redis | None = None,
        registry: ProviderRegistry | None = None,
        caller: ResilientCaller | None = None,
        effects: ModeEffects | None = None,
        leases: Leases | None = None,
        cache: DistributedCache | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.redis = redis_client or shared_redis(self.settings.redis_url)
        self.registry = registry or default_registry()
        self._caller, self._effects, self._leases, self._cache = caller, effects, leases, cache
        self._billing: Accounts | None = None
        self._lock = threading.Lock()

    def _once(self, attr: str, make: Callable[[], T]) -> T:
        """The part held in ``attr``, made by ``make`` the first time (once, whatever the threads)."""
        made = getattr(self, attr)
        if made is None:
            with self._lock:
                made = getattr(self, attr)
                if made is None:
                    made = make()
                    setattr(self, attr, made)
        return cast(T, made)

    @property
    def caller(self) -> ResilientCaller:
        """The resilient pipeline (its adaptive timeouts and quota view are shared by all threads)."""
        return self._once("_caller", lambda: ResilientCaller(self.registry, self.settings, self.redis))

    @property
    def effects(self) -> ModeEffects:
        """What the operation mode does to jobs (it caches the mode for a second)."""
        return self._once("_effects", lambda: ModeEffects(self.settings, self.redis))

    @property
    def cache(self) -> DistributedCache:
        """The job path's cache (memory, disk and Redis levels)."""
        return self._once("_cache", lambda: job_cache(self.settings))

    @property
    def leases(self) -> Leases:
        """The leases of the jobs this process runs (the heartbeat renews them all)."""
        return self._once("_leases", lambda: Leases(self.redis, self.settings))

    @property
    def billing(self) -> Accounts:
        """The tenants' budgets (cached) and their books in Redis."""
        from ultra_tasks.billing.meter import Accounts

        return self._once("_billing", lambda: Accounts(self.redis, self.settings))


_current: Runtime | None = None
_current_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime: the one a worker installed when it started, or one made now."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = Runtime()
    return _current


def install_runtime(new: Runtime) -> Runtime:
    """Make ``new`` this process's runtime (a worker at start; a test with parts of its own)."""
    global _current
    with _current_lock:
        _current = new
    return new


def reset_runtime() -> None:
    """Forget this process's runtime: the next use builds one from the current settings (tests)."""
    global _current
    with _current_lock:
        _current = None
