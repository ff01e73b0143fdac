"""The CLI shows user and provider text as text: a model named ``gpt-[/x]``, an error or a component reason
holding rich markup is printed as written, never read as markup (which crashed `ultra jobs list`). Rows are
recorded in the session's real database and Redis; the CLI runs in a subprocess."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ultra_cli as ultra
from sqlalchemy import delete

from ultra_tasks import CircuitBreaker, SystemOperationMode, keys
from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.models import ComponentStatus, JobRecord

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("database", "redis_client")]

MODEL = "gpt-[/x]"
PROVIDER = "[bold]acme[/bold"
ERROR = "[red]boom[/] [/] [link=file:///etc/passwd]click[/link]"


@pytest.fixture
def markup_job() -> Iterator[str]:
    """A failed job whose model, provider, error and status reason hold markup."""
    job_id = str(uuid.uuid4())
    now = utcnow()
    with session_scope() as s:
        s.add(
            JobRecord(
                id=job_id,
                status="failed",
                priority="default",
                queue="llm.default",
                model=MODEL,
                request={"messages": [{"role": "user", "content": "[/hi]"}], "metadata": {"tag": "[/meta]"}},
                error={"type": "ProviderError", "message": ERROR},
                provider=PROVIDER,
                attempts=1,
                created_at=now,
                updated_at=now,
                finished_at=now,
                status_reason=ERROR,
            )
        )
    yield job_id
    with session_scope() as s:
        s.execute(delete(JobRecord).where(JobRecord.id == job_id))


def test_jobs_list_and_show_print_a_model_provider_and_error_holding_markup_as_written(
    markup_job: str,
) -> None:
    out = ultra("jobs", "list", "--limit", "50")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if markup_job in line)
    assert MODEL in row and PROVIDER in row
    shown = ultra("jobs", "show", markup_job)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["model"] == MODEL
    assert ERROR in json.dumps(record)


def test_an_error_naming_a_model_with_markup_is_printed_as_written_with_exit_2() -> None:
    out = ultra("submit", "hi", "--model", "[/x]model", "--no-wait")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "[/x]model" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture
def markup_breaker(redis_client: Any) -> Iterator[str]:
    name = f"openai:{MODEL}:{uuid.uuid4().hex[:6]}"  # per-model breakers are named after the model
    breaker = CircuitBreaker(name)
    breaker.reset()
    yield name
    breaker.reset()
    redis_client.srem(keys.breaker_index(), name)


def test_breakers_list_prints_a_breaker_named_with_markup_as_written(markup_breaker: str) -> None:
    out = ultra("breakers", "list")
    assert out.returncode == 0, out.stderr
    assert markup_breaker in out.stdout


@pytest.fixture
def markup_component() -> Iterator[str]:
    """A healthy component whose name, kind and reason hold markup (the mode stays NORMAL)."""
    name = f"[/c]{uuid.uuid4().hex[:6]}"
    SystemOperationMode().record_component(name, "ok", ERROR, kind="[/k]", severity="low")
    yield name
    with session_scope() as s:
        s.execute(delete(ComponentStatus).where(ComponentStatus.component == name))


def test_status_prints_a_component_with_markup_in_its_name_kind_and_reason_as_written(
    markup_component: str,
) -> None:
    out = ultra("status")
    assert out.returncode in (0, 5, 6), out.stderr
    assert "Traceback" not in out.stderr
    row = next(line for line in out.stdout.splitlines() if markup_component in line)
    assert "[/k]" in row and "[red]boom[/]" in row
