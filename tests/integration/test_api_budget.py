"""A tenant's budget through the HTTP API (a real `ultra api` process, a real worker, Redis, SQL and the fake
provider): a request its budget is known not to hold is refused with OpenAI's 429 ``insufficient_quota``,
and so is a request whose job is parked for its budget when the wait ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import openai
import pytest
from api_server import ApiServer
from conftest import ultra_cli

from ultra_tasks.billing import prices
from ultra_tasks.jobs import records
from ultra_tasks.providers.kinds.base import Price

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def api(llm_worker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    env = {"API_WAIT_TIMEOUT": "6", "BUDGET_CACHE_S": "0"}
    server = ApiServer(tmp_path_factory.mktemp("api"), env=env).start()
    yield server
    server.stop()


def _key(*budget: str) -> str:
    made = ultra_cli("keys", "create", "--tenant", f"budgeted-{uuid.uuid4().hex[:8]}", *budget)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


@pytest.mark.usefixtures("closed_provider_breakers")
def test_a_request_the_budget_cannot_hold_is_refused_with_openais_insufficient_quota(api: ApiServer) -> None:
    key = _key("--budget-usd", "0", "--period", "day")
    with pytest.raises(openai.RateLimitError) as info:
        api.client(key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "too dear"}], max_tokens=10
        )
    assert info.value.status_code == 429
    assert info.value.code == "insufficient_quota"
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "insufficient_quota" and body["param"] is None
    assert "budget" in body["message"] and "$0.000000" in body["message"]
    assert int(info.value.response.headers["Retry-After"]) >= 1


# The providers' breakers closed and an empty latency history: a call refused by a breaker an earlier test
# left open falls back to a dearer model, and one cut by a learned timeout keeps its worst case reserved;
# either way neither job fits next to the other
@pytest.mark.usefixtures("closed_provider_breakers", "fresh_latencies")
def test_a_request_whose_job_is_parked_for_its_budget_is_answered_429_naming_the_job(api: ApiServer) -> None:
    prompt = "[[sleep_ms=1500]] one of two"
    worst = prices.worst_case(Price(0.15, 0.60), len(prompt), 1, 20).nusd or 0
    # room for one call's worst case: the first reserves it; the second, accepted at the door (nothing is
    # settled yet), waits for the first and then cannot fit next to its cost
    key = _key("--budget-usd", f"{worst * 1.1 / prices.NANO:.9f}", "--period", "day")

    def ask(_: int) -> httpx.Response:
        return httpx.post(
            f"{api.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 20},
            timeout=60,
        )

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(ask, range(2)), key=lambda r: r.status_code)
    assert [r.status_code for r in answers] == [200, 429], [r.text for r in answers]
    refused = answers[1]
    assert refused.json()["error"]["code"] == "insufficient_quota"
    job_id = refused.headers["X-Job-Id"]
    row = records.get_job(job_id)
    assert row.status == "parked" and (row.status_reason or "").startswith("budget: ")
