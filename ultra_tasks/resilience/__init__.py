"""Resilience around provider calls: the fleet-wide circuit breaker; fallback, retry, rate limits, quotas and
adaptive timeouts live in the modules beside it (docs/resilience.md)."""

from ultra_tasks.resilience.breaker import CircuitBreaker, breaker_names, get_breaker

__all__ = ["CircuitBreaker", "breaker_names", "get_breaker"]
