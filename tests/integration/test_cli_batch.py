"""`ultra submit --batch FILE.jsonl` against the real database, broker and a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import RedisServer
from conftest import ultra_cli as ultra

from ultra_tasks import keys
from ultra_tasks.config import reset_settings
from ultra_tasks.jobs import records
from ultra_tasks.jobs.stats import queue_depths
from ultra_tasks.jobs.submit import JobHandle

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("database", "redis_client")]


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _ultra_stdin(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ultra_tasks.cli", *args],
        input=text,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )


def _depths() -> dict[str, int]:
    return queue_depths(redis.Redis.from_url(os.environ["REDIS_URL"]))


def test_a_bad_line_submits_nothing_and_every_bad_line_is_named(tmp_path: Path) -> None:
    # Given a batch with good lines and four bad ones
    batch = _write(
        tmp_path / "jobs.jsonl",
        [
            {"prompt": "fine"},
            {"promtp": "typo"},
            {"prompt": "fine too", "priority": "high"},
            {"prompt": "too long", "max_tokens": 0},
            "",
            "{not json",
            {"messages": [{"role": "robot", "content": "hi"}]},
        ],
    )
    jobs_before, depths_before = records.count_jobs(), _depths()
    # When it is submitted
    out = ultra("submit", "--batch", str(batch))
    # Then it exits 2 naming each bad line and field, and nothing was recorded or enqueued
    assert out.returncode == 2
    assert "line 2: promtp: unknown field 'promtp'" in out.stderr
    assert "line 4: max_tokens: expected an integer from 1 to" in out.stderr
    assert "line 6: not valid JSON" in out.stderr
    assert "line 7: messages[0].role: expected one of system, user, assistant, got 'robot'" in out.stderr
    assert "line 1:" not in out.stderr and "line 3:" not in out.stderr
    assert "4 bad line(s)" in out.stderr and "nothing was submitted" in out.stderr
    assert records.count_jobs() == jobs_before
    assert _depths() == depths_before


def test_a_batch_of_20_waits_for_every_result_and_writes_the_ids(
    tmp_path: Path, llm_worker: Any, fake_provider: Any
) -> None:
    lines: list[Any] = []
    for n in range(20):
        line: dict[str, Any] = {"metadata": {"n": n}, "priority": ("high", "default", "low")[n % 3]}
        if n % 2:
            line["messages"] = [{"role": "user", "content": f"batch message {n}"}]
        else:
            line["prompt"] = f"batch prompt {n}"
        if n % 4 == 0:
            line["model"] = "claude-3-5-haiku-latest"
        lines.append(line)
    batch = _write(tmp_path / "twenty.jsonl", lines)
    ids_file = tmp_path / "ids.txt"

    out = ultra("submit", "--batch", str(batch), "--wait", "--ids-out", str(ids_file), "--json", timeout=150)

    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert {k: summary[k] for k in ("lines", "submitted", "succeeded", "failed", "unfinished")} == {
        "lines": 20,
        "submitted": 20,
        "succeeded": 20,
        "failed": 0,
        "unfinished": 0,
    }
    ids = ids_file.read_text().split()
    assert ids == summary["ids"] and len(set(ids)) == 20
    for n, job_id in enumerate(ids):  # in the order of the lines, each ran as its line asked
        record = JobHandle(job_id).record()
        assert record["status"] == "succeeded"
        assert record["request"]["metadata"] == {"n": n}
        assert record["priority"] == lines[n]["priority"]
        assert record["model"] == lines[n].get("model", "gpt-4o-mini")
        text = lines[n].get("prompt") or lines[n]["messages"][0]["content"]
        assert record["result"]["text"] == f"echo: {text}"


def test_a_batch_from_stdin_without_wait_prints_the_summary(llm_worker: Any) -> None:
    text = json.dumps({"prompt": "from stdin 1"}) + "\n" + json.dumps({"prompt": "from stdin 2"}) + "\n"
    out = _ultra_stdin(text, "submit", "--batch", "-", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["submitted"] == 2 and "succeeded" not in summary
    for job_id in summary["ids"]:  # let the worker finish them, so no other test sees them queued
        assert JobHandle(job_id).result(timeout=60).text.startswith("echo: from stdin")


def test_a_failed_job_in_a_batch_exits_1_and_names_its_line(
    tmp_path: Path, llm_worker: Any, fake_provider: Any
) -> None:
    fake_provider.add_fault("status", status=400, model="gpt-4o", message="bad request")
    batch = _write(
        tmp_path / "mixed.jsonl",
        [{"prompt": "this one works"}, {"prompt": "this one fails", "model": "gpt-4o", "fallback": False}],
    )
    out = ultra("submit", "--batch", str(batch), "--wait", "--timeout", "60", timeout=90)
    assert out.returncode == 1, out.stderr
    assert "succeeded: 1 · failed: 1 · unfinished: 0" in out.stdout
    assert "line 2: job" in out.stderr and "failed" in out.stderr


def test_a_batch_that_meets_full_queues_stops_with_exit_7_and_says_where(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    # Given a system that already holds QUEUE_MAX_SIZE jobs (no worker runs them)
    os.environ.update({"BROKER_URL": private_redis.url, "QUEUE_MAX_SIZE": "2"})
    reset_settings()
    held = redis.Redis.from_url(os.environ["REDIS_URL"])
    now_ms = int(time.time() * 1000)
    held.zadd(keys.admitted("high"), {"held-1": now_ms, "held-2": now_ms})
    jobs_before = records.count_jobs()
    batch = _write(tmp_path / "full.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    # When a batch is submitted, waiting at most 1 s for room
    out = ultra("submit", "--batch", str(batch), "--timeout", "1")
    # Then nothing was recorded, and the exit code and message say the queues are full
    assert out.returncode == 7, out.stderr
    assert (
        "stopped at line 1: queue full" in out.stderr
        and "2 line(s) from there on were not submitted" in out.stderr
    )
    assert "submitted: 0" in out.stdout
    assert records.count_jobs() == jobs_before


def test_submit_needs_a_prompt_or_a_batch_and_not_both(tmp_path: Path) -> None:
    none = ultra("submit")
    assert none.returncode == 2 and "give a prompt, or --batch FILE" in none.stderr
    both = ultra("submit", "hello", "--batch", str(_write(tmp_path / "b.jsonl", [{"prompt": "x"}])))
    assert both.returncode == 2 and "not both" in both.stderr
    missing = ultra("submit", "--batch", str(tmp_path / "absent.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    empty = ultra("submit", "--batch", str(_write(tmp_path / "empty.jsonl", ["", "  "])))
    assert empty.returncode == 2 and "no jobs in" in empty.stderr
