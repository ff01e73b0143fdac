"""Every Redis key and channel ultra-tasks uses, under one configurable namespace (ULTRA_REDIS_NAMESPACE).

Celery's own keys (queues named below, ``unacked*``, ``_kombu.binding.*``, and ``celery-task-meta-*`` of
queued operations only: LLM jobs store nothing in the result backend) are managed by kombu and the result
backend; everything else lives here so an operator can find, inspect or clear it.

Each key's docstring says how long it lives: "with expiry" (and when), or "Owner:" the module that
deletes it, or keeps it to a fixed size, when it has no expiry. tests/unit/test_keys.py holds every key
here to that, and tests/integration/test_redis_footprint.py checks that what the running code writes is
named here and expires when its docstring says so.

Every key named after one job lives no longer than the job's work: a lease until a few minutes after the
outcome, a parked entry until release, an outcome only while its record write waits for the database.
tests/integration/test_redis_footprint.py fails on any key family that grows with the number of jobs run.
"""

from __future__ import annotations

from ultra_tasks.config import get_settings

#: Celery queues: LLM jobs consumed in this strict order, then operational tasks.
QUEUE_HIGH = "llm.high"
QUEUE_DEFAULT = "llm.default"
QUEUE_LOW = "llm.low"
QUEUE_OPS = "ops"
LLM_QUEUES = (QUEUE_HIGH, QUEUE_DEFAULT, QUEUE_LOW)
PRIORITY_QUEUES = {"high": QUEUE_HIGH, "default": QUEUE_DEFAULT, "low": QUEUE_LOW}


def _ns() -> str:
    return get_settings().ultra_redis_namespace


def breaker(name: str) -> tuple[str, str, str, str]:
    """Keys of one circuit breaker: state hash, probe leases, metrics hash, failure-rate window.

    The ``{name}`` hash tag keeps all four in one cluster slot, as the breaker's Lua script requires.
    The probe leases and the window expire; the state and metrics have no expiry (a breaker forced open
    must stay so through a quiet spell). Owner: resilience/breaker.py; one set per deployment (and per
    tracked model under CIRCUIT_BREAKER_SCOPE=model), deleted by ``ultra breakers forget``.
    """
    base = f"{_ns()}:cb:{{{name}}}"
    return base, f"{base}:leases", f"{base}:metrics", f"{base}:window"


def breaker_index() -> str:
    """Set of every breaker name in use (for `ultra breakers list` and metrics). Owner:
    resilience/breaker.py; ``ultra breakers forget`` removes a name."""
    return f"{_ns()}:cb:index"


def breaker_events() -> str:
    """Pub/sub channel: one JSON message per breaker state change, published by the script that made it."""
    return f"{_ns()}:cb:events"


def park_carriers(breaker: str, generation: int) -> str:
    """Counter: jobs parked against one open state of a breaker (its generation); the first
    CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS are due when it may be probed (jobs/parking.py). Expires."""
    return f"{_ns()}:parked:carriers:{breaker}:{generation}"


def breaker_notices() -> str:
    """Pub/sub channel: a closed breaker's first failure after a success (JSON: name, gen), so processes
    that trust a cached "closed, no failures" verdict send their next success, which resets the count."""
    return f"{_ns()}:cb:notices"


def cache_entry(namespace: str, key: str) -> str:
    """String with expiry: one cached value (JSON envelope), level 3; it expires with the entry's TTL, at
    most CACHE_REDIS_MAX_TTL seconds (cache/redis_level.py)."""
    return f"{_ns()}:cache:{namespace}:{key}"


def cache_namespace_prefix(namespace: str) -> str:
    return f"{_ns()}:cache:{namespace}:"


def cache_prefix() -> str:
    """What every level-3 cache entry's key starts with (``cache_prefix() + namespace + ":" + key``)."""
    return f"{_ns()}:cache:"


def cache_invalidations() -> str:
    """Pub/sub channel: {"namespace", "key"} invalidations every process applies to its memory level."""
    return f"{_ns()}:cache:invalidate"


def cache_fill_lock(namespace: str, key: str) -> str:
    """Lock with expiry (the filler's lease): held by the one worker computing a missing entry while
    identical jobs wait for it."""
    return f"{_ns()}:cache-lock:{namespace}:{key}"


