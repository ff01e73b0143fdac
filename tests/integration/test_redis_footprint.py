"""Redis holds live work only: after a drained run, no family of keys has grown with the number of jobs
run (the job table is where finished jobs are kept)."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from keyspace import families as key_families
from keyspace import family_of

from ultra_tasks import keys, submit
from ultra_tasks.api.auth import _check_rate
from ultra_tasks.api.tenants import TenantInfo
from ultra_tasks.config import get_settings, load_settings
from ultra_tasks.health.tasks import health_check
from ultra_tasks.jobs.lease import tombstone_s
from ultra_tasks.resilience.concurrency import ConcurrencyLimiter
from ultra_tasks.resilience.ratelimit import RateLimiter

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("closed_provider_breakers")]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(r"[0-9a-f]{16,}")
_NUMBER = re.compile(r"\d+")
#: a short job life for this test's worker, so its finished jobs' lease tombstones lapse within seconds
#: keys a family may gain between the two drains without growing with the number of jobs
GROWTH = 3
WORKER_ENV = {"JOB_TIME_LIMIT": "15", "JOB_SOFT_TIME_LIMIT": "10", "JOB_LEASE_TTL": "3"}


def family(key: str) -> str:
    """A key with the ids in it (job ids, digests, numbers) replaced by placeholders."""
    return _NUMBER.sub("<n>", _HEX.sub("<hex>", _UUID.sub("<id>", key)))


def families(client: Any) -> Counter[str]:
    return Counter(family(k) for k in client.scan_iter(count=1000))


def run_and_drain(n: int, tag: str) -> list[str]:
    handles = [submit(f"footprint {tag} {i}", model="gpt-4o-mini") for i in range(n)]
    for handle in handles:
        handle.result(timeout=120)
    return [handle.id for handle in handles]


def test_no_redis_key_family_grows_with_the_number_of_jobs_run(
    worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    worker_factory(concurrency=8, env=WORKER_ENV)
    # how long a finished job's last key (its lease tombstone) outlives the job, on this worker
    settle_s = tombstone_s(load_settings(**{k.lower(): v for k, v in WORKER_ENV.items()})) + 2

    ran = run_and_drain(60, "a")
    time.sleep(settle_s)
    after_60 = families(redis_client)
    ran += run_and_drain(120, "b")
    time.sleep(settle_s)
    after_180 = families(redis_client)

    # The cache level has its own bound (CACHE_DEFAULT_TTL, and Redis' maxmemory): every entry expires.
    cache = keys.cache_prefix()
    cache_entries = [k for k in redis_client.scan_iter(match=f"{cache}*", count=1000)]
    assert all(redis_client.ttl(k) > 0 for k in cache_entries)
    # A family of per-job keys that leaks grows by a share of the 120 jobs run in between; one that is per
    # model or per process (a provider's latency window, first written when it is first flushed) may
    # appear once in between, and is no growth with the number of jobs.
    grown = {
        f: (after_60.get(f, 0), n)
        for f, n in after_180.items()
        if n - after_60.get(f, 0) >= GROWTH and not f.startswith(family(cache))
    }
    assert grown == {}, f"key families that grew from 60 to 180 jobs run (count after 60, after 180): {grown}"
    # and the result backend stores nothing for a job (other tests' operations may have stored theirs)
    assert not any(redis_client.exists(f"celery-task-meta-{job_id}") for job_id in ran)


def test_every_key_written_is_named_in_keys_py_and_expires_unless_it_names_an_owner(
    worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    # Given the keys of the namespace before
    worker_factory(concurrency=2)
    namespace = get_settings().ultra_redis_namespace
    before = set(redis_client.scan_iter(match=f"{namespace}:*", count=1000))
    # When jobs run (leases, cache, latencies, metrics, tracked names, admission, rollups, breakers,
    # liveness) and the writers off the job path write too: a tenant's rpm, a deployment's concurrency
    # cap, a fleet-wide rate limit, beat's health check
    handles = [submit(f"keys {i} {uuid.uuid4()}", model="gpt-4o-mini", temperature=0) for i in range(5)]
    for handle in handles:
        handle.result(timeout=30)
    health_check()
    _check_rate(TenantInfo(f"t-{uuid.uuid4().hex[:8]}", "footprint", rpm=1000, budget_usd=None))
    token = ConcurrencyLimiter(redis_client).acquire(f"footprint-{uuid.uuid4().hex[:6]}", 2, 5.0)
    limited = f"footprint-{uuid.uuid4().hex[:6]}"  # one request a minute: its key outlives the scan below
    assert RateLimiter(redis_client, {limited: {"rpm": 1}}).acquire(limited, 1) == 0.0
    written = set(redis_client.scan_iter(match=f"{namespace}:*", count=1000)) - before
    assert token is not None and written
    # Then each is named by a keys.py function, and one whose docstring says it expires has a TTL
    known = key_families()
    unnamed = sorted(k for k in written if family_of(k, known) is None)
    assert not unnamed, f"keys written that no keys.py function names: {unnamed}"
    without_ttl = sorted(
        (k, family.function)
        for k in written
        if (family := family_of(k, known)) is not None
        and family.lifetime == "expires"
        and redis_client.ttl(k) == -1
    )
    assert not without_ttl, f"keys documented as expiring that have no TTL: {without_ttl}"
    assert {f.function for k in written if (f := family_of(k, known))} >= {
        "job_lease",
        "cache_entry",
        "api_rate",
        "deployment_slots",
        "rate_limit",
    }
