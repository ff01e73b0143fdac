"""The yardstick for scripts/bench_throughput.py: what a user would write without ultra-tasks, a plain
Celery task that calls the official OpenAI SDK and returns the text.

Only a benchmark's worker imports it (``celery worker --include bench_tasks`` with scripts/ on the path):
the product's workers do not register a task that calls a provider from an unsigned message.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import openai

from ultra_tasks.celery_app import app

_lock = threading.Lock()
_client: openai.OpenAI | None = None


def _openai() -> openai.OpenAI:
    global _client
    with _lock:
        if _client is None:
            _client = openai.OpenAI(
                api_key="bench", base_url=os.environ["FAKE_PROVIDER_URL"].rstrip("/") + "/v1"
            )
        return _client


@app.task(name="bench.plain_sdk")
def plain_sdk(job_id: str, payload: dict[str, Any]) -> str:
    completion = _openai().chat.completions.create(
        model=payload["model"], messages=payload["messages"], max_tokens=payload["max_tokens"], timeout=60
    )
    return completion.choices[0].message.content or ""
