"""The budget book's Lua steps against the real Redis, and the ledger's exactly-once insert against the real
SQL database: check-and-reserve is one step (threads racing for the last of a budget cannot overspend it),
a reservation is idempotent by attempt, settles once, lapses to its worst case, and a lost book is rebuilt
from the ledger."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis

from ultra_tasks import keys
from ultra_tasks.billing import ledger
from ultra_tasks.billing.book import Book
from ultra_tasks.billing.budgets import Budget, Period
from ultra_tasks.billing.ledger import Entry
from ultra_tasks.clock import utcnow
from ultra_tasks.jobs.record_buffer import apply

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def book(redis_client: redis.Redis, database: str) -> Book:
    return Book(redis_client)


def _budget(usd: float = 0.001, hard_cap: float | None = None) -> Budget:
    return Budget(f"t-{uuid.uuid4().hex[:12]}", "acme", usd, Period.DAY, hard_cap)


def test_a_reservation_that_does_not_fit_is_refused_and_changes_nothing(book: Book) -> None:
    budget = _budget(0.000_001)  # 1,000 nano-USD
    ok, _ = book.reserve(budget, "1:1", 600, 60)
    assert ok.ok and ok.totals.reserved_nusd == 600
    refused, _ = book.reserve(budget, "1:2", 401, 60)
    assert not refused.ok and refused.totals.reserved_nusd == 600 and refused.totals.spent_nusd == 0
    exact, _ = book.reserve(budget, "1:3", 400, 60)
    assert exact.ok and exact.totals.reserved_nusd == 1000


def test_the_same_attempt_reserving_twice_holds_one_reservation(book: Book) -> None:
    budget = _budget(0.000_001)
    first, period = book.reserve(budget, "7:1", 600, 60)
    again, _ = book.reserve(budget, "7:1", 600, 60)
    assert first.ok and again.ok and again.totals.reserved_nusd == 600
    assert book.settle(budget, period, "7:1", 250) == 1
    assert book.settle(budget, period, "7:1", 250) == 0  # settled once: a second settlement does nothing
    assert book.totals(budget) == type(book.totals(budget))(250, 0)


def test_a_refund_gives_the_whole_reservation_back(book: Book) -> None:
    budget = _budget(0.000_001)
    _, period = book.reserve(budget, "2:1", 900, 60)
    book.settle(budget, period, "2:1", 0)
    totals = book.totals(budget)
    assert totals.spent_nusd == 0 and totals.reserved_nusd == 0


def test_a_lapsed_reservation_counts_at_its_worst_case_until_its_late_settlement_corrects_it(
    book: Book,
) -> None:
    budget = _budget(0.000_001)
    _, period = book.reserve(budget, "3:1", 800, 0.05)  # its worker "dies": nobody settles in time
    time.sleep(0.15)
    refused, _ = book.reserve(budget, "4:1", 300, 60)
    assert not refused.ok and refused.totals.spent_nusd == 800 and refused.totals.reserved_nusd == 0
    # the call did answer after all, for less: the late settlement corrects the count
    assert book.settle(budget, period, "3:1", 100) == 2
    assert book.totals(budget).spent_nusd == 100
    assert book.reserve(budget, "4:1", 300, 60)[0].ok


def test_the_hard_cap_is_the_ceiling_of_reservations(book: Book) -> None:
    budget = _budget(0.000_001, hard_cap=0.000_002)
    assert book.reserve(budget, "5:1", 1500, 60)[0].ok
    assert not book.reserve(budget, "5:2", 501, 60)[0].ok


def test_threads_racing_for_a_budget_never_reserve_more_than_it_holds(
    book: Book, redis_client: redis.Redis
) -> None:
    budget = _budget(0.000_050)  # 50,000 nano-USD: room for exactly 49 reservations of 1,010
    won: list[str] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        mine = Book(redis_client)
        for i in range(20):
            answer, _ = mine.reserve(budget, f"{n}:{i}", 1010, 60)
            if answer.ok:
                with lock:
                    won.append(f"{n}:{i}")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 50_000 // 1010
    assert book.totals(budget).reserved_nusd == len(won) * 1010 <= 50_000


def test_a_book_redis_lost_is_rebuilt_from_the_ledger(book: Book, redis_client: redis.Redis) -> None:
    budget = _budget(1.0)
    job = str(uuid.uuid4())
    ledger.record(
        [
            Entry(job, "1:1", "ok", tenant=budget.tenant_id, model="m", cost_nusd=1234, worst_nusd=5000),
            Entry(job, "1:2", "error", tenant=budget.tenant_id, model="m", cost_nusd=0, worst_nusd=5000),
            # a call lost with its worker counts at its worst case
            Entry(job, "1:lost1", "unknown", tenant=budget.tenant_id, model="m", worst_nusd=5000),
            # an unpriced call counts nothing (its cost is unknown, not 0: `ultra usage` says so)
            Entry(job, "1:3", "ok", tenant=budget.tenant_id, model="x", input_tokens=5, output_tokens=5),
        ]
    )
    assert book.totals(budget).spent_nusd == 1234 + 5000
    _, period = book.reserve(budget, "2:1", 10, 60)
    book.settle(budget, period, "2:1", 10)
    # Redis loses the book: the next reader builds it again from the ledger, once
    redis_client.delete(*keys.billing_book(budget.tenant_id, period))
    assert book.totals(budget).spent_nusd == 1234 + 5000
    assert book.reserve(budget, "2:2", 10, 60)[0].totals.spent_nusd == 1234 + 5000


def test_a_call_is_entered_in_the_ledger_once_however_often_its_write_is_applied(database: str) -> None:
    job = str(uuid.uuid4())
    entry = Entry(
        job, "99:1", "ok", tenant="t", deployment="d", model="m", input_tokens=3, output_tokens=4, cost_nusd=7
    )
    assert ledger.record([entry]) == 1
    assert ledger.record([entry]) == 0
    # the write buffer replaying the same call (a flusher whose lock lapsed and a second one): still once
    for _ in range(2):
        apply("ledger", job, utcnow(), {"entries": [entry.to_dict()]})
    calls: list[Any] = ledger.calls_of(job)
    assert [(c.attempt_id, c.cost_nusd) for c in calls] == [("99:1", 7)]


def test_the_door_checks_the_budget_and_the_calls_the_hard_cap(
    redis_client: redis.Redis, database: str
) -> None:
    from ultra_tasks.api.tenants import create_key
    from ultra_tasks.billing import prices
    from ultra_tasks.billing.budgets import set_budget, tenant_id_of
    from ultra_tasks.billing.meter import Accounts, worst_case_of
    from ultra_tasks.config import get_settings
    from ultra_tasks.errors import BudgetExceededError
    from ultra_tasks.providers.base import ChatMessage, LLMRequest

    request = LLMRequest("gpt-4o-mini", (ChatMessage("user", "a question of some words"),), 50)
    worst = worst_case_of(None, request).nusd or 0
    name = f"door-{uuid.uuid4().hex[:8]}"
    create_key(name)
    # the budget holds two worst cases, the hard cap four
    set_budget(name, 2 * worst / prices.NANO, period="day", hard_cap=4 * worst / prices.NANO)
    accounts = Accounts(redis_client, get_settings().model_copy(update={"budget_cache_s": 0}))
    tenant_id = tenant_id_of(name)
    budget = accounts.budget_of(tenant_id)
    assert budget is not None
    accounts.admit(tenant_id, request)  # nothing spent: it fits
    # one and a half worst cases settled: the door refuses a new job, whose worst case would cross the budget
    _, period = accounts.book.reserve(budget, "a", worst, 60)
    accounts.book.settle(budget, period, "a", worst + worst // 2)
    with pytest.raises(BudgetExceededError) as refused:
        accounts.admit(tenant_id, request)
    assert refused.value.tenant == name and refused.value.retry_after >= 1
    # while a job already accepted still gets its call, up to the hard cap
    assert accounts.book.reserve(budget, "b", worst, 60)[0].ok
    assert accounts.book.reserve(budget, "c", worst, 60)[0].ok
    assert not accounts.book.reserve(budget, "d", worst, 60)[0].ok
    # a tenant without a budget is never refused, and costs no Redis step
    accounts.admit(None, request)


def test_every_key_of_a_book_expires(book: Book, redis_client: redis.Redis) -> None:
    budget = _budget(0.000_001)
    _, period = book.reserve(budget, "8:1", 500, 0.05)
    time.sleep(0.15)
    book.totals(budget)  # a read moves the lapsed reservation aside, where a late settlement finds it
    names = keys.billing_book(budget.tenant_id, period)
    present = [k for k in names if redis_client.exists(k)]
    assert names[3] in present
    assert all(redis_client.ttl(k) > 0 for k in present)


def test_the_door_judges_a_budget_from_the_ledger_while_its_redis_is_down(database: str) -> None:
    from ultra_tasks.api.tenants import create_key
    from ultra_tasks.billing import prices
    from ultra_tasks.billing.budgets import set_budget, tenant_id_of
    from ultra_tasks.billing.meter import Accounts, worst_case_of
    from ultra_tasks.config import get_settings
    from ultra_tasks.errors import BudgetExceededError
    from ultra_tasks.providers.base import ChatMessage, LLMRequest

    request = LLMRequest("gpt-4o-mini", (ChatMessage("user", "a question while Redis is away"),), 50)
    worst = worst_case_of(None, request).nusd or 0
    name = f"no-redis-{uuid.uuid4().hex[:8]}"
    create_key(name)
    set_budget(name, 2 * worst / prices.NANO, period="day")
    tenant_id = tenant_id_of(name)
    # a Redis nobody listens on: every command is refused
    gone = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    accounts = Accounts(gone, get_settings().model_copy(update={"budget_cache_s": 0}))
    accounts.admit(tenant_id, request)  # nothing in the ledger: it fits, with no Redis error
    ledger.record([Entry(str(uuid.uuid4()), "1:1", "ok", tenant=tenant_id, model="m", cost_nusd=worst + 1)])
    with pytest.raises(BudgetExceededError):
        accounts.admit(tenant_id, request)


def test_budgets_read_before_the_database_went_down_still_hold(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ultra_tasks.api.tenants import create_key
    from ultra_tasks.billing.budgets import BudgetCache, set_budget, tenant_id_of
    from ultra_tasks.config import reset_settings
    from ultra_tasks.db.migrate import upgrade_schema
    from ultra_tasks.errors import DependencyUnavailableError

    monkeypatch.setenv("DATABASE_URL", private_postgres.url)
    reset_settings()
    upgrade_schema()
    name = f"db-down-{uuid.uuid4().hex[:8]}"
    create_key(name)
    set_budget(name, 0.5, period="month")
    tenant_id = tenant_id_of(name)
    assert tenant_id is not None
    warm = BudgetCache(0)
    assert warm.get(tenant_id) is not None
    private_postgres.stop()
    # a worker that read the budgets before keeps judging its jobs by them, also after a budget event
    # asked it to read them again
    kept = warm.get(tenant_id)
    assert kept is not None and kept.budget_nusd == 500_000_000
    warm.forget()
    assert warm.get(tenant_id) == kept
    # one that never read them cannot know a tenant's budget: its jobs wait for the database
    with pytest.raises(DependencyUnavailableError):
        BudgetCache(0).get(tenant_id)
