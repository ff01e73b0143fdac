"""The one exception tree of ultra-tasks.

Third-party errors (redis, SQLAlchemy, the provider SDKs) are mapped to these at the boundary with
``raise ... from exc`` so callers only ever catch ours::

    UltraTasksError
    ├── ConfigurationError              a malformed or inconsistent setting (names the variable)
    │   └── DeploymentsFileError        a bad PROVIDERS_FILE (names the file, the entry and the field)
    ├── JobValidationError (ValueError) bad input to submit(); names the field; nothing was recorded
    │   └── UnknownModelError           no provider serves the model
    ├── DependencyUnavailableError      Redis, the broker or the database cannot be reached
    │   ├── SubmitOutcomeUnknownError   submit() cannot tell whether its job was recorded; carries the id
    │   └── DatabaseTimeoutError        a statement outran DATABASE_STATEMENT_TIMEOUT_MS (a TimeoutException)
    │       └── DatabasePoolExhaustedError  no pooled connection came free within DATABASE_POOL_TIMEOUT
    ├── QueueFullError                  the jobs held reached this priority's share of QUEUE_MAX_SIZE
    ├── JobError
    │   ├── JobNotFoundError            no job with that id
    │   ├── JobFailedError              the job ended failed; carries its error record
    │   ├── JobExpiredError             the job's deadline passed before it ran
    │   ├── LeaseLostError              a run no longer holds its job's lease: it stops, calling nothing
    │   └── JobTimeoutError             result() waited longer than asked (also a TimeoutException)
    ├── TimeoutException (TimeoutError) public name: something took longer than allowed
    ├── CircuitOpenException            public name: a breaker refused the call
    └── ProviderError                   a provider call failed; ``kind`` says how to react
        ├── ServiceUnavailableException public name: transient (connection, 5xx, 529 overloaded)
        │   ├── ProviderTimeoutError    the call timed out (also a TimeoutException)
        │   ├── RateLimitedError        429; ``retry_after`` seconds when the provider said so
        │   └── QuotaExhaustedError     the account is out of quota; never retried
        └── PermanentProviderError      400/401/403/404/422: retrying cannot help
            ├── ProviderBadRequestError 400, 404, 422
            │   ├── ContextWindowExceededError  input too large for this model (a larger one may take it)
            │   └── ContentPolicyError          refused by this provider's content policy
            ├── ProviderAuthError       401, 403
            ├── ProviderNotConfiguredError  no API key and no USE_FAKE_PROVIDER: names the variable to set
            └── UnpricedModelError      a budgeted tenant's call to a model with no known price (not sent)
    NoProviderAvailableError            every entry of a job's fallback chain is unavailable for now
    BudgetExceededError                 a tenant's budget cannot hold a job's worst case (now, or this period)
    ApiError                            an HTTP API request refused: OpenAI's status, type, param and code
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class UltraTasksError(Exception):
    """Base of every error raised by ultra-tasks."""


class ConfigurationError(UltraTasksError):
    """A setting is malformed or inconsistent; the message names the variable."""


class DeploymentsFileError(ConfigurationError):
    """The deployments file (PROVIDERS_FILE) is malformed: ``path``, ``entry`` (a deployment's name or
    position, or ``fallbacks``) and ``field`` say where. Never carries a secret's value."""

    def __init__(self, path: str, entry: str, field: str, message: str) -> None:
        super().__init__(f"{path}: {entry}: {field}: {message}")
        self.path = path
        self.entry = entry
        self.field = field


class JobValidationError(UltraTasksError, ValueError):
    """Bad input to ``submit``; ``field`` names what is wrong. Nothing was recorded or enqueued."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownModelError(JobValidationError):
    """No configured provider serves this model."""

    def __init__(self, model: str, known_patterns: list[str]) -> None:
        super().__init__(
            "model",
            f"no provider serves model {model!r} (known: {', '.join(known_patterns)}; "
            "add a route with MODEL_MAP, or a deployment serving it to PROVIDERS_FILE)",
        )
        self.model = model


class DependencyUnavailableError(UltraTasksError):
    """Redis, the broker or the database could not be reached."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency


