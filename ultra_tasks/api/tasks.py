"""Beat's part in the HTTP API: batches whose lines are done are finished even when nobody reads them."""

from __future__ import annotations

import logging

from ultra_tasks.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="ultra.ops.finish_batches", ignore_result=True)
def finish_batches() -> int:
    """Write the files of batches whose lines all ended, expire lines past their batch's window.
    Idempotent: a batch is finished by one conditional update, whoever runs first."""
    from ultra_tasks.api.batch_store import finish_due

    ended = finish_due()
    if ended:
        log.info("finished %d batch(es)", ended)
    return ended
