"""Health checks: the public ``HealthCheck``, ``HealthStatus`` and breaker-aware ``LLMProviderHealthCheck``,
and checks for Redis, the broker, the database, live workers, queue depth and the disk cache.

Every check is bounded by a timeout: a hung dependency reports critical instead of hanging the ops queue.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import text

if TYPE_CHECKING:
    from ultra_tasks.providers.registry import ProviderRegistry
    from ultra_tasks.resilience.breaker import CircuitBreaker

OK, DEGRADED, CRITICAL = "ok", "degraded", "critical"
#: a provider with no credentials and no USE_FAKE_PROVIDER: shown, never probed, not a failure of the fleet
NOT_CONFIGURED = "not-configured"
#: default bound on one check (seconds)
CHECK_TIMEOUT_S = 5.0


@dataclass
class HealthStatus:
    status: str  # ok, degraded, critical (or not-configured: a provider left without credentials)
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class HealthCheck(ABC):
    """One component's check. Subclasses implement ``check_health``; callers use ``run`` (bounded)."""

    def __init__(self, name: str, component_type: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.name = name
        self.component_type = component_type
        self.timeout_s = timeout_s

    @abstractmethod
    async def check_health(self) -> HealthStatus: ...

    async def run(self) -> HealthStatus:
        try:
            return await asyncio.wait_for(self.check_health(), timeout=self.timeout_s)
        except TimeoutError:
            return HealthStatus(CRITICAL, f"{self.name} check timed out after {self.timeout_s:g}s")
        except Exception as exc:
            return HealthStatus(
                CRITICAL, f"{self.name} check failed: {exc}", {"error_type": type(exc).__name__}
            )


class LLMProviderHealthCheck(HealthCheck):
    """Health check for LLM providers with resilience awareness (public API: its signature stays as is)."""

    def __init__(self, provider_name: str, client: Any) -> None:
        super().__init__(f"llm_provider_{provider_name}", "llm_provider")
        self.provider_name = provider_name
        self.client = client

    async def check_health(self) -> HealthStatus:
        from ultra_tasks.errors import CircuitOpenException
        from ultra_tasks.resilience.breaker import CircuitBreaker

        missing = getattr(self.client, "missing", None)
        if isinstance(missing, str) and missing:
            # Not a failing provider: nothing is sent to it, and chains skip it (see providers/registry.py).
            return HealthStatus(
                NOT_CONFIGURED,
                f"{self.provider_name} is not configured: {missing} is not set "
                "(or USE_FAKE_PROVIDER=1 for the local fake provider)",
                {"missing": missing},
            )
        try:
            circuit_breaker = self.client.circuit_breaker
            state = await asyncio.to_thread(lambda: circuit_breaker.state)
            if state == CircuitBreaker.FORCED_OPEN:  # an operator's decision: never probed around
                return HealthStatus(
                    CRITICAL,
                    f"{self.provider_name} circuit breaker is forced open by an operator",
                    {"circuit_breaker_state": state},
                )
            # Open: this check is the prober of last resort. With no job traffic nothing else would move
            # the breaker to half-open, and the mode would never notice that the provider came back; its
            # call asks the breaker like any caller (refused until the reset timeout has passed, then one
            # of the half-open probes).
            try:
                result = await self.client.check_availability(fresh=state != CircuitBreaker.CLOSED)
            except CircuitOpenException as exc:
                return HealthStatus(
                    CRITICAL,
                    f"{self.provider_name} circuit breaker is open (next probe in {exc.retry_after:.0f}s)",
                    {"circuit_breaker_state": state, "retry_after": round(exc.retry_after, 1)},
                )
            state = await asyncio.to_thread(lambda: circuit_breaker.state)
            if result:
                return HealthStatus(
                    OK,
                    f"{self.provider_name} is available",
                    {"circuit_breaker_state": state, "response_time_ms": result.get("response_time_ms")},
                )
            return HealthStatus(
                DEGRADED, f"{self.provider_name} is responding slowly", {"circuit_breaker_state": state}
            )
        except Exception as e:
            return HealthStatus(
                CRITICAL,
                f"{self.provider_name} is unavailable: {e}",
                {"error": str(e), "error_type": type(e).__name__},
            )


class ProviderProbe:
    """The client an ``LLMProviderHealthCheck`` uses: a one-token completion to one deployment, at most
    once per ``min_interval_s`` (the last answer is reused meanwhile), through the deployment's breaker.
    The model asked for is the deployment's first literal model, else its kind's cheapest."""

    def __init__(
        self,
        provider_name: str,
        *,
        min_interval_s: float,
        slow_ms: float = 5000.0,
        registry: ProviderRegistry | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        from ultra_tasks.providers.kinds import get_kind
        from ultra_tasks.providers.registry import UnconfiguredProvider, default_registry
        from ultra_tasks.resilience.breaker import get_breaker

        registry = registry or default_registry()
        self.provider_name = provider_name
        self.provider = registry.get(provider_name)
        self.deployment = registry.deployment(provider_name)
        self.probe_model = get_kind(self.deployment.kind).probe_model_for(self.deployment)
        #: the variable to set when the provider is not configured (then it is never probed)
        self.missing = self.provider.variable if isinstance(self.provider, UnconfiguredProvider) else None
        #: the provider's breaker (the one its jobs use, unless one is given)
        self.circuit_breaker = breaker or get_breaker(provider_name)
        self.min_interval_s = min_interval_s
        self.slow_ms = slow_ms
        self._last: tuple[float, dict[str, Any] | None] | None = None

    async def check_availability(self, *, fresh: bool = False) -> dict[str, Any] | None:
        """A probe's answer (None: slow); ``fresh`` calls even within ``min_interval_s`` of the last one
        (the breaker is not closed: an old answer says nothing about whether the provider came back)."""
        if not fresh and self._last is not None and time.monotonic() - self._last[0] < self.min_interval_s:
            return self._last[1]
        from ultra_tasks.providers.base import ChatMessage, LLMRequest

        request = LLMRequest(self.probe_model, (ChatMessage("user", "ping"),), max_tokens=1)
        started = time.perf_counter()
        await asyncio.to_thread(
            self.circuit_breaker.call, self.provider.complete, request, timeout=CHECK_TIMEOUT_S
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        result = {"response_time_ms": round(elapsed_ms, 1)} if elapsed_ms < self.slow_ms else None
        self._last = (time.monotonic(), result)
        return result


class RedisHealthCheck(HealthCheck):
    def __init__(self, url: str) -> None:
        super().__init__("redis", "redis")
        self.url = url

    async def check_health(self) -> HealthStatus:
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            await asyncio.to_thread(client.ping)
        finally:
            client.close()
        return HealthStatus(OK, "Redis answers")


class BrokerHealthCheck(HealthCheck):
    def __init__(self) -> None:
        super().__init__("broker", "broker")

    async def check_health(self) -> HealthStatus:
        from ultra_tasks.celery_app import app

        def connect() -> None:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)

        await asyncio.to_thread(connect)
        return HealthStatus(OK, "broker reachable")


class DatabaseHealthCheck(HealthCheck):
    def __init__(self) -> None:
        super().__init__("database", "database")

    async def check_health(self) -> HealthStatus:
        from ultra_tasks.db.engine import get_engine

        def select_one() -> None:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))

        await asyncio.to_thread(select_one)
        return HealthStatus(OK, "database answers")


