"""What one run of a job does about money around each provider call it makes.

A run's calls are numbered by its lease (the token and the job's call count: ``ledger.attempt_id``).
Before a call goes out the meter reserves its worst case in the tenant's book when the tenant has a
budget (one Lua step: it fits, or ``BudgetExceededError`` and nothing is sent); after, it settles the
reservation to the actual cost (an answer), refunds it (an error the provider answered: nothing billed)
or leaves it at its worst case (a timeout or a dropped connection: the call may have been billed). Each
call sent becomes one ledger entry, kept until the run's outcome is written (in the same transaction).

A job without a tenant, or whose tenant has no budget, costs no Redis step here: the budget comes from an
in-process cache, and the entry rides on the outcome write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ultra_tasks.billing import prices
from ultra_tasks.billing.book import Book
from ultra_tasks.billing.budgets import Budget, BudgetCache, cached, period_bounds
from ultra_tasks.billing.ledger import CallStatus, Entry, attempt_id, lost_attempt_id
from ultra_tasks.billing.ledger import charged_nusd as ledger_charged
from ultra_tasks.clock import utcnow
from ultra_tasks.errors import BudgetExceededError, ProviderError, ProviderTimeoutError, UnpricedModelError
from ultra_tasks.metrics import billing as billing_metrics
from ultra_tasks.redis_client import REDIS_DOWN

if TYPE_CHECKING:
    import redis

    from ultra_tasks.config import Settings
    from ultra_tasks.providers.base import LLMRequest, LLMResponse
    from ultra_tasks.providers.kinds.base import Deployment, Price

log = logging.getLogger(__name__)

#: how the reason of a job parked for its tenant's budget starts (the API tells such a job's caller 429)
BUDGET_REASON = "budget: "
#: seconds a reservation outlives its call's longest timeout before the book counts it as spent at its
#: worst case (its worker died or was cut off from Redis)
RESERVATION_GRACE_S = 60.0


@lru_cache(maxsize=4096)
def _price(deployment_price: Price | None, model: str) -> Price | None:
    if deployment_price is not None:
        return deployment_price
    return prices.default_price(model)


def price_of(deployment: Deployment | None, model: str) -> Price | None:
    return _price(deployment.price if deployment is not None else None, model)


def worst_case_of(deployment: Deployment | None, request: LLMRequest) -> prices.WorstCase:
    """The most ``request`` can cost on ``deployment`` (None: at the model's default price)."""
    chars = sum(len(m.content) for m in request.messages)
    return prices.worst_case(
        price_of(deployment, request.model), chars, len(request.messages), request.max_tokens
    )


class Accounts:
    """One process's budget book and budget cache (Runtime.billing)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.book = Book(client)
        # the process's one cache, which a budget event empties (jobs/parking.py's releaser hears it)
        self.budgets: BudgetCache = cached(settings.budget_cache_s)

    def budget_of(self, tenant: str | None) -> Budget | None:
        return self.budgets.get(tenant) if tenant else None

    def admit(self, tenant: str | None, request: LLMRequest) -> None:
        """Refuse a job at submit when it is already known not to fit: the period's settled spend leaves
        the tenant's budget no room for its worst case (at the dearest deployment serving its model).
        Open reservations are not counted: they mostly settle lower. Costs nothing without a budget."""
        budget = self.budget_of(tenant)
        if budget is None:
            return
        from ultra_tasks.providers.deployments import catalog

        chars = sum(len(m.content) for m in request.messages)
        worsts = [
            prices.worst_case(
                price_of(d, request.model), chars, len(request.messages), request.max_tokens
            ).nusd
            for d in catalog(self.settings).serving(request.model)
        ] or [
            prices.worst_case(
                price_of(None, request.model), chars, len(request.messages), request.max_tokens
            ).nusd
        ]
        known = [w for w in worsts if w is not None]
        if not known:
            return  # unpriced: the worker refuses the call, naming what to set
        worst = max(known)
        try:
            spent = self.book.totals(budget).spent_nusd
        except REDIS_DOWN:
            # the book is out of reach: the ledger it is built from answers the same question (the calls
            # themselves wait for Redis: a reservation needs it)
            start, end = period_bounds(budget.period, utcnow())
            spent = ledger_charged(budget.tenant_id, start, end)
        if spent + worst > budget.budget_nusd:
            _, end = period_bounds(budget.period, utcnow())
            raise BudgetExceededError(
                budget.tenant,
                f"tenant {budget.tenant} has used {prices.show_usd(spent)} of its "
                f"{prices.show_usd(budget.budget_nusd)} budget for this {budget.period.value}; this request "
                f"may cost up to {prices.show_usd(worst)}",
                max(1.0, (end - utcnow()).total_seconds()),
            )


@dataclass
class _OpenCall:
    call: int
    deployment: str
    model: str
    price: Price | None
    worst: prices.WorstCase
    #: the period the reservation was taken in (None: the job is not budgeted)
    period: str | None = None


@dataclass
class RunMeter:
    """The money side of one run's calls (one thread: a run makes its calls one after another)."""

    job_id: str
    tenant: str | None
    token: int
    accounts: Accounts | None = None
    budget: Budget | None = None
    #: this run's calls not yet written to the ledger
    entries: list[Entry] = field(default_factory=list)
    #: this run's calls sent so far (the last one's number)
    sent: int = 0
    _open: _OpenCall | None = None

    # --- around a call -------------------------------------------------------------------------------
    def opening(self, deployment: Deployment, request: LLMRequest) -> None:
        """A call is about to go to ``deployment``: reserve its worst case when the job is budgeted.
        ``BudgetExceededError`` when it does not fit, ``UnpricedModelError`` when its cost cannot be
        bounded (nothing is sent either way). Calls are numbered in the run from 1; one not sent after
        all gives its number back, so the numbers of the calls sent are 1, 2, 3..."""
        price = price_of(deployment, request.model)
        worst = worst_case_of(deployment, request)
        call = self.sent + 1
        opened = _OpenCall(call, deployment.name, request.model, price, worst)
        if self.budget is not None and self.accounts is not None:
            if worst.nusd is None:
                raise UnpricedModelError(
                    f"tenant {self.budget.tenant} has a budget and model {request.model} has no known price "
                    f"on deployment {deployment.name}; give the deployment a price in the deployments file",
                    provider=deployment.name,
                    model=request.model,
                )
            opened.period = self._reserve(call, worst.nusd)
        self._open = opened
        self.sent = call

    def _reserve(self, call: int, amount: int) -> str:
        assert self.budget is not None and self.accounts is not None
        budget = self.budget
        deadline = self.accounts.settings.provider_timeout + RESERVATION_GRACE_S
        answer, period = self.accounts.book.reserve(budget, self._held_as(call), amount, deadline)
        if answer.ok:
            return period
        totals = answer.totals
        if totals.reserved_nusd > 0:
            # other calls hold reservations: when they settle (mostly below their worst case) this may fit
            wait = self.accounts.settings.budget_recheck_s
        else:
            _, end = period_bounds(budget.period, utcnow())
            wait = max(1.0, (end - utcnow()).total_seconds())
        raise BudgetExceededError(
            budget.tenant,
            f"{BUDGET_REASON}tenant {budget.tenant}'s budget for this {budget.period.value} "
            f"({prices.show_usd(budget.limit_nusd)}) cannot hold this call's worst case "
            f"({prices.show_usd(amount)}): {prices.show_usd(totals.spent_nusd)} spent, "
            f"{prices.show_usd(totals.reserved_nusd)} reserved",
            wait,
        )

    def _held_as(self, call: int) -> str:
        """The reservation's name in the tenant's book: the job's id with the attempt, since two jobs'
        leases taken in the same microsecond hold the same token."""
        return f"{self.job_id}:{attempt_id(self.token, call)}"

    def cancel(self) -> None:
        """The call was not sent after all (its breaker or concurrency cap refused it): refund it."""
        opened, self._open = self._open, None
        if opened is not None:
            self.sent -= 1
            self._settle(opened, 0)

    def answered(self, response: LLMResponse) -> None:
        """The provider answered: the ledger entry with its usage, the reservation settled to its cost."""
        opened, self._open = self._open, None
        if opened is None:
            return
        usage = response.usage
        cost = prices.cost_nusd(opened.price, usage.input_tokens, usage.output_tokens)
        self._add(opened, CallStatus.OK, usage.input_tokens, usage.output_tokens, cost)
        self._settle(opened, cost or 0)

    def failed(self, exc: BaseException) -> None:
        """The call went out and did not answer usage. An error the provider sent back is not billed
        (refunded); a timeout or a dropped connection may have been: recorded ``unknown``, and its worst
        case stays counted against the budget."""
        opened, self._open = self._open, None
        if opened is None:
            return
        billed_maybe = not isinstance(exc, ProviderError) or (
            isinstance(exc, ProviderTimeoutError) or exc.status_code is None
        )
        if billed_maybe:
            self._add(opened, CallStatus.UNKNOWN, None, None, None)
            self._settle(opened, opened.worst.nusd or 0)
        else:
            self._add(opened, CallStatus.ERROR, 0, 0, 0)
            self._settle(opened, 0)

    def close(self) -> None:
        """The run ends with a call still open (an exception escaped the provider call): unknown."""
        if self._open is not None:
            self.failed(RuntimeError("the run ended with the call open"))

    # --- entries -------------------------------------------------------------------------------------
    def _add(
        self, opened: _OpenCall, status: CallStatus, inp: int | None, out: int | None, cost: int | None
    ) -> None:
        entry = Entry(
            job_id=self.job_id,
            attempt_id=attempt_id(self.token, opened.call),
            status=status.value,
            tenant=self.tenant,
            deployment=opened.deployment,
            model=opened.model,
            input_tokens=inp,
            output_tokens=out,
            cost_nusd=cost,
            worst_nusd=opened.worst.nusd,
        )
        self.entries.append(entry)
        billing_metrics.count_call(entry)

    def take_entries(self) -> list[dict[str, Any]]:
        """The entries not yet written, as the outcome write carries them (JSON)."""
        taken, self.entries = self.entries, []
        return [e.to_dict() for e in taken]

    def _settle(self, opened: _OpenCall, actual: int) -> None:
        if opened.period is None or self.budget is None or self.accounts is None:
            return
        try:
            self.accounts.book.settle(self.budget, opened.period, self._held_as(opened.call), actual)
        except REDIS_DOWN as exc:
            # the reservation lapses at its deadline and is counted at its worst case: the budget errs high
            log.warning(
                "job %s: reservation not settled (Redis: %s); it lapses at its worst case", self.job_id, exc
            )

    # --- calls a dead run left ----------------------------------------------------------------------
    def lost_calls(self, count: int, previous_token: int, request: LLMRequest) -> list[Entry]:
        """Entries for ``count`` calls an earlier run sent and never recorded (its worker died with them in
        flight): usage unknown, each counted at the job's worst case (its model's default price)."""
        worst = worst_case_of(None, request)
        return [
            Entry(
                job_id=self.job_id,
                attempt_id=lost_attempt_id(previous_token, i + 1),
                status=CallStatus.UNKNOWN.value,
                tenant=self.tenant,
                model=request.model,
                worst_nusd=worst.nusd,
            )
            for i in range(count)
        ]
