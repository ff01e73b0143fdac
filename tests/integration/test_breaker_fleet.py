"""The circuit breaker shared by separate OS processes through one Redis."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ultra_tasks import CircuitBreaker, CircuitOpenException
from ultra_tasks.keys import breaker_events

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("redis_client")]
CHILD = Path(__file__).with_name("breaker_procs.py")


class Boom(Exception):
    pass


class Fleet:
    """Starts child processes that wait on a shared barrier, then releases them together."""

    def __init__(self, redis_client: Any) -> None:
        self.redis = redis_client
        self.run = uuid.uuid4().hex[:8]
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, scenario: str, cfg: dict[str, Any], n: int = 1) -> list[subprocess.Popen[str]]:
        cfg = {**cfg, "run": self.run}
        new = [
            subprocess.Popen(
                [sys.executable, str(CHILD), scenario, json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=os.environ.copy(),
            )
            for _ in range(n)
        ]
        self.procs += new
        return new

    def holding(self, cfg: dict[str, Any]) -> subprocess.Popen[str]:
        """A process holding one call through the breaker (``hold_success``), once its call started."""
        [proc] = self.spawn("hold_success", cfg)
        deadline = time.monotonic() + 30
        while not self.redis.exists(f"test:{self.run}:started"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        return proc

    def go(self, expected: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while int(self.redis.get(f"test:{self.run}:ready") or 0) < expected:
            assert time.monotonic() < deadline, "children did not get ready"
            assert all(p.poll() is None for p in self.procs), self.errors()
            time.sleep(0.02)
        self.redis.set(f"test:{self.run}:go", 1)

    def errors(self) -> str:
        return "\n".join(p.stderr.read() for p in self.procs if p.poll() not in (None, 0) and p.stderr)

    @staticmethod
    def result(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {
            "result": next(x["result"] for x in lines if "result" in x),
            "transitions": [x["transition"] for x in lines if "transition" in x],
        }

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.fixture
def fleet(redis_client: Any) -> Iterator[Fleet]:
    f = Fleet(redis_client)
    yield f
    f.kill_all()


@pytest.fixture
def events(redis_client: Any) -> Iterator[list[dict[str, Any]]]:
    """Every breaker state-change event published on the Redis channel during the test."""
    import redis

    received: list[dict[str, Any]] = []
    pubsub = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True).pubsub()
    pubsub.subscribe(breaker_events())
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                received.append(json.loads(message["data"]))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    yield received
    time.sleep(0.2)
    stop.set()
    thread.join()
    pubsub.close()


def _name() -> str:
    return f"fleet-{uuid.uuid4().hex[:8]}"


def _event(events: list[dict[str, Any]], name: str, to: str, timeout: float = 5.0) -> dict[str, Any]:
    """The one published transition of ``name`` to ``to``, once the listening thread has received it."""
    deadline = time.monotonic() + timeout
    while not (found := [e for e in events if e["name"] == name and e["to"] == to]):
        assert time.monotonic() < deadline, f"no {name} -> {to} event: {events}"
        time.sleep(0.02)
    [event] = found
    return event


def _trip(breaker: CircuitBreaker) -> None:
    """Fail calls until the breaker opens. Other processes calling successfully meanwhile may reset the
    count of consecutive failures (a watcher whose cached verdict was just refreshed sends its success
    at once), so it can take more than ``failure_threshold`` failures."""
    for _ in range(breaker.failure_threshold * 10):
        with pytest.raises(Boom), breaker:
            raise Boom()
        if breaker.state == CircuitBreaker.OPEN:
            return
    raise AssertionError(f"{breaker.name} did not open")


@pytest.mark.parametrize(("threshold", "expected_state"), [(8, "open"), (9, "closed")])
def test_failures_interleaved_across_four_processes_trip_at_exactly_the_threshold(
    fleet: Fleet, events: list[dict[str, Any]], threshold: int, expected_state: str
) -> None:
    # Given 4 processes that each make 2 failing calls, interleaved (8 failures in all)
    name = _name()
    cfg = {
        "name": name,
        "calls": 2,
        "gap": 0.01,
        "breaker": {"failure_threshold": threshold, "reset_timeout": 60},
    }
    procs = fleet.spawn("fail", cfg, n=4)
    fleet.go(4)
    results = [fleet.result(p)["result"] for p in procs]
    # Then every call ran, and the breaker opened exactly when the 8th failure met a threshold of 8
    assert sum(r["ran"] for r in results) == 8
    breaker = CircuitBreaker(name, failure_threshold=threshold, reset_timeout=60)
    assert breaker.state == expected_state
    trips = [e for e in events if e["name"] == name and e["to"] == "open"]
    if expected_state == "open":
        assert len(trips) == 1 and trips[0]["failures"] == threshold
        assert breaker.metrics()["state_changes"] == {"closed->open": 1}
    else:
        assert trips == [] and breaker.failure_count == 8


def test_failures_beyond_the_threshold_from_many_processes_open_it_once(
    fleet: Fleet, events: list[dict[str, Any]]
) -> None:
    name = _name()
    cfg = {"name": name, "calls": 10, "breaker": {"failure_threshold": 5, "reset_timeout": 60}}
    procs = fleet.spawn("fail", cfg, n=4)
    fleet.go(4)
    results = [fleet.result(p) for p in procs]
    assert sum(len(r["transitions"]) for r in results) == 1  # one process made the transition
    assert [e["to"] for e in events if e["name"] == name] == ["open"]
    assert sum(r["result"]["refused"] for r in results) > 0


@pytest.mark.parametrize("permitted", [1, 3])
def test_half_open_admits_exactly_the_permitted_probes_across_processes(
    fleet: Fleet, events: list[dict[str, Any]], permitted: int
) -> None:
    # Given a breaker that opened and whose reset timeout has elapsed
    name = _name()
    options = {"failure_threshold": 2, "reset_timeout": 1, "half_open_max_calls": permitted}
    _trip(CircuitBreaker(name, **options))
    time.sleep(1.1)
    # When 20 callers in 4 processes try at once, each holding its call for a second if admitted
    procs = fleet.spawn("probe", {"name": name, "threads": 5, "hold": 1.0, "breaker": options}, n=4)
    fleet.go(4)
    results = [fleet.result(p)["result"] for p in procs]
    # Then exactly the permitted number ran, and their successes closed the breaker
    assert sum(r["admitted"] for r in results) == permitted
    assert sum(r["refused"] for r in results) == 20 - permitted
    assert CircuitBreaker(name, **options).state == CircuitBreaker.CLOSED
    assert [e["to"] for e in events if e["name"] == name] == ["open", "half-open", "closed"]


def test_prober_killed_mid_call_does_not_wedge_the_breaker(fleet: Fleet) -> None:
    name = _name()
    options = {"failure_threshold": 2, "reset_timeout": 0.5, "probe_lease": 1.5}
    breaker = CircuitBreaker(name, **options)
    _trip(breaker)
    time.sleep(0.6)
    # Given a prober that takes the only half-open lease and then dies with SIGKILL
    prober = fleet.holding({"name": name, "hold": 60, "breaker": options, "no_barrier": True})
    with pytest.raises(CircuitOpenException):
        breaker.call(lambda: "not admitted while the lease is held")
    prober.send_signal(signal.SIGKILL)
    prober.wait()
    # Then once the lease expires the probe counts as failed (the breaker opens again) ...
    time.sleep(1.6)
    with pytest.raises(CircuitOpenException):
        breaker.call(lambda: "refused: the lapsed probe reopened the breaker")
    assert breaker.state == CircuitBreaker.OPEN
    # ... and after the reset timeout another caller probes, and its success closes the breaker
    time.sleep(0.6)
    assert breaker.call(lambda: "probe") == "probe"
    assert breaker.state == CircuitBreaker.CLOSED


def test_probes_outliving_their_lease_never_overlap_across_processes(fleet: Fleet) -> None:
    # Given probes that hold their call three times as long as their lease, from four processes at once
    name = _name()
    options = {"failure_threshold": 1, "reset_timeout": 1.0, "probe_lease": 0.3}
    _trip(CircuitBreaker(name, **options))
    procs = fleet.spawn("probe_windows", {"name": name, "max_s": 6, "hold": 0.9, "breaker": options}, n=4)
    fleet.go(4)
    windows = sorted(w for p in procs for w in fleet.result(p)["result"]["windows"])
    # Then no two probes were ever out at once (half_open_max_calls is 1): a lapsed lease reopens the
    # breaker for its reset timeout rather than admitting the next prober beside the first
    assert len(windows) >= 2, windows
    overlaps = [(a, b) for a, b in itertools.pairwise(windows) if b[0] < a[1]]
    assert not overlaps, overlaps


def test_a_probe_answering_after_its_lease_lapsed_does_not_close_the_breaker(fleet: Fleet) -> None:
    name = _name()
    options = {"failure_threshold": 1, "reset_timeout": 0.5, "probe_lease": 0.5}
    breaker = CircuitBreaker(name, **options)
    _trip(breaker)
    time.sleep(0.6)
    # Given a probe in another process that answers (successfully) long after its lease lapsed
    slow = fleet.holding({"name": name, "hold": 1.5, "breaker": options, "no_barrier": True})
    fleet.result(slow)
    # Then its success does not close the breaker: it may have overlapped a newer probe
    assert breaker.state == CircuitBreaker.OPEN


def test_a_late_success_of_a_lapsed_probe_lease_does_not_close_the_newer_half_open_state(
    fleet: Fleet,
) -> None:
    name = _name()
    options = {"failure_threshold": 1, "reset_timeout": 0.5, "probe_lease": 0.5}
    breaker = CircuitBreaker(name, **options)
    _trip(breaker)
    time.sleep(0.6)
    # Given a probe in another process that will answer (successfully) long after its lease lapsed
    slow = fleet.holding({"name": name, "hold": 6.0, "breaker": options, "no_barrier": True})
    # When its lease lapses (the breaker opens again: a failed probe), and once the reset timeout has
    # passed a newer probe, with a lease of its own that outlives its call, is out
    time.sleep(0.6)
    with pytest.raises(CircuitOpenException):
        breaker.call(lambda: "refused: the lapsed lease reopened the breaker")
    time.sleep(0.6)
    fleet.redis.delete(f"test:{fleet.run}:started")
    newer_options = {**options, "probe_lease": 60}
    newer = fleet.holding({"name": name, "hold": 60, "breaker": newer_options, "no_barrier": True})
    assert slow.poll() is None, "the old probe answered before the newer one started"
    assert breaker.state == CircuitBreaker.HALF_OPEN
    # Then the old probe's late success changes nothing: the newer half-open state and its probe stand
    fleet.result(slow)
    assert breaker.state == CircuitBreaker.HALF_OPEN
    with pytest.raises(CircuitOpenException):
        breaker.call(lambda: "refused: the newer probe holds the only lease")
    newer.kill()


def test_late_success_from_before_a_trip_does_not_close_the_newer_open(fleet: Fleet) -> None:
    name = _name()
    options = {"failure_threshold": 3, "reset_timeout": 60}
    breaker = CircuitBreaker(name, **options)
    with pytest.raises(Boom), breaker:
        raise Boom()  # one failure on record, so a success must reach Redis to reset it
    # Given a call that started while the breaker was closed, in another process
    slow = fleet.holding({"name": name, "hold": 2.0, "breaker": options, "no_barrier": True})
    # When the breaker trips while it runs (two more failures), and then it succeeds
    for _ in range(2):
        with pytest.raises(Boom), breaker:
            raise Boom()
    assert breaker.state == CircuitBreaker.OPEN
    fleet.result(slow)
    # Then the old success did not undo the newer open
    assert breaker.state == CircuitBreaker.OPEN
    assert breaker.metrics()["successes"] == 1  # it was recorded, with the generation it started in


def test_a_trip_reaches_processes_whose_subscription_is_down_within_the_sync_interval(
    fleet: Fleet, events: list[dict[str, Any]]
) -> None:
    # Given processes that hear no pushed transition (their events subscription is down), and would trust
    # a "closed" verdict for half a minute while subscribed
    name = _name()
    sync_interval = 0.25
    options = {
        "failure_threshold": 3,
        "reset_timeout": 60,
        "sync_interval": sync_interval,
        "pushed_sync_interval": 30,
    }
    watchers = fleet.spawn("watch_unsubscribed", {"name": name, "max_s": 20, "breaker": options}, n=3)
    fleet.go(3)
    time.sleep(0.5)  # the watchers are calling happily, each with a cached closed verdict
    # one failure trips it: the watchers' successes would reset a count of consecutive failures
    _trip(CircuitBreaker(name, **{**options, "failure_threshold": 1}))
    tripped = _event(events, name, "open")
    delays = [fleet.result(w)["result"]["refused_at"] - tripped["at"] for w in watchers]
    # the bound, plus a little for one loop iteration and scheduling on a busy machine
    assert all(d is not None for d in delays)
    assert max(delays) <= sync_interval + 0.1, delays


def test_a_trip_is_pushed_to_other_processes_long_before_their_sync_interval(
    fleet: Fleet, events: list[dict[str, Any]]
) -> None:
    # Given processes that would trust their cached "closed" verdict for half a minute
    name = _name()
    options = {"failure_threshold": 3, "reset_timeout": 60, "sync_interval": 30, "pushed_sync_interval": 30}
    watchers = fleet.spawn("watch", {"name": name, "max_s": 20, "breaker": options}, n=3)
    fleet.go(3)
    time.sleep(0.5)  # each is calling with its cached verdict, subscribed to the breaker events
    # When another process trips the breaker
    # one failure trips it: the watchers' successes would reset a count of consecutive failures
    _trip(CircuitBreaker(name, **{**options, "failure_threshold": 1}))
    tripped = _event(events, name, "open")
    # Then each of them refuses at once: the published transition dropped their cached verdicts
    delays = [fleet.result(w)["result"]["refused_at"] for w in watchers]
    assert all(d is not None for d in delays), delays
    assert max(d - tripped["at"] for d in delays) <= 0.25, delays