def latencies(provider: str, model: str) -> str:
    """List: recent call latencies (s) of a provider and a tracked model (model_names.py), newest first,
    capped at timeouts.HISTORY; expires a week after its last sample."""
    return f"{_ns()}:latency:{provider}:{model}"


def tracked_models() -> str:
    """Set: the model names the fleet keeps state of their own for (metrics labels, adaptive timeouts,
    latency lists). Owner: model_names.py, which keeps it to MAX_TRACKED_MODELS names; no expiry."""
    return f"{_ns()}:models:tracked"


def deployment_slots(deployment: str) -> str:
    """Sorted set with expiry (a minute past the last call's lease): a deployment's calls in flight across
    the fleet (member: a call's token, score: when its lease lapses), for its ``max_concurrency``
    (resilience/concurrency.py)."""
    return f"{_ns()}:slots:{deployment}"


def rate_limit(provider: str, kind: str) -> str:
    """String with expiry (once the limit is full again): the GCRA 'theoretical arrival time' of a
    provider's fleet-wide limit (kind: rpm or tpm).

    The ``{provider}`` hash tag keeps a provider's limits in one cluster slot for the script that checks
    them together.
    """
    return f"{_ns()}:ratelimit:{{{provider}}}:{kind}"


def provider_unavailable(provider: str) -> str:
    """String with expiry: why a provider is skipped (quota exhausted) until the key expires."""
    return f"{_ns()}:unavailable:{provider}"


def mode_current() -> str:
    """Hash: the current operation mode mirrored from SQL (mode, reasons, changed_at) for cheap reads.
    Owner: mode/operation_mode.py, which rewrites this one key at each change; no expiry."""
    return f"{_ns()}:mode:current"


def mode_events() -> str:
    """Pub/sub channel: one JSON message per operation mode change."""
    return f"{_ns()}:mode:events"


def health_tick(interval_index: int) -> str:
    """String with expiry (three intervals): claimed by the one health-check run of a beat interval (so a
    second beat changes nothing)."""
    return f"{_ns()}:health:tick:{interval_index}"


def health_runs() -> str:
    """Counter of health-check runs that did the work (one per interval). Owner: health/tasks.py; one key,
    no expiry."""
    return f"{_ns()}:health:runs"


def admitted(priority: str) -> str:
    """Sorted set: ids of the jobs of ``priority`` (high, default, low) that were admitted and have not
    reached a final state (queued, running or parked), scored by their admission time (Redis time, ms).
    The three sets together are what QUEUE_MAX_SIZE bounds (jobs/admission.py). The ``{admission}`` hash
    tag keeps them and ``admission_synced`` in one cluster slot, as the admission script requires.
    Owner: jobs/admission.py, which removes a job when it ends (and the sweeper's reconciliation)."""
    return f"{_ns()}:{{admission}}:admitted:{priority}"


def admission_synced() -> str:
    """String: present while the ``admitted`` sets hold every live job of the job table. Rebuilding them
    from the table sets it; a Redis restart or flush loses it, so nothing is admitted against sets that
    forgot jobs until they are rebuilt. Owner: jobs/admission.py; one key, no expiry."""
    return f"{_ns()}:{{admission}}:synced"


def admission_keys() -> list[str]:
    """Every key of the admission bound (what clearing it must delete)."""
    return [*(admitted(p) for p in PRIORITY_QUEUES), admission_synced()]


def parked(queue: str) -> str:
    """Sorted set: ids of jobs parked off ``queue`` (one of LLM_QUEUES), scored by the time (epoch seconds)
    they are due to be released back onto it. Parked jobs hold no worker slot and keep their queue.
    Owner: jobs/parking.py, whose releasers remove each job they release."""
    return f"{_ns()}:parked:{queue}"


#: what a job can be parked for; each has a set per queue (``parked_for``). jobs/parking.py says what each
#: means and what releases it.
PARK_CAUSES = ("provider", "mode", "slot", "budget")


def parked_for(queue: str, cause: str) -> str:
    """Sorted set: the jobs of ``parked(queue)`` parked for ``cause`` (one of PARK_CAUSES), with the
    same scores: what a wake for that cause releases before they are due. Owner: jobs/parking.py."""
    return f"{_ns()}:parked:{queue}:{cause}"


