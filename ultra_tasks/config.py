"""Typed settings, read once from the environment (and a ``.env`` file).

Variable names and defaults are public API that deployments rely on; local paths live under ``./var/``
(``ULTRA_VAR_DIR``). Each setting's ``#:`` comment is its documentation: docs/configuration.md is generated
from this module (scripts/gen_config_doc.py). A malformed value raises ``ConfigurationError`` naming the
variable and what was expected, so a bad deploy stops at start-up rather than at the first job.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ultra_tasks.errors import ConfigurationError
from ultra_tasks.redaction import MASK, redact_value
from ultra_tasks.redaction import redact_url as redact_url  # callers import it from here

_BROKER_SCHEMES = {"redis", "rediss", "amqp", "amqps", "pyamqp", "sentinel"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
#: the LLM queues (keys.py owns the names; repeated here because keys.py imports this module)
_LLM_QUEUE_NAMES = ("llm.high", "llm.default", "llm.low")
_HTTP_SCHEMES = {"http", "https"}
#: the deployments file read when PROVIDERS_FILE is unset and it exists (relative to the working directory)
DEFAULT_PROVIDERS_FILE = "providers.yaml"
#: Variables whose values are never echoed in error messages or `ultra config`.
SECRET_FIELDS = {
    "openai_api_key",
    "anthropic_api_key",
    "openai_compat_api_key",
    "flower_basic_auth",
    "mode_webhook_url",  # webhook URLs often carry their token in the path
    "status_token",
}
#: a field named like this is a secret too (e.g. ULTRA_SECRET_KEY, ULTRA_SECRET_KEY_PREVIOUS)
_SECRET_NAME = re.compile(r"(^|_)(key|token|secret|password|passwd|auth)(_|$)")


def is_secret_field(name: str) -> bool:
    """Whether the setting ``name`` (field or variable name) holds a secret that is never shown."""
    name = name.lower()
    return name in SECRET_FIELDS or bool(_SECRET_NAME.search(name))


class ShedAt(BaseModel):
    """QUEUE_SHED_AT: the share of QUEUE_MAX_SIZE up to which each priority is admitted. Work of a lower
    priority is shed first, so a queue filled with bulk work still has room for urgent work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float = Field(default=0.7, gt=0, le=1)
    default: float = Field(default=0.9, gt=0, le=1)
    high: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ShedAt:
        if not self.low <= self.default <= self.high:
            raise ValueError(
                f"shares must not fall as priority rises (low <= default <= high), got low={self.low:g}, "
                f"default={self.default:g}, high={self.high:g}"
            )
        return self

    def share(self, priority: str) -> float:
        return float(getattr(self, priority))

    def __str__(self) -> str:
        return f"low={self.low:g},default={self.default:g},high={self.high:g}"


def _require_scheme(value: str | None, schemes: set[str], what: str) -> str | None:
    if value is None or value == "":
        return None
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise ValueError(f"expected a {what} URL with a scheme in {sorted(schemes)}")
    return value


