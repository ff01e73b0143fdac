"""Budgets and the ledger through real Celery workers, Redis, SQL and the fake provider over HTTP: a budget
raced for by 200 jobs on two workers is used and never overspent; a worker killed with SIGKILL mid-batch
leaves a ledger that matches the provider's own count of completed calls, no call entered twice; jobs
parked for a budget run once it is raised; a redelivered job enters nothing again; unknown prices."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from conftest import TEST_REDIS_URL, ultra_cli, wait_for
from sqlalchemy import func, select

from ultra_tasks import JobHandle, JobStatus, keys, submit
from ultra_tasks.api.tenants import create_key
from ultra_tasks.billing import ledger, prices
from ultra_tasks.billing.book import Book
from ultra_tasks.billing.budgets import BudgetCache, period_id
from ultra_tasks.billing.ledger import ledger_t
from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import transaction
from ultra_tasks.errors import BudgetExceededError
from ultra_tasks.health import tasks as ops_tasks
from ultra_tasks.jobs import records
from ultra_tasks.jobs.submit import publish
from ultra_tasks.providers.fake_server import prompt_key
from ultra_tasks.providers.kinds.base import Price

pytestmark = pytest.mark.timeout(240)

MODEL = "gpt-4o-mini"
PRICE = Price(0.15, 0.60)
MAX_TOKENS = 20
#: workers recheck a budget held by other calls' reservations this often, and read budgets afresh
FAST = {"BUDGET_RECHECK_S": "0.3", "BUDGET_CACHE_S": "0"}


def _tenant(budget_usd: float | None, period: str = "day") -> tuple[str, str]:
    name = f"billing-{uuid.uuid4().hex[:8]}"
    create_key(name, budget_usd=budget_usd, budget_period=period)
    with transaction() as conn:
        from ultra_tasks.api.tenants import tenants_t

        tenant_id = conn.execute(select(tenants_t.c.id).where(tenants_t.c.name == name)).scalar_one()
    return name, str(tenant_id)


def _actual_nusd(prompt: str) -> int:
    """What the fake provider bills a job: its prompt's words in, "echo: " and the prompt out."""
    words = len(prompt.split())
    return int(prices.cost_nusd(PRICE, words, words + 1) or 0)


def _worst_nusd(prompt: str) -> int:
    return int(prices.worst_case(PRICE, len(prompt), 1, MAX_TOKENS).nusd or 0)


def _entries(tenant_id: str) -> list[Any]:
    with transaction() as conn:
        return list(conn.execute(select(ledger_t).where(ledger_t.c.tenant == tenant_id)).all())


def _budget_of(tenant_id: str) -> Any:
    budget = BudgetCache(0).get(tenant_id)
    assert budget is not None
    return budget