def parked_jobs() -> str:
    """Hash: job id → JSON {"queue", "payload", "reason", "cause", "parked_at"} of every parked job, so a
    job can be released with no SQL read (the database may be the thing that is down). Owner:
    jobs/parking.py, which deletes a job's field when it releases the job."""
    return f"{_ns()}:parked:jobs"


def parked_inflight() -> str:
    """Sorted set: parked jobs being released, scored by when the releaser's lease lapses (a job whose
    releaser died goes back to its parked set then). Owner: jobs/parking.py."""
    return f"{_ns()}:parked:inflight"


def parking_keys() -> list[str]:
    """Every key that holds parked jobs (not the wake channel): what clearing them all must delete."""
    per_queue = [k for q in LLM_QUEUES for k in (parked(q), *(parked_for(q, c) for c in PARK_CAUSES))]
    return [parked_jobs(), parked_inflight(), *per_queue]


def parked_ramp(event: str) -> str:
    """String with expiry (an hour): the recovery event ``event`` (a breaker's transition, a mode change)
    has had its parked jobs rescheduled into a ramp, by the first releaser that heard it."""
    return f"{_ns()}:parked:ramp:{event}"


def parked_wake() -> str:
    """Pub/sub channel: a message here makes every releaser release all parked jobs now, not at their due
    time (releasers also wake on breaker and mode events that mean work can run again)."""
    return f"{_ns()}:parked:wake"


def metrics_jobs() -> str:
    """Hash: fleet-wide job counters (finished per status and model, fallback use), HINCRBY'd by workers
    in batches (ultra_tasks/metrics/buffer.py); fields are JSON label lists. Owner: metrics/jobs.py, whose
    labels are bounded (statuses x tracked models); no expiry (counters only grow, as Prometheus wants)."""
    return f"{_ns()}:metrics:jobs"


def metrics_job_latency() -> str:
    """Hash: fleet-wide job latency histogram per provider, model and cached: per-bucket counts, sum and
    count, HINCRBY'd by workers in batches; fields are JSON label lists. Owner: metrics/jobs.py, whose
    labels are bounded (deployments x tracked models x cached); no expiry."""
    return f"{_ns()}:metrics:job-latency"


def metrics_cache() -> str:
    """Hash: fleet-wide cache counters per level ("memory:hits", "redis:misses", ...), flushed in batches
    from every process's in-process counters. Owner: metrics/cache.py; fields bounded (levels x
    counters); no expiry."""
    return f"{_ns()}:metrics:cache"


def metrics_cache_sizes() -> str:
    """Hash: process id → JSON sizes of that process's cache levels and when they were reported; entries
    not refreshed for a minute belong to processes that are gone. Owner: fleet/cache.py, which deletes
    those whenever it reads the hash (metrics scrapes, the status page, `ultra cache stats`)."""
    return f"{_ns()}:metrics:cache-sizes"


def worker_alive(identity: str) -> str:
    """String with expiry: present while the worker process ``identity`` (node name/pid) beats, holding
    JSON {"queues": [...]} (the queues it consumes), for operators and for ``ultra submit`` to say when no
    live worker consumes a job's queue; takeovers follow the job leases, not this key (jobs/liveness.py)."""
    return f"{_ns()}:worker:alive:{identity}"


def workers_seen() -> str:
    """Sorted set: worker process identity -> Redis time (ms) of its last liveness beat; beat's reaper
    takes a worker whose beat is WORKER_DEAD_AFTER old for dead (jobs/reaper.py). Owner: jobs/reaper.py,
    which removes a worker it took for dead; a worker that stops cleanly removes itself."""
    return f"{_ns()}:workers:seen"


def reaper_round() -> str:
    """String with expiry: Redis time (ms) of the reaper's last round; a round after a gap judges nobody."""
    return f"{_ns()}:workers:reaper-round"


def worker_alive_pattern() -> str:
    """SCAN pattern matching every ``worker_alive`` key."""
    return f"{_ns()}:worker:alive:*"


def rollup_minute(minute: str) -> str:
    """Hash with expiry (ROLLUP_TTL_S in status/rollup.py, a bit over a day): the fleet's figures of one
    UTC minute (``minute`` is yyyymmddHHMM): jobs finished per status and wait/run histograms (HINCRBY'd
    by workers in batches), and queue depths, parked jobs, breaker and cache counters and the mode
    (sampled by beat's health check and the status page). Read by the status page's plots."""
    return f"{_ns()}:rollup:{minute}"


