"""Which deployment of a model takes the next call, in this process.

Deployments of one model share its traffic by weight (smooth weighted round robin: over any run of calls
each gets its share, interleaved), and are steered away from the busy and the slow: when the deployment
whose turn it is has clearly more calls in flight per unit of weight than another, or its recent latency
is SLOW_FACTOR times another's, the least loaded (then fastest) takes the call instead. One call in
EXPLORE_EVERY still goes to a deployment that was passed over for being slow, so its latency is learnt
again when it recovers. A deployment at its ``max_concurrency`` is never chosen first.

All of this is local to the process (no Redis round trip): in-flight counts and latencies are what this
worker sees. The order returned is the order the pipeline tries the deployments in when one cannot be
called (breaker open, rate limited, failing), before the fallback chain moves to another model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ultra_tasks.providers.kinds.base import Deployment

#: a deployment this many times slower (recent latency) than another is passed over
SLOW_FACTOR = 2.0
#: ... when it is slower by at least this much (seconds): noise between fast deployments is no reason
SLOW_MIN_GAP_S = 0.05
#: a deployment with this many more calls in flight per unit of weight than another is passed over
BUSY_MARGIN = 2.0
#: one in this many turns of a passed-over deployment is kept, so its latency is measured again
EXPLORE_EVERY = 10
#: weight of the newest latency in the moving average
LATENCY_ALPHA = 0.2
#: a failed call counts as this slow (seconds): a failing deployment is passed over before its breaker opens
FAILURE_PENALTY_S = 1.0


@dataclass
class _State:
    current: float = 0.0
    in_flight: int = 0
    latency_s: float | None = None
    passed_over: int = 0
    chosen: int = 0


class DeploymentRouter:
    """Orders a model's deployments for the next call and keeps their in-flight counts and latencies."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def _state(self, name: str) -> _State:
        state = self._states.get(name)
        if state is None:
            state = self._states.setdefault(name, _State())
        return state

    def order(self, deployments: Sequence[Deployment]) -> list[Deployment]:
        """``deployments`` in the order to try them: the chosen one first, then the least loaded."""
        if len(deployments) == 1:
            return list(deployments)
        with self._lock:
            states = [self._state(d.name) for d in deployments]
            total = 0.0
            for d, s in zip(deployments, states, strict=True):
                s.current += d.weight
                total += d.weight
            turn = max(range(len(deployments)), key=lambda i: states[i].current)
            states[turn].current -= total
            ranked = sorted(range(len(deployments)), key=lambda i: self._load(deployments[i], states[i]))
            first = turn
            best = ranked[0]
            if best != turn and self._worse(deployments[turn], states[turn], deployments[best], states[best]):
                s = states[turn]
                s.passed_over += 1
                if s.passed_over % EXPLORE_EVERY != 0 or self._full(deployments[turn], s):
                    first = best
            states[first].chosen += 1
            rest = [i for i in ranked if i != first]
        chosen = [deployments[first], *(deployments[i] for i in rest)]
        # a deployment at its cap goes last: it is tried only if every other one cannot be called
        return sorted(chosen, key=lambda d: self._full(d, self._state(d.name)))

    @staticmethod
    def _full(d: Deployment, s: _State) -> bool:
        return d.max_concurrency is not None and s.in_flight >= d.max_concurrency

    @staticmethod
    def _load(d: Deployment, s: _State) -> tuple[bool, float, float]:
        full = d.max_concurrency is not None and s.in_flight >= d.max_concurrency
        return (full, s.in_flight / d.weight, s.latency_s or 0.0)

    def _worse(self, d: Deployment, s: _State, other: Deployment, o: _State) -> bool:
        if self._full(d, s):
            return True
        if s.in_flight / d.weight >= o.in_flight / other.weight + BUSY_MARGIN:
            return True
        if s.latency_s is None or o.latency_s is None:
            return False
        return s.latency_s > SLOW_FACTOR * o.latency_s and s.latency_s - o.latency_s > SLOW_MIN_GAP_S

    def at_capacity(self, deployment: Deployment) -> bool:
        return self._full(deployment, self._state(deployment.name))

    def started(self, deployment: Deployment) -> None:
        with self._lock:
            self._state(deployment.name).in_flight += 1

    def finished(self, deployment: Deployment, latency_s: float | None) -> None:
        """A call ended; ``latency_s`` is how long it took (None: it failed, counted as FAILURE_PENALTY_S)."""
        if latency_s is None:
            latency_s = FAILURE_PENALTY_S
        with self._lock:
            s = self._state(deployment.name)
            s.in_flight = max(0, s.in_flight - 1)
            s.latency_s = (
                latency_s
                if s.latency_s is None
                else LATENCY_ALPHA * latency_s + (1 - LATENCY_ALPHA) * s.latency_s
            )

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """In-flight calls, recent latency and calls chosen per deployment (this process)."""
        with self._lock:
            return {
                name: {"in_flight": s.in_flight, "latency_s": s.latency_s, "chosen": s.chosen}
                for name, s in self._states.items()
            }