class SubmitOutcomeUnknownError(DependencyUnavailableError):
    """The database went away while ``submit`` recorded the job: it may or may not exist. ``job_id`` is
    the id it has if it does; submitting again with ``job_id=`` that id is safe either way (a recorded job
    is returned, not made twice)."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__("database", f"job {job_id} may or may not be recorded ({message})")
        self.job_id = job_id


class QueueFullError(UltraTasksError):
    """Backpressure: the system already holds as many jobs as this job's priority may fill; nothing was
    recorded. ``depth``: jobs held (accepted and not final); ``limit``: the bound (QUEUE_MAX_SIZE).
    ``priority`` and ``threshold`` say which threshold refused the job: jobs of ``priority`` are refused
    once ``threshold`` jobs are held (its share of the bound, QUEUE_SHED_AT); ``share`` is that share.
    Raised without them (``QueueFullError(depth, limit)``) the threshold is the bound itself."""

    def __init__(
        self,
        depth: int,
        limit: int,
        *,
        priority: str | None = None,
        threshold: int | None = None,
        share: float | None = None,
        setting: str = "QUEUE_MAX_SIZE",
    ) -> None:
        self.depth = depth
        self.limit = limit
        self.priority = priority
        self.threshold = limit if threshold is None else threshold
        self.share = share
        self.setting = setting
        if priority is None:
            message = f"queue full: {depth} jobs waiting, limit {limit} ({setting}); nothing was recorded"
        else:
            of = f"{share:.0%} of " if share is not None else ""
            message = (
                f"queue full for {priority}-priority jobs: {depth} jobs held (accepted, not final); "
                f"{priority} is refused from {self.threshold} ({of}{setting} {limit}, QUEUE_SHED_AT); "
                "nothing was recorded"
            )
        super().__init__(message)


class JobError(UltraTasksError):
    """Something about one job."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobNotFoundError(JobError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"no job with id {job_id!r}")


class JobFailedError(JobError):
    """The job ended failed; ``error`` is its recorded error (type, message, kind, provider...)."""

    def __init__(self, job_id: str, error: dict[str, Any]) -> None:
        super().__init__(job_id, f"job {job_id} failed: {error.get('type')}: {error.get('message')}")
        self.error = error


class JobExpiredError(JobError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} expired before it ran")


class LeaseLostError(JobError):
    """The run's lease on its job lapsed or was taken by a newer run (jobs/lease.py): it must neither call
    a provider nor write an outcome."""

    def __init__(self, job_id: str, token: int) -> None:
        super().__init__(job_id, f"job {job_id}: this run's lease (token {token}) is no longer held")
        self.token = token


class TimeoutException(UltraTasksError, TimeoutError):
    """Public name: an operation took longer than it was allowed to."""


class DatabaseTimeoutError(DependencyUnavailableError, TimeoutException):
    """The database cancelled a statement that ran past DATABASE_STATEMENT_TIMEOUT_MS (overloaded or a lock
    held too long). A DependencyUnavailableError, so callers that cope with an outage cope with this too."""

    def __init__(self, message: str) -> None:
        super().__init__("database", message)


class DatabasePoolExhaustedError(DatabaseTimeoutError):
    """Every connection of this process's pool stayed busy for DATABASE_POOL_TIMEOUT seconds: the process
    asks more of the database at once than DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW allow, or the
    database answers slowly. Not an outage (the database breaker does not count it), but handled as one:
    a job retries later instead of failing."""


class JobTimeoutError(JobError, TimeoutException):
    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(job_id, f"job {job_id} has no result after {timeout:g}s")
        self.timeout = timeout


class CircuitOpenException(UltraTasksError):
    """Public name: the circuit breaker ``name`` is open; try again in ``retry_after`` seconds."""

    def __init__(
        self, name: str, retry_after: float = 0.0, *, forced: bool = False, generation: int | None = None
    ) -> None:
        what = "forced open by an operator" if forced else "open"
        super().__init__(f"circuit breaker {name!r} is {what}; retry in {retry_after:.1f}s")
        self.name = name
        self.retry_after = retry_after
        #: an operator's forced open: it ends when cleared (or its duration runs out), not by probing
        self.forced = forced
        #: the shared state's generation that refused (None: not known, e.g. Redis down)
        self.generation = generation


class ErrorKind(StrEnum):
    """How the resilience layer should react to a provider error."""

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    PERMANENT = "permanent"


class ProviderError(UltraTasksError):
    """A provider call failed. ``kind`` classifies it; ``status_code`` is the HTTP status if any."""

    kind: ErrorKind = ErrorKind.TRANSIENT

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record of this error for the job table and results."""
        return {
            "type": type(self).__name__,
            "kind": self.kind.value,
            "message": str(self),
            "provider": self.provider,
            "model": self.model,
            "status_code": self.status_code,
            "retry_after": self.retry_after,
        }


class ServiceUnavailableException(ProviderError):
    """Public name: the provider is unavailable for now (connection error, 5xx, 529); worth retrying."""

    kind = ErrorKind.TRANSIENT


class ProviderTimeoutError(ServiceUnavailableException, TimeoutException):
    kind = ErrorKind.TRANSIENT


class RateLimitedError(ServiceUnavailableException):
    kind = ErrorKind.RATE_LIMITED


class QuotaExhaustedError(ServiceUnavailableException):
    kind = ErrorKind.QUOTA_EXHAUSTED


class PermanentProviderError(ProviderError):
    kind = ErrorKind.PERMANENT


class ProviderBadRequestError(PermanentProviderError):
    pass


class ProviderAuthError(PermanentProviderError):
    pass


class ProviderNotConfiguredError(PermanentProviderError):
    """The provider has no API key (or base URL) and the local fake provider was not chosen
    (USE_FAKE_PROVIDER): nothing is sent anywhere. ``variable`` names what to set. A fallback chain skips
    such a provider; a job with nothing else to try fails at once."""

    def __init__(
        self, provider: str, variable: str, *, model: str | None = None, fake_allowed: bool = True
    ) -> None:
        hint = " (or USE_FAKE_PROVIDER=1 for the local fake provider)" if fake_allowed else ""
        super().__init__(f"not configured: {variable} is not set{hint}", provider=provider, model=model)
        self.variable = variable

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "missing": self.variable}


class UnpricedModelError(PermanentProviderError):
    """A tenant with a budget asked for a model whose price is unknown on its deployment: its cost could
    not be bounded, so the call is not sent. Give the deployment a ``price`` in the deployments file."""


class ContextWindowExceededError(ProviderBadRequestError):
    """Permanent for this model, but a model with a larger context window may answer."""


class ContentPolicyError(ProviderBadRequestError):
    """Permanent for this provider, but another provider's policy may allow it."""


class NoProviderAvailableError(UltraTasksError):
    """No entry of the chain can be called now (breakers open, quota exhausted, rate limits); try at
    ``retry_after`` seconds."""

    def __init__(
        self, reasons: list[str], retry_after: float, *, breaker: CircuitOpenException | None = None
    ) -> None:
        super().__init__(f"no provider available ({'; '.join(reasons)}); retry in {retry_after:.1f}s")
        self.reasons = reasons
        self.retry_after = retry_after
        #: when only open breakers stood in the way: the refusal of the one that may be probed first
        self.breaker = breaker


class BudgetExceededError(UltraTasksError):
    """The tenant's budget for the period cannot hold this job's worst-case cost (billing/): at submit,
    when its settled spend already leaves no room (the API answers 429 ``insufficient_quota``); on a
    worker, when the reservation does not fit now (the job is parked for cause ``budget``).
    ``retry_after``: seconds until it may fit (reservations settle, or the period rolls over)."""

    def __init__(self, tenant: str, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.retry_after = retry_after


class ApiError(UltraTasksError):
    """An HTTP API request refused, rendered as OpenAI renders errors:
    ``{"error": {"message", "type", "param", "code"}}`` with ``status`` as the HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