@pytest.mark.usefixtures("closed_provider_breakers")
def test_two_hundred_jobs_racing_for_a_budget_of_fifty_use_it_and_never_overspend_it(
    worker_factory: Any, fake_provider: Any
) -> None:
    prompts = [f"budget race job {i:03d}" for i in range(200)]
    actual, worst = _actual_nusd(prompts[0]), _worst_nusd(prompts[0])
    budget_nusd = 50 * actual
    _name, tenant_id = _tenant(budget_nusd / prices.NANO)
    worker_factory(concurrency=8, env=FAST)
    worker_factory(concurrency=8, env=FAST)

    def send(prompt: str) -> str | None:
        try:
            return submit(prompt, model=MODEL, max_tokens=MAX_TOKENS, cache=False, tenant=tenant_id).id
        except BudgetExceededError:
            return None  # refused at submit: the settled spend already left no room

    with ThreadPoolExecutor(16) as pool:
        ids = [i for i in pool.map(send, prompts) if i is not None]
    book = Book(redis.Redis.from_url(TEST_REDIS_URL))
    budget = _budget_of(tenant_id)

    swept = [time.monotonic()]

    def settled() -> bool:
        # what beat's sweeper does in a deployment (no beat runs here): a run an outage interrupted gave its
        # job back unpublished; if the task's retry could not be sent either, the sweeper sends it again
        if time.monotonic() - swept[0] > 3:
            ops_tasks.sweep()
            swept[0] = time.monotonic()
        totals = book.totals(budget)
        statuses = Counter(JobHandle(i).status() for i in ids)
        done = statuses[JobStatus.SUCCEEDED] + statuses[JobStatus.PARKED]
        return done == len(ids) and totals.reserved_nusd == 0 and budget_nusd - totals.spent_nusd < worst

    try:
        wait_for(settled, 120, "the budget to be used up and every job to be done or parked")
    except AssertionError:
        rows = [records.get_job(i) for i in ids]
        raise AssertionError(
            (
                book.totals(budget),
                Counter((r.status, (r.status_reason or "")[:30]) for r in rows),
                [
                    (r.id, r.status, r.worker, r.attempts)
                    for r in rows
                    if r.status not in ("succeeded", "parked")
                ],
            )
        ) from None
    rows = _entries(tenant_id)
    spent = sum(r.cost_nusd for r in rows)
    succeeded = [i for i in ids if JobHandle(i).status() is JobStatus.SUCCEEDED]
    print(
        f"{len(ids)} jobs accepted, {len(succeeded)} ran; spent {spent} of {budget_nusd} nano-USD "
        f"(a job costs {actual}, its worst case {worst})"
    )
    # never more than the budget, and at most one worst case short of it: the budget is used
    assert budget_nusd - worst <= spent <= budget_nusd
    # the ledger, the book and the jobs agree: one ok entry per job that ran, no other call
    assert book.totals(budget).spent_nusd == spent
    assert sorted(r.job_id for r in rows) == sorted(succeeded)
    assert all(r.status == "ok" and r.cost_nusd == actual for r in rows)
    # the rest wait for the budget, parked for that cause
    parked = [i for i in ids if i not in set(succeeded)]
    assert parked, "a budget for fifty jobs ran every one of two hundred"

    def parked_for_budget() -> bool:
        rows = [records.get_job(i) for i in parked]
        return all(r.status == "parked" and (r.status_reason or "").startswith("budget: ") for r in rows)

    # (those that were rechecking while the last reservations settled park again, until the period ends)
    try:
        wait_for(parked_for_budget, 30, "the jobs left to be parked for their budget")
    except AssertionError:
        print(Counter((r.status, (r.status_reason or "")[:40]) for r in (records.get_job(i) for i in parked)))
        raise
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    waiting = {m for q in keys.LLM_QUEUES for m in client.zrange(keys.parked_for(q, "budget"), 0, -1)}
    assert set(parked) <= waiting


