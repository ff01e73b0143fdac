"""Fleet-wide cost and token counters by tenant and model, recorded by the workers as each call is
entered in the ledger (billing/meter.py) and batched into one Redis hash (metrics/buffer.py); the fleet
reader turns them into ``ultra_billing_*`` families. Labels are bounded: models beyond the fleet's cap
of tracked names count as ``other``, and so do tenants beyond MAX_TENANT_LABELS in a process.
"""

from __future__ import annotations

import threading
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


def count_call(entry: Entry, *, buffer: MetricsBuffer = BUFFER) -> None:
    """One ledger entry into the fleet counters (never raises: metrics must not fail a call)."""
    try:
        labels = (tenant_label(entry.tenant), tracked_model(entry.model or "unknown"))
        key = keys.metrics_billing()
        buffer.incr(key, field("calls", *labels, entry.status))
        if entry.input_tokens:
            buffer.incr(key, field("tokens", *labels, "input"), entry.input_tokens)
        if entry.output_tokens:
            buffer.incr(key, field("tokens", *labels, "output"), entry.output_tokens)
        if entry.cost_nusd is not None:
            buffer.incr(key, field("cost_nusd", *labels), entry.cost_nusd)
        elif entry.status != "error":
            buffer.incr(key, field("uncosted", *labels))
    except Exception:
        pass
