"""Resilience around provider calls: the fleet-wide circuit breaker (more pieces arrive with their issues)."""

from ultra_tasks.resilience.breaker import CircuitBreaker, breaker_names, get_breaker

__all__ = ["CircuitBreaker", "breaker_names", "get_breaker"]