@pytest.mark.usefixtures("closed_provider_breakers")
def test_jobs_parked_for_their_budget_run_when_it_is_raised(worker_factory: Any, fake_provider: Any) -> None:
    prompts = [f"raise my budget {i}" for i in range(5)]
    actual = _actual_nusd(prompts[0])
    worst = _worst_nusd(prompts[0])
    # room for two jobs: the second one's worst case fits over the first one's cost, the third's does not
    name, tenant_id = _tenant((worst + actual + actual // 2) / prices.NANO)
    handles = [submit(p, model=MODEL, max_tokens=MAX_TOKENS, cache=False, tenant=tenant_id) for p in prompts]
    worker_factory(concurrency=1, env={"BUDGET_CACHE_S": "0"})

    def parked_for_budget() -> int:
        return sum(
            1
            for h in handles
            if h.status() is JobStatus.PARKED
            and (records.get_job(h.id).status_reason or "").startswith("budget")
        )

    wait_for(lambda: parked_for_budget() == 3, 60, "three jobs to be parked for their budget")
    assert sum(h.status() is JobStatus.SUCCEEDED for h in handles) == 2
    # the budget's spend is known now: a new job that cannot fit is refused at submit
    with pytest.raises(BudgetExceededError, match="budget"):
        submit("one too many", model=MODEL, max_tokens=MAX_TOKENS, cache=False, tenant=tenant_id)
    assert _budget_of(tenant_id).limit_nusd < len(prompts) * worst
    raised = ultra_cli("budgets", "set", name, "--usd", "1", "--period", "day")
    assert raised.returncode == 0, raised.stderr
    # released by the budget event, not by their due time (up to PARK_MAX_WAIT away)
    started = time.monotonic()
    for h in handles:
        assert h.result(timeout=30).text.startswith("echo: raise my budget")
    print(f"parked jobs ran {time.monotonic() - started:.1f} s after the budget was raised")
    assert sum(r.cost_nusd for r in _entries(tenant_id)) == len(prompts) * actual
    listed = json.loads(ultra_cli("budgets", "list", "--json").stdout)
    mine = next(b for b in listed if b["tenant"] == name)
    assert mine["usd"] == 1.0 and mine["period"] == "day"
    assert mine["spent_usd"] == pytest.approx(len(prompts) * actual / prices.NANO)


@pytest.mark.usefixtures("closed_provider_breakers", "fresh_latencies")
def test_a_worker_killed_mid_batch_leaves_a_ledger_that_matches_the_providers_completed_calls(
    worker_factory: Any, fake_provider: Any
) -> None:
    _name, tenant_id = _tenant(10.0)
    prompts = [f"[[sleep_ms=400]] killed mid batch {i:02d}" for i in range(40)]
    victim = worker_factory(concurrency=4)
    handles = [submit(p, model=MODEL, max_tokens=MAX_TOKENS, cache=False, tenant=tenant_id) for p in prompts]
    wait_for(
        lambda: sum(h.status() is JobStatus.SUCCEEDED for h in handles) >= 8, 60, "the batch to progress"
    )
    victim.stop(signal.SIGKILL)
    worker_factory(concurrency=8)
    deadline = time.monotonic() + 150
    while not all(h.status() is JobStatus.SUCCEEDED for h in handles):
        assert time.monotonic() < deadline, Counter(h.status() for h in handles)
        ops_tasks.reap()
        time.sleep(1.0)
    stats = fake_provider.stats()
    rows = _entries(tenant_id)
    by_job: dict[str, list[Any]] = {}
    for r in rows:
        by_job.setdefault(r.job_id, []).append(r)
    assert len({(r.job_id, r.attempt_id) for r in rows}) == len(rows), "a call entered twice"
    ok_total = completed_total = unknown_total = 0
    for prompt, h in zip(prompts, handles, strict=True):
        mine = by_job.get(h.id, [])
        ok = [r for r in mine if r.status == "ok"]
        unknown = [r for r in mine if r.status == "unknown"]
        completed = int(stats["ok_by_prompt"].get(prompt_key(prompt), 0))
        received = int(stats["by_prompt"].get(prompt_key(prompt), 0))
        # exactly one answered call per job is known; a call the provider answered while its worker died
        # is entered as unknown, never lost and never twice
        assert len(ok) == 1, (prompt, mine)
        assert len(ok) <= completed <= len(ok) + len(unknown), (prompt, completed, mine)
        assert received <= len(mine), (prompt, received, mine)
        words = len(prompt.split())
        assert (ok[0].input_tokens, ok[0].output_tokens) == (words, words + 1)
        ok_total, completed_total, unknown_total = (
            ok_total + len(ok),
            completed_total + completed,
            unknown_total + len(unknown),
        )
    print(
        f"ledger: {ok_total} calls with usage, {unknown_total} unknown (in flight when the worker died); "
        f"the provider completed {completed_total}"
    )
    assert unknown_total >= 1, "the kill caught no call in flight"
    # the book agrees with the ledger: known costs plus the lost calls at their worst case
    budget = _budget_of(tenant_id)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.delete(*keys.billing_book(tenant_id, period_id(budget.period, utcnow())))
    rebuilt = Book(client).totals(budget).spent_nusd
    assert rebuilt == sum(r.cost_nusd or 0 for r in rows if r.status == "ok") + sum(
        r.worst_nusd for r in rows if r.status == "unknown"
    )


@pytest.mark.usefixtures("closed_provider_breakers")
def test_a_redelivered_job_enters_its_call_once_and_calls_nobody(llm_worker: Any, fake_provider: Any) -> None:
    _name, tenant_id = _tenant(None)
    prompt = f"delivered twice {uuid.uuid4().hex[:6]}"
    handle = submit(prompt, model=MODEL, max_tokens=MAX_TOKENS, cache=False, tenant=tenant_id)
    handle.result(timeout=30)
    row = records.get_job(handle.id)
    for _ in range(3):  # the broker redelivers, the sweeper republishes
        publish(handle.id, row.queue, row.request)
    time.sleep(2.0)
    calls = ledger.calls_of(handle.id)
    assert [c.status for c in calls] == ["ok"]
    assert calls[0].attempt_id.endswith(":1") and calls[0].tenant == tenant_id
    assert fake_provider.stats()["by_prompt"][prompt_key(prompt)] == 1
    # the run's outcome write applied again (a buffered write replayed): still one entry
    records.mark_succeeded(
        handle.id, dict(row.result or {}), token=row.lease_token, ledger=[c.to_dict() for c in calls]
    )
    with transaction() as conn:
        count = conn.execute(select(func.count()).where(ledger_t.c.job_id == handle.id)).scalar()
    assert count == 1


@pytest.mark.usefixtures("closed_provider_breakers")
def test_an_unpriced_model_costs_unknown_and_a_budget_refuses_it(
    worker_factory: Any, fake_provider: Any
) -> None:
    worker_factory(concurrency=2, env=FAST)
    free_name, free_id = _tenant(None)
    handle = submit("what does this cost", model="gpt-unpriced-1", cache=False, tenant=free_id)
    handle.result(timeout=30)
    [call] = ledger.calls_of(handle.id)
    assert call.status == "ok" and call.cost_nusd is None and call.input_tokens == 4
    usage = json.loads(ultra_cli("usage", "--tenant", free_name, "--json").stdout)
    assert usage == [
        {
            "tenant": free_name,
            "model": "gpt-unpriced-1",
            "calls": 1,
            "unknown_calls": 0,
            "input_tokens": 4,
            "output_tokens": 5,
            "cost_usd": None,
            "known_cost_usd": 0.0,
            "uncosted_calls": 1,
        }
    ]
    table = ultra_cli("usage", "--tenant", free_name)
    assert "unknown" in table.stdout and "$0" not in table.stdout
    # a tenant with a budget: a call whose cost cannot be bounded is not sent
    _, capped_id = _tenant(1.0)
    refused = submit("what does this cost", model="gpt-unpriced-1", cache=False, tenant=capped_id)
    with pytest.raises(Exception, match="no known price"):
        refused.result(timeout=30)
    assert ledger.calls_of(refused.id) == []


@pytest.mark.usefixtures("closed_provider_breakers")
def test_spend_shows_in_the_fleet_metrics_and_on_the_status_page(
    worker_factory: Any, fake_provider: Any
) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from ultra_tasks.metrics.collector import fleet_registry
    from ultra_tasks.status.snapshot import fleet_snapshot
    from ultra_tasks.status.web import render_page

    worker_factory(concurrency=2, env=FAST)
    name, tenant_id = _tenant(1.0)
    prompt = f"metered {uuid.uuid4().hex[:6]}"
    submit(prompt, model=MODEL, max_tokens=MAX_TOKENS, cache=False, tenant=tenant_id).result(timeout=30)
    cost = _actual_nusd(prompt) / prices.NANO
    snap = fleet_snapshot()
    [mine] = [b for b in snap["budgets"] if b["tenant"] == name]
    assert mine["spent_usd"] == pytest.approx(cost) and mine["usd"] == 1.0 and mine["period"] == "day"
    page = render_page(snap)
    assert f'data-tenant="{name}"' in page and f"${cost:,.6f}" in page

    def counted() -> dict[tuple[str, str | None], float]:
        text = generate_latest(fleet_registry()).decode()
        return {
            (s.name, s.labels.get("direction")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if family.name.startswith("ultra_billing") and s.labels.get("tenant") == tenant_id
        }

    wait_for(lambda: ("ultra_billing_cost_usd_total", None) in counted(), 15, "the worker's billing counters")
    seen = counted()
    words = len(prompt.split())
    assert seen[("ultra_billing_cost_usd_total", None)] == pytest.approx(cost)
    assert seen[("ultra_billing_calls_total", None)] == 1
    assert seen[("ultra_billing_tokens_total", "input")] == words
    assert seen[("ultra_billing_tokens_total", "output")] == words + 1


@pytest.mark.usefixtures("closed_provider_breakers")
def test_a_call_the_provider_refused_is_entered_unbilled_and_a_retried_job_keeps_its_count_level(
    llm_worker: Any, fake_provider: Any
) -> None:
    _name, tenant_id = _tenant(1.0)
    model = "gpt-4o-2024-08-06"
    fake_provider.add_fault("status", model=model, status=400, times=1)
    handle = submit(
        "refused once", model=model, max_tokens=MAX_TOKENS, cache=False, fallback=False, tenant=tenant_id
    )
    with pytest.raises(Exception, match="400"):
        handle.result(timeout=30)
    [refused] = ledger.calls_of(handle.id)
    assert (refused.status, refused.cost_nusd) == ("error", 0)
    # the reservation was refunded: nothing counts against the budget
    budget = _budget_of(tenant_id)
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    totals = Book(client).totals(budget)
    assert (totals.spent_nusd, totals.reserved_nusd) == (0, 0)
    handle.retry()
    assert handle.result(timeout=30).text == "echo: refused once"
    statuses = sorted(c.status for c in ledger.calls_of(handle.id))
    assert statuses == ["error", "ok"]
    # a fresh attempt budget, and the calls sent kept level with the ledger's rows (so a run after a
    # worker's death would find exactly the calls it lost)
    assert int(client.hget(keys.job_lease(handle.id), "sent") or 0) == len(statuses)
    assert Book(client).totals(budget).spent_nusd == prices.cost_nusd(Price(2.5, 10.0), 2, 3)