class WorkersHealthCheck(HealthCheck):
    """Critical when no LLM worker answers a Celery ping."""

    def __init__(self) -> None:
        super().__init__("workers", "workers")

    async def check_health(self) -> HealthStatus:
        from ultra_tasks.celery_app import app

        replies = await asyncio.to_thread(app.control.ping, timeout=1.0)
        names = sorted(name for reply in replies or [] for name in reply)
        llm = [n for n in names if not n.startswith("ops@")]
        if not llm:
            return HealthStatus(CRITICAL, "no LLM worker answers", {"workers": names})
        return HealthStatus(OK, f"{len(llm)} LLM worker(s) answer", {"workers": names})


class QueueDepthHealthCheck(HealthCheck):
    """Degraded when the LLM queues hold more than ``max_depth`` jobs in all."""

    def __init__(self, url: str, max_depth: int) -> None:
        super().__init__("queues", "queue")
        self.url = url
        self.max_depth = max_depth

    async def check_health(self) -> HealthStatus:
        # every priority sub-list on Redis, the one native-priority queue on RabbitMQ (jobs/stats.py)
        from ultra_tasks.broker import is_amqp
        from ultra_tasks.jobs.stats import queue_depths
        from ultra_tasks.keys import QUEUE_OPS
        from ultra_tasks.redis_client import shared_redis

        client = None if is_amqp() else shared_redis(self.url)
        all_depths = await asyncio.to_thread(queue_depths, client)
        depths = {q: n for q, n in all_depths.items() if q != QUEUE_OPS}
        total = sum(depths.values())
        status = DEGRADED if total > self.max_depth else OK
        return HealthStatus(status, f"{total} jobs queued (limit {self.max_depth})", {"depths": depths})


class DiskCacheHealthCheck(HealthCheck):
    def __init__(self, directory: Path) -> None:
        super().__init__("disk_cache", "disk_cache")
        self.directory = directory

    async def check_health(self) -> HealthStatus:
        def probe() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / ".health-probe"
            path.write_text("ok")
            path.unlink()

        await asyncio.to_thread(probe)
        return HealthStatus(OK, f"{self.directory} writable")