def record_buffer() -> str:
    """List: job-record writes made while the database was unreachable, oldest first (JSON), applied in
    order when it answers again. Owner: jobs/record_buffer.py, whose flusher removes each write it
    applied."""
    return f"{_ns()}:db:buffer"


def record_buffer_inflight() -> str:
    """List: the buffered write a flusher is applying (back to the head of the buffer if it dies). Owner:
    jobs/record_buffer.py."""
    return f"{_ns()}:db:buffer:inflight"


def record_buffer_seq() -> str:
    """Counter: the sequence number of the next buffered job-record write (entries say their order).
    Owner: jobs/record_buffer.py; one key, no expiry."""
    return f"{_ns()}:db:buffer:seq"


def record_buffer_lock() -> str:
    """Lock with expiry: held by the one process flushing the write buffer."""
    return f"{_ns()}:db:buffer:lock"


def job_lease(job_id: str) -> str:
    """Hash: the lease of the run holding a job (owner, fencing token, expiry in Redis time ms) and the
    provider calls made for the job so far, across runs. Expires a day after its last write, and
    max(JOB_TIME_LIMIT, 5 x JOB_LEASE_TTL) after the job's final outcome; ``ultra jobs retry`` deletes it
    (jobs/lease.py)."""
    return f"{_ns()}:job:lease:{job_id}"


def job_outcome(job_id: str) -> str:
    """String with expiry (JOB_OUTCOME_BUFFER_TTL minutes): a job's final outcome (JSON) while its record
    write waits in the write buffer (the database is down), for ``JobHandle`` and a redelivered run to
    read; deleted when the write lands (jobs/outcome_buffer.py)."""
    return f"{_ns()}:job:outcome:{job_id}"


def operation_done(request_id: str) -> str:
    """String with expiry (a week): a queued operation (``PersistentRequestQueue``) that ran to the end,
    so a copy of its message sent again (a spool replayed twice) does nothing."""
    return f"{_ns()}:op:done:{request_id}"


def mode_buffer() -> str:
    """List: component statuses and mode transitions decided while the database was unreachable (JSON),
    written to SQL by the next evaluation that reaches it. Owner: mode/operation_mode.py, which trims
    what it wrote."""
    return f"{_ns()}:mode:buffer"


def jobs_finished() -> str:
    """Pub/sub channel: the id of each job whose final outcome was just recorded (published by the same
    script that frees its admission slot), for the HTTP API's waiters (api/waiter.py)."""
    return f"{_ns()}:jobs:finished"


def api_rate(tenant_id: str, minute: int) -> str:
    """Counter with expiry (two minutes): the HTTP API requests of one tenant in one minute (its rpm)."""
    return f"{_ns()}:api:rpm:{tenant_id}:{minute}"


def billing_book(tenant_id: str, period: str) -> tuple[str, str, str, str]:
    """Keys of one tenant's budget in one period (``d20261201``, ``m202612``; billing/book.py): the totals
    hash (settled spend and open reservations, nano-USD, and whether it was built from the ledger), the
    open reservations by deadline (sorted set, Redis ms), their amounts (hash), and reservations that
    lapsed and were counted at their worst case (hash), so a late settlement corrects the count. One
    hash tag: the book's Lua scripts touch all four. Expire a while after their period ends."""
    base = f"{_ns()}:billing:{{{tenant_id}:{period}}}"
    return base, f"{base}:res", f"{base}:amt", f"{base}:lapsed"


def budget_events() -> str:
    """Pub/sub channel: a tenant's budget was set or raised (JSON {"tenant"}); releasers release the jobs
    parked for cause ``budget`` at once, and they check their reservation again."""
    return f"{_ns()}:billing:events"


def metrics_billing() -> str:
    """Hash: fleet-wide calls, tokens and cost (nano-USD) by tenant and model, HINCRBY'd by workers in
    batches (metrics/billing.py); fields are JSON label lists. Owner: metrics/billing.py, whose labels are
    bounded (tenants a process labels x tracked models); no expiry (counters only grow)."""
    return f"{_ns()}:metrics:billing"
