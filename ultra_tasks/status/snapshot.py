"""The fleet snapshot as JSON: what `/status.json` and `ultra status --json` print, and what the status page
and `ultra status` render.

A part the snapshot lacks is left out of the JSON, and ``errors`` says why, by store when every part read
from it failed, else by part:

- Redis unreadable → ``breakers``, ``all_providers_down``, ``queues``, ``admission`` are left out, ``cache``
  is ``{}``, the mode comes from the database, and ``errors["redis"]`` says why (``errors["broker"]`` for a
  broker of its own);
- the database unreadable → ``components``, ``timeline``, ``queue_stats`` and ``job_table`` are left out,
  the mode comes from the Redis mirror, and ``errors["database"]`` says why;
- one part unreadable (a hung or refused read) → that part is left out and ``errors[<part>]`` says why.

With neither store readable the mode is ``"UNKNOWN"`` (``mode["source"]`` is None). Reasons and errors are
free text from checks, drivers and providers: URL passwords and secret settings are masked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis

from ultra_tasks.config import get_settings
from ultra_tasks.errors import ConfigurationError
from ultra_tasks.fleet import FleetSnapshot, Part, Store, read_fleet
from ultra_tasks.fleet.breakers import all_providers_down
from ultra_tasks.fleet.mode import iso
from ultra_tasks.fleet.read import DEFAULT_WINDOW_S
from ultra_tasks.fleet.snapshot import STORE_OF
from ultra_tasks.providers.status import deployment_rows, with_health
from ultra_tasks.redaction import known_secrets, redact_value


def fleet_snapshot(
    *,
    window_s: float = DEFAULT_WINDOW_S,
    redis_client: redis.Redis | None = None,
    timeout_s: float | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The fleet read now (``read_fleet``), as JSON; ``redis_client`` replaces both the state Redis and the
    broker."""
    snapshot = read_fleet(
        window_s=window_s, redis_client=redis_client, broker_client=redis_client, timeout_s=timeout_s, now=now
    )
    return snapshot_json(snapshot)


def snapshot_json(snapshot: FleetSnapshot) -> dict[str, Any]:
    """``snapshot`` as the JSON-safe dict the page, `ultra status` and scripts read (see the module doc)."""
    snap: dict[str, Any] = {"generated_at": iso(snapshot.generated_at), "mode": snapshot.mode.to_json()}
    if snapshot.components is not None:
        snap["components"] = [c.to_json() for c in snapshot.components]
    if snapshot.breakers is not None:
        snap["breakers"] = [b.to_json() for b in snapshot.breakers]
        snap["all_providers_down"] = all_providers_down(snapshot.breakers)
    if snapshot.queues is not None and snapshot.parked is not None:
        snap["queues"] = _queues(snapshot.queues, snapshot.parked)
    if snapshot.admission is not None:
        snap["admission"] = snapshot.admission.to_dict()
    if snapshot.queue_stats is not None:
        snap["queue_stats"] = dict(snapshot.queue_stats)
    if snapshot.job_table is not None:
        snap["job_table"] = dict(snapshot.job_table)
    snap["cache"] = snapshot.cache.to_json() if snapshot.cache is not None else {}
    if snapshot.budgets is not None:
        snap["budgets"] = [b.to_json() for b in snapshot.budgets]
    if snapshot.mode_history is not None:
        snap["timeline"] = [change.to_json() for change in snapshot.mode_history.timeline]
    errs = errors(snapshot)
    snap["deployments"] = _deployments(snap, errs)
    snap["errors"] = errs
    redacted: dict[str, Any] = redact_value(snap, known_secrets(get_settings()))
    return redacted


def _deployments(snap: dict[str, Any], errs: dict[str, str]) -> list[dict[str, Any]]:
    """Each provider deployment with its last probe's status and its breaker state."""
    try:
        rows = deployment_rows()
    except ConfigurationError as exc:
        errs["deployments"] = str(exc)
        return []
    return with_health(rows, snap.get("components"), snap.get("breakers"))


def _queues(depths: dict[str, int], parked: dict[str, int]) -> dict[str, dict[str, int]]:
    if set(depths) - set(parked) - {"ops"}:
        # RabbitMQ: the three LLM levels are one queue, "llm"; its parked jobs are those of all three
        return {
            q: {"depth": n, "parked": sum(parked.values()) if q == "llm" else 0} for q, n in depths.items()
        }
    return {q: {"depth": n, "parked": parked.get(q, 0)} for q, n in depths.items()}


def _store(part: Part, snapshot: FleetSnapshot) -> Store:
    store = STORE_OF[part]
    # the broker on the state Redis is one server: one outage, named once
    return Store.REDIS if store is Store.BROKER and snapshot.broker_is_state else store


def errors(snapshot: FleetSnapshot) -> dict[str, str]:
    """Why parts are missing: by store when every part read from it failed, else by part."""
    asked: dict[Store, list[Part]] = {}
    for part in snapshot.parts:
        asked.setdefault(_store(part, snapshot), []).append(part)
    out: dict[str, str] = {}
    for store, parts in asked.items():
        failed = [snapshot.unavailable[p] for p in parts if p in snapshot.unavailable]
        if failed and len(failed) == len(parts):
            out[store.value] = failed[0].reason
        else:
            out.update({u.part.value: u.reason for u in failed})
    return out