class Settings(BaseSettings):
    """All configuration of ultra-tasks. Field ``foo_bar`` is read from env var ``FOO_BAR``."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- circuit breakers
    #: consecutive failures, fleet-wide, that open a breaker
    circuit_breaker_failure_threshold: int = Field(5, ge=1)
    #: seconds an open breaker waits before a half-open probe
    circuit_breaker_reset_timeout: float = Field(60, gt=0)

    #: probes admitted at once fleet-wide while half-open
    circuit_breaker_half_open_max_calls: int = Field(1, ge=1)
    #: each repeated trip multiplies the open time by this (1 = constant), up to the maximum below
    circuit_breaker_reset_backoff: float = Field(1.0, ge=1)
    #: the longest an open breaker waits before a probe, however often it tripped (seconds)
    circuit_breaker_max_reset_timeout: float = Field(600, gt=0)
    #: seconds a half-open probe holds its lease: it must outlive the longest call a probe may make (the
    #: adaptive timeout's ceiling), or a second probe could start while the first still runs; a lease that
    #: lapses counts as a failed probe
    circuit_breaker_probe_lease: float | None = Field(None, gt=0)  #: default: longest call + 5
    #: seconds a worker trusts its cached "closed" verdict while it is not subscribed to the breaker
    #: events (Redis restarting, a network blip): the bound on how fast a trip reaches it then
    circuit_breaker_sync_interval: float = Field(0.25, gt=0, le=60)
    #: seconds a worker trusts its cached "closed" verdict while it is subscribed: a trip is pushed to it at
    #: once, so this only bounds the damage of a lost event and how late batched success counts arrive
    circuit_breaker_pushed_sync_interval: float = Field(10.0, gt=0, le=600)
    #: what breakers do when Redis is unreachable: local (in-process breaker), fail_open, fail_closed
    circuit_breaker_redis_down_policy: str = Field("local", pattern=r"^(local|fail_open|fail_closed)$")
    #: one breaker per provider, or per provider and model
    circuit_breaker_scope: str = Field("provider", pattern=r"^(provider|model)$")

    # --- retries
    #: tries at one fallback chain entry on a transient or rate-limited error
    retry_max_attempts: int = Field(3, ge=1)
    #: the first wait between tries (seconds), before jitter
    retry_initial_delay: float = Field(0.1, ge=0)
    #: the longest wait between tries (seconds)
    retry_max_delay: float = Field(2.0, ge=0)
    #: each wait is the previous one times this
    retry_backoff_factor: float = Field(2.0, ge=1)

    #: provider calls one job may make in all, across its fallback chain (default: RETRY_MAX_ATTEMPTS + 2)
    job_attempt_budget: int | None = Field(None, ge=1)
    #: longest Retry-After a worker waits for in place (seconds); a longer one moves on down the chain
    retry_after_max: float = Field(30.0, ge=0)
    #: seconds a provider that said its quota is exhausted is skipped when it did not say until when
    quota_cooldown: float = Field(300.0, gt=0)

    # --- cache
    #: entries each process keeps in its memory level
    cache_memory_size: int = Field(1000, ge=0)
    #: the disk level, shared by the processes of one machine
    cache_disk_dir: Path | None = None  #: default ./var/cache
    #: the Redis level of the job cache (the fleet's)
    cache_redis_url: str | None = None  #: default: REDIS_URL
    #: seconds an entry lives (0: as long as each level keeps it)
    cache_default_ttl: int = Field(3600, ge=0)
    #: the longest an entry lives in the Redis level (seconds), also one whose TTL is 0: Redis runs with
    #: noeviction, so entries that never expire would fill it
    cache_redis_max_ttl: int = Field(30 * 24 * 3600, ge=1)

    #: the job path's result cache (level 3 is CACHE_REDIS_URL, or REDIS_URL when that is unset)
    cache_enabled: bool = True
    #: also cache answers to requests that are not deterministic (temperature above 0 or unset)
    cache_nondeterministic: bool = False
    #: seconds identical jobs wait for the one computing an answer before they call the provider themselves
    cache_stampede_wait: float = Field(30.0, ge=0)

    # --- queues and parking
    #: the producer's spool for requests that could be neither recorded nor published (JSON lines)
    queue_storage_path: Path | None = None  #: default ./var/spool/requests.jsonl
    #: jobs the system holds at most (queued, running or parked); more are refused with QueueFullError
    queue_max_size: int = Field(1000, ge=1)
    #: the share of QUEUE_MAX_SIZE each priority may fill: a job is refused once the jobs held reach its
    #: priority's share ("low=0.7,default=0.9,high=1.0"; jobs/admission.py)
    queue_shed_at: Annotated[ShedAt, NoDecode] = Field(default_factory=lambda: ShedAt())
    #: jobs one LLM worker process runs at once (its thread count)
    queue_worker_count: int = Field(5, ge=1)
    #: seconds a low or default job may wait before the sweeper moves it one queue up (0: never)
    queue_starvation_age: float = Field(300.0, ge=0)
    #: how often each LLM worker looks for parked jobs that are due (seconds)
    park_release_poll: float = Field(1.0, gt=0, le=60)
    #: longest a parked job waits before it is looked at again, whatever it waits for (seconds)
    park_max_wait: float = Field(300.0, gt=0)
    #: recovery ramp: when a breaker closes or the mode improves, this many of the jobs parked for it go
    #: back at once, then twice as many every PARK_RAMP_INTERVAL seconds (not the whole backlog at once)
    park_ramp_first: int = Field(10, ge=1)
    #: seconds between the doublings of the recovery ramp
    park_ramp_interval: float = Field(1.0, gt=0, le=60)

    # --- operation modes: what each does to jobs
    #: in EMERGENCY only jobs from these queues run; the others are parked until the mode improves
    mode_emergency_run_queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["llm.high"])
    #: in DEGRADED, llm.low jobs start at most this often fleet-wide (jobs per minute; 0: not slowed)
    mode_degraded_low_rate: float = Field(60.0, ge=0)
    #: in DEGRADED and EMERGENCY, answer from the cache even requests that are not deterministic
    mode_prefer_cache: bool = True

    # --- infrastructure
    #: local state: the SQLite job table, the disk cache, the spool, the generated secret key
    ultra_var_dir: Path = Path("./var")
    #: Redis for the shared state (breakers, rate limits, cache, mode, leases); also the broker and the
    #: result backend unless they are set apart
    redis_url: str = "redis://localhost:6379/0"
    #: the Celery broker: Redis, or RabbitMQ (amqp://...; docs/rabbitmq.md)
    broker_url: str | None = None  #: default: REDIS_URL
    #: the Celery result backend (queued operations only; an LLM job's row is its result)
    result_backend_url: str | None = None  #: default: REDIS_URL
    #: prefix of every Redis key and channel, so several systems (or test sessions) share one Redis
    ultra_redis_namespace: str = Field("ultra", pattern=r"^[A-Za-z0-9_.-]+$")
    #: the job table, mode and component history (e.g. postgresql+psycopg2://user:pw@host/db)
    database_url: str | None = None  #: default: SQLite file ./var/ultra.db
    #: read replicas, comma-separated; reads that may be a moment old go there
    database_replica_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: connections each process keeps per database, and the extra ones it may open under load
    database_pool_size: int = Field(10, ge=1)
    database_max_overflow: int = Field(40, ge=0)
    #: seconds a caller waits for a pooled connection when all are busy, before DatabasePoolExhaustedError
    database_pool_timeout: float = Field(30.0, gt=0)
    #: seconds to open a database connection before giving up (PostgreSQL connect_timeout; libpq min 2)
    database_connect_timeout: int = Field(5, ge=1)
    #: milliseconds a statement may run before PostgreSQL cancels it (0: no limit; not applied to SQLite)
    database_statement_timeout_ms: int = Field(30_000, ge=0)
    #: tries at a transient database error (refused, dropped connection) and the seconds they may take
    database_retry_attempts: int = Field(3, ge=1)
    database_retry_max_time: float = Field(5.0, ge=0)
    #: connection failures in a row that open this process's database breaker, and seconds it stays open
    database_breaker_failure_threshold: int = Field(5, ge=1)
    database_breaker_reset_timeout: float = Field(10.0, gt=0)
    #: seconds a read replica that failed is skipped (its reads go to another replica or the primary)
    database_replica_down_for: float = Field(30.0, gt=0)

    # --- providers
    #: OpenAI's key and server; without a key (and no USE_FAKE_PROVIDER) OpenAI is "not configured"
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    #: Anthropic's key and server; without a key (and no USE_FAKE_PROVIDER) Anthropic is "not configured"
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    #: any OpenAI-compatible server (route models to it with MODEL_MAP); not configured without its base
    #: URL, never faked
    openai_compat_api_key: str | None = None
    openai_compat_base_url: str | None = None
    #: serve providers that have no API key from the local fake provider (`ultra up` and the tests choose
    #: it when no key is set); unset, such a provider is "not configured" and its jobs fail at once
    use_fake_provider: bool = False
    #: where the local fake provider listens (only with USE_FAKE_PROVIDER)
    fake_provider_url: str = "http://127.0.0.1:8787"
    #: the deployments file (YAML; docs/providers.md): every deployment, its kind, models, key reference
    #: and limits, and the fallbacks between models. Default: ./providers.yaml when it exists; without a
    #: file the variables above make one deployment per provider
    providers_file: Path | None = None
    #: extra model routes, JSON object {"glob pattern": "provider"} (without a deployments file)
    model_map: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    #: seconds one provider call may take until its model has latency history
    provider_timeout: float = Field(60.0, gt=0)
    #: adaptive timeouts: this percentile of recent latencies per provider and model ...
    adaptive_timeout_percentile: float = Field(95.0, gt=0, le=100)
    #: ... times this factor ...
    adaptive_timeout_factor: float = Field(3.0, ge=1)
    #: ... clamped to these bounds (seconds)
    adaptive_timeout_min: float = Field(2.0, gt=0)
    adaptive_timeout_max: float = Field(120.0, gt=0)
    #: latencies a model needs before its timeout adapts (PROVIDER_TIMEOUT until then)
    adaptive_timeout_min_samples: int = Field(20, ge=1)
    #: fallback chains, JSON {"model": ["provider:model", ...]}; unset models get the default chain
    fallback_chains: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    #: per-provider limits for the whole fleet, JSON {"openai": {"rpm": 500, "tpm": 200000}}
    provider_rate_limits: Annotated[dict[str, dict[str, float]], NoDecode] = Field(default_factory=dict)
    #: longest a call waits in place for a rate limit (seconds); beyond it the job is deferred
    rate_limit_max_wait: float = Field(10.0, ge=0)
    #: max_tokens of a job that does not set it
    default_max_tokens: int = Field(1024, ge=1)

    # --- jobs
    #: characters of input (prompt or messages) a job may carry
    max_input_chars: int = Field(200_000, ge=1)
    #: messages a job may carry (each adds to the payload and to a worker's parsing beyond its text)
    job_max_messages: int = Field(2048, ge=1, le=100_000)
    #: entries a job's own fallback chain (``chain=``) may name
    job_max_chain_length: int = Field(8, ge=1, le=64)
    #: bytes of a job's ``params`` and of its ``metadata``, as JSON
    job_max_params_bytes: int = Field(4096, ge=64, le=1_048_576)
    job_max_metadata_bytes: int = Field(16 * 1024, ge=64, le=1_048_576)
    #: seconds one job run may take (Celery's hard limit; the threads pool bounds a run by its calls'
    #: timeouts instead)
    job_time_limit: int = Field(300, ge=1)
    #: seconds before Celery's soft time limit interrupts a run
    job_soft_time_limit: int | None = None  #: default: JOB_TIME_LIMIT - 15
    #: seconds before an unacknowledged message is redelivered; must exceed JOB_TIME_LIMIT
    broker_visibility_timeout: int = Field(3600, ge=1)
    #: seconds a queued operation's (PersistentRequestQueue) result stays in the result backend; LLM jobs
    #: store nothing there (their job row is the result)
    job_result_ttl: int = Field(7 * 24 * 3600, ge=60)
    #: minutes a job's outcome stays readable in Redis while its record write waits in the write buffer
    #: (the database is down); the key is deleted as soon as the write lands
    job_outcome_buffer_ttl: int = Field(60, ge=1, le=7 * 24 * 60)
    #: how long finished jobs are kept in the job table (``30d``, ``12h``, ``90m``, a number of seconds;
    #: ``0`` or ``none``: forever); older ones are deleted in small batches on beat (jobs/retention.py)
    job_retention: float | None = 30 * 86400.0
    #: seconds a run's lease on its job lasts without renewal (renewed every third of it while the run
    #: lasts): how soon a job whose worker died can run elsewhere, not how long a run may take
    job_lease_ttl: float = Field(30.0, ge=3, le=600)
    #: seconds between a worker's liveness beats (a timestamp in Redis; its leases are renewed every third
    #: of JOB_LEASE_TTL, on the same thread)
    worker_heartbeat_interval: float = Field(1.0, ge=0.1, le=60)
    #: seconds without a liveness beat after which beat's reaper takes a worker for dead and sends its
    #: running jobs to other workers at once, rather than when their leases lapse; at least three beats.
    #: A worker cut off from Redis this long is taken for dead too (its calls then in flight may be made
    #: again; its writes are fenced)
    worker_dead_after: float = Field(6.0, ge=1, le=3600)

    #: signs every job message (HMAC-SHA256) between producers and workers; at least 32 characters. Unset:
    #: a key generated once into ULTRA_VAR_DIR/secret.key (the local stack). See docs/security.md.
    ultra_secret_key: str | None = Field(None, min_length=32)  #: default: generated
    #: during a rotation only: a key workers still accept (never used to sign)
    ultra_secret_key_previous: str | None = Field(None, min_length=32)

    # --- operations
    #: seconds between beat's health checks (and mode evaluations, sweeps)
    health_check_interval: float = Field(30.0, gt=0)
    #: Flower's credentials, user:password pairs comma-separated; beyond loopback a default is refused
    flower_basic_auth: str = Field("ultra:ultra", pattern=r"^[^:,]+:[^,]+(,[^:,]+:[^,]+)*$")
    #: Flower's port
    flower_port: int = Field(5555, ge=1, le=65535)
    #: port of the status page, its JSON and the fleet's /metrics (`ultra status-server`, `ultra up`)
    status_port: int = Field(8088, ge=1, le=65535)
    #: bearer token the status server requires on every path but /healthz (unset: none; then it may only
    #: listen on loopback). See docs/security.md.
    status_token: str | None = None
    #: seconds one read of the fleet's shared state may take in all (/metrics, the status page and its
    #: JSON, `ultra status`); a part not read by then is shown as unavailable, the others as read
    fleet_read_timeout: float = Field(5.0, gt=0)
    # --- HTTP API (`ultra api`)
    #: port of the OpenAI-compatible HTTP API
    api_port: int = Field(8000, ge=1, le=65535)
    #: seconds a chat completion waits for its job before answering 504 with the job's id
    api_wait_timeout: float = Field(60.0, gt=0, le=3600)
    #: largest request body the API reads (bytes), file uploads aside
    api_max_body_bytes: int = Field(1_048_576, ge=1024)
    #: largest file upload (bytes): a batch's JSON-lines input
    api_max_file_bytes: int = Field(50_000_000, ge=1024)
    #: most lines (requests) one batch input file may have
    api_batch_max_lines: int = Field(50_000, ge=1)
    #: seconds the API trusts a key it looked up (a revoked key is refused at most this late)
    api_key_cache_s: float = Field(2.0, ge=0, le=300)
    #: seconds a process trusts the tenants' budgets it read (a changed budget applies at most this late,
    #: at once in workers told by ``ultra budgets set``)
    budget_cache_s: float = Field(5.0, ge=0, le=300)
    #: seconds a job whose budget cannot hold it while other calls hold reservations waits before it
    #: checks again (those mostly settle below their worst case)
    budget_recheck_s: float = Field(2.0, gt=0, le=3600)
    #: connections the API serves at once; more are answered 503
    api_max_connections: int = Field(1000, ge=1)
    #: TLS certificate (PEM) the API serves; with API_TLS_KEYFILE, required beyond loopback
    api_tls_certfile: Path | None = None
    #: TLS private key (PEM) of API_TLS_CERTFILE
    api_tls_keyfile: Path | None = None
    #: the log level of every process
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error|critical)$")
    #: http(s) URL that receives each operation mode change as a JSON POST (retried; unset: none)
    mode_webhook_url: str | None = None

    @field_validator("redis_url", "cache_redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        return _require_scheme(v, _REDIS_SCHEMES, "Redis")

    @field_validator("broker_url", "result_backend_url")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        return _require_scheme(v, _BROKER_SCHEMES, "broker")

    @field_validator(
        "openai_base_url",
        "anthropic_base_url",
        "openai_compat_base_url",
        "fake_provider_url",
        "mode_webhook_url",
    )
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return _require_scheme(v, _HTTP_SCHEMES, "HTTP")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(v)
        except ArgumentError as exc:
            raise ValueError("expected an SQLAlchemy URL such as postgresql+psycopg2://user@host/db") from exc
        return v

    @field_validator("mode_emergency_run_queues", mode="before")
    @classmethod
    def _run_queues(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [q.strip() for q in v.split(",") if q.strip()]
        for queue in v or []:
            if queue not in _LLM_QUEUE_NAMES:
                raise ValueError(f"unknown queue {queue!r}; expected some of {', '.join(_LLM_QUEUE_NAMES)}")
        return v

    @field_validator("job_retention", mode="before")
    @classmethod
    def _retention(cls, v: Any) -> Any:
        from ultra_tasks.durations import parse_retention

        return parse_retention(v)

    @field_validator("queue_shed_at", mode="before")
    @classmethod
    def _shed_at(cls, v: Any) -> Any:
        """ "low=0.7,default=0.9" (or a JSON object); a priority left out keeps its default share."""
        if not isinstance(v, str):
            return v
        if v.strip().startswith("{"):
            try:
                return json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON object ({exc.msg})") from exc
        shares: dict[str, Any] = {}
        for part in (p.strip() for p in v.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in ShedAt.model_fields:
                raise ValueError(
                    f"expected priority=share pairs such as 'low=0.7,default=0.9,high=1.0', got {part!r}"
                )
            try:
                shares[name] = float(value)
            except ValueError:
                raise ValueError(f"the share of {name} is not a number: {value.strip()!r}") from None
            if not 0 < shares[name] <= 1:
                raise ValueError(f"the share of {name} must be above 0 and at most 1, got {value.strip()}")
        return shares

    @field_validator("database_replica_urls", mode="before")
    @classmethod
    def _replicas(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [part.strip() for part in v.split(",") if part.strip()]
        for url in v:
            cls._database_url(url)
        return v

    @field_validator("model_map", "fallback_chains", "provider_rate_limits", mode="before")
    @classmethod
    def _json_object(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                return {}
            try:
                v = json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON object ({exc.msg})") from exc
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.worker_dead_after < 3 * self.worker_heartbeat_interval:
            raise ValueError(
                "WORKER_DEAD_AFTER must be at least three WORKER_HEARTBEAT_INTERVALs, or a live worker "
                f"whose beat is late is taken for dead (got {self.worker_dead_after:g} < "
                f"3 x {self.worker_heartbeat_interval:g})"
            )
        if self.broker_visibility_timeout <= self.job_time_limit:
            raise ValueError(
                "BROKER_VISIBILITY_TIMEOUT must exceed JOB_TIME_LIMIT, or a running job is redelivered "
                f"while it still runs (got {self.broker_visibility_timeout} <= {self.job_time_limit})"
            )
        if self.adaptive_timeout_min > self.adaptive_timeout_max:
            raise ValueError("ADAPTIVE_TIMEOUT_MIN must not exceed ADAPTIVE_TIMEOUT_MAX")
        if self.job_soft_time_limit is not None and self.job_soft_time_limit >= self.job_time_limit:
            raise ValueError("JOB_SOFT_TIME_LIMIT must be below JOB_TIME_LIMIT")
        lease = self.circuit_breaker_probe_lease
        if lease is not None and lease <= self.longest_call_s:
            raise ValueError(
                "CIRCUIT_BREAKER_PROBE_LEASE must exceed the longest provider call, "
                f"max(PROVIDER_TIMEOUT, ADAPTIVE_TIMEOUT_MAX) = {self.longest_call_s:g}s, or a second probe "
                f"could start while the first still runs (got {lease:g})"
            )
        return self

    # --- derived values (one place, so every component agrees)
    @property
    def var_dir(self) -> Path:
        return self.ultra_var_dir.expanduser().resolve()

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend_url(self) -> str:
        return self.result_backend_url or self.redis_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'ultra.db'}"

    @property
    def effective_providers_file(self) -> Path | None:
        """The deployments file in use: PROVIDERS_FILE, else ./providers.yaml when it exists, else none."""
        if self.providers_file is not None:
            return self.providers_file
        default = Path(DEFAULT_PROVIDERS_FILE)
        return default if default.is_file() else None

    @property
    def effective_cache_disk_dir(self) -> Path:
        return self.cache_disk_dir or self.var_dir / "cache"

    @property
    def effective_queue_storage_path(self) -> Path:
        return self.queue_storage_path or self.var_dir / "spool" / "requests.jsonl"

    @property
    def longest_call_s(self) -> float:
        """The longest one provider call may take: PROVIDER_TIMEOUT before a model has latency history,
        ADAPTIVE_TIMEOUT_MAX after."""
        return max(self.provider_timeout, self.adaptive_timeout_max)

    @property
    def effective_probe_lease(self) -> float:
        return self.circuit_breaker_probe_lease or self.longest_call_s + 5

    @property
    def effective_attempt_budget(self) -> int:
        return self.job_attempt_budget or self.retry_max_attempts + 2

    @property
    def effective_soft_time_limit(self) -> int:
        if self.job_soft_time_limit is not None:
            return self.job_soft_time_limit
        return max(1, self.job_time_limit - 15)

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets and URL passwords masked, for display and logs."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if is_secret_field(name) and value:
                out[name.upper()] = MASK
            else:  # URL passwords also inside lists and dicts (DATABASE_REPLICA_URLS)
                out[name.upper()] = redact_value(value)
        return out


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in error.get("loc", ())) or "settings"
    name = field.split(".")[0].upper()
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if is_secret_field(name) or name == "SETTINGS":
        return f"{name}: {msg}" if name != "SETTINGS" else msg
    given = redact_value(error.get("input"))
    return f"{name}={given!r}: {msg}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise ConfigurationError naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e)) for e in exc.errors())
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()


def reset_settings() -> None:
    """Forget cached settings (tests and `ultra` subcommands that change the environment)."""
    get_settings.cache_clear()
