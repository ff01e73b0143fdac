"""ultra-tasks: run many LLM jobs on Celery without losing one when a provider, a worker, Redis or the
database fails.

    >>> import ultra_tasks
    >>> handle = ultra_tasks.submit("Summarize ...", model="gpt-4o-mini", priority="high")
    >>> handle.result(timeout=60).text
"""

from ultra_tasks.cache.layered import DistributedCache
from ultra_tasks.celery_app import app
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import (
    BudgetExceededError,
    CircuitOpenException,
    ConfigurationError,
    DependencyUnavailableError,
    ErrorKind,
    JobError,
    JobExpiredError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    JobValidationError,
    NoProviderAvailableError,
    PermanentProviderError,
    ProviderError,
    QueueFullError,
    QuotaExhaustedError,
    RateLimitedError,
    ServiceUnavailableException,
    TimeoutException,
    UltraTasksError,
    UnknownModelError,
)
from ultra_tasks.health.checks import HealthCheck, HealthStatus, LLMProviderHealthCheck
from ultra_tasks.jobs.models import JobResult, JobStatus
from ultra_tasks.jobs.queue import PersistentRequestQueue, RetryableRequest, operation
from ultra_tasks.jobs.submit import JobHandle, submit
from ultra_tasks.mode.operation_mode import SystemOperationMode
from ultra_tasks.resilience.breaker import CircuitBreaker
from ultra_tasks.resilience.fallback import Fallback

__version__ = "0.1.0"

__all__ = [
    "BudgetExceededError",
    "CircuitBreaker",
    "CircuitOpenException",
    "ConfigurationError",
    "DependencyUnavailableError",
    "DistributedCache",
    "ErrorKind",
    "Fallback",
    "HealthCheck",
    "HealthStatus",
    "JobError",
    "JobExpiredError",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobResult",
    "JobStatus",
    "JobTimeoutError",
    "JobValidationError",
    "LLMProviderHealthCheck",
    "NoProviderAvailableError",
    "PermanentProviderError",
    "PersistentRequestQueue",
    "ProviderError",
    "QueueFullError",
    "QuotaExhaustedError",
    "RateLimitedError",
    "RetryableRequest",
    "ServiceUnavailableException",
    "Settings",
    "SystemOperationMode",
    "TimeoutException",
    "UltraTasksError",
    "UnknownModelError",
    "app",
    "get_settings",
    "operation",
    "submit",
]
