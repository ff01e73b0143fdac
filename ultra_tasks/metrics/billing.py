"""Fleet-wide cost and token counters by tenant and model, recorded by the workers as each call is
entered in the ledger (billing/meter.py) and batched into one Redis hash (metrics/buffer.py); the fleet
reader turns them into ``ultra_billing_*`` families. Labels are bounded: models beyond the fleet's cap
of tracked names count as ``other``, and so do tenants beyond MAX_TENANT_LABELS in a process.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING

from ultra_tasks import keys
from ultra_tasks.metrics.buffer import BUFFER, MetricsBuffer
from ultra_tasks.metrics.jobs import field
from ultra_tasks.model_names import OTHER, tracked_model

if TYPE_CHECKING:
    from ultra_tasks.billing.ledger import Entry

#: distinct tenants one process labels series with; the rest count as "other"
MAX_TENANT_LABELS = 200
#: the label of calls of jobs without a tenant (Python and CLI producers)
NO_TENANT = "none"

_tenants: set[str] = set()
_lock = threading.Lock()


def tenant_label(tenant: str | None) -> str:
    if not tenant:
        return NO_TENANT
    with _lock:
        if tenant in _tenants:
            return tenant
        if len(_tenants) < MAX_TENANT_LABELS:
            _tenants.add(tenant)
            return tenant
    return OTHER


@lru_cache(maxsize=4096)
def _fields(tenant: str, model: str, status: str) -> tuple[str, str, str, str, str]:
    """The hash fields of one (tenant, model, status), made once: JSON for every call would cost each job."""
    return (
        field("calls", tenant, model, status),
        field("tokens", tenant, model, "input"),
        field("tokens", tenant, model, "output"),
        field("cost_nusd", tenant, model),
        field("uncosted", tenant, model),
    )


def count_call(entry: Entry, *, buffer: MetricsBuffer = BUFFER) -> None:
    """One ledger entry into the fleet counters (never raises: metrics must not fail a call)."""
    try:
        calls, inp, out, cost, uncosted = _fields(
            tenant_label(entry.tenant), tracked_model(entry.model or "unknown"), entry.status
        )
        key = keys.metrics_billing()
        buffer.incr(key, calls)
        if entry.input_tokens:
            buffer.incr(key, inp, entry.input_tokens)
        if entry.output_tokens:
            buffer.incr(key, out, entry.output_tokens)
        if entry.cost_nusd is not None:
            buffer.incr(key, cost, entry.cost_nusd)
        elif entry.status != "error":
            buffer.incr(key, uncosted)
    except Exception:  # a call is counted nowhere rather than failing its job
        return
