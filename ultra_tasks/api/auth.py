"""Who is calling: the tenant of the request's key (``Authorization: Bearer <key>``), and its rate.

Lookups are cached in the process for API_KEY_CACHE_S (a revoked key is refused at most that late), so a
request costs no SQL round trip for its key. A tenant's ``rpm`` is counted fleet-wide in Redis, one
counter per tenant and minute; with Redis down the limit is not applied (logged), since every other part
of a request needs Redis anyway.
"""

from __future__ import annotations

import logging
import threading
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ultra_tasks import keys
from ultra_tasks.api.tenants import TenantInfo, hash_key, tenant_for_key
from ultra_tasks.config import get_settings
from ultra_tasks.errors import ApiError
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

log = logging.getLogger(__name__)

_cache: dict[str, tuple[float, TenantInfo | None]] = {}
_lock = threading.Lock()
#: cached lookups kept at most (unknown keys included, so a flood of bad keys cannot grow it unbounded)
_CACHE_MAX = 10_000


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _cached(digest: str) -> tuple[bool, TenantInfo | None]:
    with _lock:
        hit = _cache.get(digest)
    if hit is not None and hit[0] > time.monotonic():
        return True, hit[1]
    return False, None


def lookup(key: str) -> TenantInfo | None:
    """The key's tenant (None: unknown or revoked), from the cache while API_KEY_CACHE_S allows."""
    ttl = get_settings().api_key_cache_s
    digest = hash_key(key)
    if ttl > 0:
        found, tenant = _cached(digest)
        if found:
            return tenant
    tenant = tenant_for_key(key)
    if ttl > 0:
        with _lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[digest] = (time.monotonic() + ttl, tenant)
    return tenant


async def authenticate(request: Request) -> TenantInfo:
    """The calling tenant; ``ApiError`` 401 for a missing, unknown or revoked key, 429 over its rpm.
    A cached key costs no thread hop; the database and Redis are asked from the thread pool."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' (make one with "
            "`ultra keys create --tenant NAME`)."
        )
    tenant = None
    if len(key) <= 256:
        found, tenant = _cached(hash_key(key)) if get_settings().api_key_cache_s > 0 else (False, None)
        if not found:
            tenant = await run_in_threadpool(lookup, key)
    if tenant is None:
        # never echo the key: a shown prefix would do, but nothing about it helps the caller
        raise _unauthorized("Incorrect API key provided, or the key was revoked.")
    if tenant.rpm is not None:
        await run_in_threadpool(_check_rate, tenant)
    return tenant


def _check_rate(tenant: TenantInfo) -> None:
    minute = int(time.time() // 60)
    try:
        pipe = shared_redis().pipeline(transaction=False)
        pipe.incr(keys.api_rate(tenant.id, minute))
        pipe.expire(keys.api_rate(tenant.id, minute), 120)
        count = int(pipe.execute()[0])
    except REDIS_DOWN as exc:
        log.warning("tenant %s: rpm not applied, Redis unreachable (%s)", tenant.name, exc)
        return
    if count > (tenant.rpm or 0):
        retry = 60 - int(time.time()) % 60
        raise ApiError(
            429,
            f"Rate limit reached for tenant {tenant.name}: {tenant.rpm} requests per minute. "
            f"Try again in {retry} s.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )
