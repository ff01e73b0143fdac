#!/usr/bin/env python
"""Per-call cost of the whole in-process resilience pipeline (fallback chain, quota check, circuit
breaker, fleet-wide rate limit, adaptive timeout, tenacity retry wrapper) around a provider call, divided
by a direct call through the official SDK, side by side in one run against a zero-latency fake provider
(in its own process).  Goal: <= 1.10 in CPU time of the calling thread (wall time, which adds the fake
provider's own time and the machine's noise, is printed beside it).  Bounded; loopback only.
Usage: scripts/bench_resilient_call.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _per_call(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) per call."""
    started, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n, (time.thread_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = _free_port()
    os.environ.update(
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        ULTRA_REDIS_NAMESPACE="ultra-bench",
        FAKE_PROVIDER_URL=f"http://127.0.0.1:{port}",
        USE_FAKE_PROVIDER="1",
        # a rate limit high enough never to wait, so its Redis check is part of every call
        PROVIDER_RATE_LIMITS='{"openai": {"rpm": 1000000000, "tpm": 1000000000000}}',
    )
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(var, None)
    fake = subprocess.Popen(
        [sys.executable, "-m", "ultra_tasks.cli", "fake-provider", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import logging

        import openai

        from ultra_tasks.config import get_settings
        from ultra_tasks.providers.base import ChatMessage, LLMRequest
        from ultra_tasks.providers.fake_server import FakeProviderControl
        from ultra_tasks.providers.registry import ProviderRegistry
        from ultra_tasks.resilience.breaker import breaker_redis
        from ultra_tasks.resilience.chains import chain_for
        from ultra_tasks.resilience.pipeline import ResilientCaller
        from ultra_tasks.resilience.retry import AttemptBudget

        logging.getLogger("httpx").setLevel(logging.WARNING)
        control = FakeProviderControl(os.environ["FAKE_PROVIDER_URL"])
        deadline = time.monotonic() + 30
        while not control.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)
        settings = get_settings()
        direct_client = openai.OpenAI(
            api_key="fake", base_url=f"{os.environ['FAKE_PROVIDER_URL']}/v1", max_retries=0
        )
        registry = ProviderRegistry(settings)
        caller = ResilientCaller(registry, settings, breaker_redis())
        request = LLMRequest("gpt-4o-mini", (ChatMessage("user", "benchmark prompt"),), 16)
        chain = chain_for(request, settings)

        def direct() -> object:
            return direct_client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "benchmark prompt"}],
                max_tokens=16,
                timeout=settings.provider_timeout,
            )

        def resilient() -> object:
            return caller.call(request, chain, AttemptBudget(settings.effective_attempt_budget))

        for fn in (direct, resilient):
            _per_call(fn, 200)  # warm-up: connections, scripts, SDK import paths
        sides = {"direct SDK call": direct, "resilient pipeline": resilient}
        wall: dict[str, list[float]] = {name: [] for name in sides}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):  # interleaved so machine noise hits both sides alike
            for name, fn in sides.items():
                w, c = _per_call(fn, args.calls)
                wall[name].append(w)
                cpu[name].append(c)
        print(
            f"per call, {args.calls} calls x {args.rounds} interleaved rounds (median), "
            "zero-latency fake provider"
        )
        ratios = {}
        for label, results in (("CPU of the calling thread", cpu), ("wall", wall)):
            median = {name: sorted(v)[len(v) // 2] for name, v in results.items()}
            print(f"  {label}")
            for name, seconds in median.items():
                rounds = ", ".join(f"{x * 1e6:.0f}" for x in results[name])
                print(f"    {name:20} {seconds * 1e6:8.1f} us   rounds: {rounds}")
            ratios[label] = median["resilient pipeline"] / median["direct SDK call"]
            print(f"    ratio pipeline / direct: {ratios[label]:.3f}")
        met = ratios["CPU of the calling thread"] <= 1.10
        print(f"  goal: CPU ratio <= 1.10 ({'met' if met else 'not met'})")
        registry.close()
        direct_client.close()
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
