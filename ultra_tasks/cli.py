"""The ``ultra`` command line.

Exit codes scripts can rely on: 0 success; 1 a job failed; 2 bad input or configuration; 3 a dependency
(Redis, broker, database) is unreachable; 4 timed out waiting; 5 the operation mode is DEGRADED and 6 it is
EMERGENCY (`ultra status`; it exits 0 for NORMAL and 3 when neither Redis nor the database can be read);
7 the queues are full (QUEUE_MAX_SIZE backpressure), nothing more was submitted; 130 interrupted (Ctrl-C).

Known outcomes (timeouts, refusals, unreachable services) print one line on stderr, never a traceback;
``--debug`` (or ULTRA_DEBUG=1) adds the traceback.

Both consoles print with markup off: job models, answers, errors, component reasons and breaker names are
user or provider text, and rich would read ``[/x]`` in them as a tag (and crash). Styles are given as
``Text`` objects instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ultra_tasks.errors import (
    ConfigurationError,
    DependencyUnavailableError,
    JobExpiredError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    JobValidationError,
    QueueFullError,
)
from ultra_tasks.redis_client import REDIS_DOWN


class Exit(IntEnum):
    OK = 0
    JOB_FAILED = 1
    BAD_INPUT = 2
    UNAVAILABLE = 3
    TIMEOUT = 4
    DEGRADED = 5
    EMERGENCY = 6
    QUEUE_FULL = 7
    INTERRUPTED = 130


cli = typer.Typer(
    help="ultra-tasks: resilient LLM jobs on Celery.", no_args_is_help=True, add_completion=False
)
jobs_cli = typer.Typer(help="Inspect jobs.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
breakers_cli = typer.Typer(help="Fleet-wide circuit breakers.", no_args_is_help=True)
mode_cli = typer.Typer(help="The global operation mode.", no_args_is_help=True)
health_cli = typer.Typer(help="Health checks.", no_args_is_help=True)
cache_cli = typer.Typer(help="The result cache, fleet-wide.", no_args_is_help=True)
providers_cli = typer.Typer(help="Provider deployments (PROVIDERS_FILE).", no_args_is_help=True)
cli.add_typer(providers_cli, name="providers")
cli.add_typer(cache_cli, name="cache")
cli.add_typer(mode_cli, name="mode")
cli.add_typer(health_cli, name="health")
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(breakers_cli, name="breakers")
cli.add_typer(db_cli, name="db")
console = Console(markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)
#: set by --debug (or ULTRA_DEBUG=1): known errors print their traceback too
_debug = False
#: seconds `ultra submit` waits before it says why a job has no result, then between looks
EXPLAIN_AFTER_S = 1.0
EXPLAIN_EVERY_S = 2.0
#: the shortest refresh interval of `ultra status --watch` (seconds)
MIN_WATCH_INTERVAL_S = 0.5


@cli.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", envvar="ULTRA_DEBUG", help="Show the traceback of an error, not only its line."
    ),
) -> None:
    global _debug
    _debug = debug


def _styled(label: str, style: str, rest: str = "") -> Text:
    """``label`` in ``style``, then ``rest`` as plain text (never read as markup)."""
    return Text.assemble((label, style), rest)


def _fail(code: Exit, message: str) -> NoReturn:
    if _debug and sys.exc_info()[1] is not None:
        err.print_exception()
    err.print(_styled("error:", "red", f" {message}"), highlight=False)
    raise typer.Exit(int(code))


def _guarded(fn: Any) -> Any:
    """Map our exceptions to exit codes and one clear line on stderr."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (JobValidationError, ConfigurationError) as exc:
            _fail(Exit.BAD_INPUT, str(exc))
        except JobNotFoundError as exc:
            _fail(Exit.BAD_INPUT, str(exc))
        except DependencyUnavailableError as exc:
            _fail(Exit.UNAVAILABLE, str(exc))
        except REDIS_DOWN as exc:  # commands that read Redis directly (breakers, cache)
            _fail(Exit.UNAVAILABLE, f"redis unavailable: {exc}")
        except QueueFullError as exc:
            _fail(Exit.QUEUE_FULL, str(exc))
        except JobTimeoutError as exc:
            _fail(Exit.TIMEOUT, str(exc))
        except (JobFailedError, JobExpiredError) as exc:
            _fail(Exit.JOB_FAILED, str(exc))
        except KeyboardInterrupt:
            _fail(Exit.INTERRUPTED, "interrupted")

    return wrapper


@cli.command()
@_guarded
def submit(
    prompt: str | None = typer.Argument(None, help="The user prompt (or --batch FILE)."),
    model: str = typer.Option("gpt-4o-mini", "--model", "-m", help="Model (a batch line may set its own)."),
    priority: str = typer.Option("default", "--priority", "-p", help="high, default or low"),
    system: str | None = typer.Option(None, help="A system prompt."),
    max_tokens: int | None = typer.Option(None, help="Output token limit."),
    temperature: float | None = typer.Option(None),
    batch: str | None = typer.Option(
        None, "--batch", "-b", metavar="FILE", help="Submit every line of a JSON-lines file ('-': stdin)."
    ),
    ids_out: Path | None = typer.Option(None, "--ids-out", help="With --batch: write the job ids there."),
    wait: bool | None = typer.Option(
        None, "--wait/--no-wait", help="Wait for the result(s) (default: yes for one job, no for a batch)."
    ),
    timeout: float = typer.Option(120.0, help="Seconds to wait for the result(s)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Submit one job (and by default wait for its result), or a JSON-lines batch with --batch."""
    from ultra_tasks.jobs.submit import submit as submit_job

    if batch is not None:
        if prompt is not None:
            _fail(Exit.BAD_INPUT, "give a prompt or --batch FILE, not both")
        defaults: dict[str, Any] = {"model": model, "priority": priority}
        for name, value in (("system", system), ("max_tokens", max_tokens), ("temperature", temperature)):
            if value is not None:
                defaults[name] = value
        _submit_batch(batch, defaults, ids_out=ids_out, wait=bool(wait), timeout=timeout, as_json=as_json)
        return
    if prompt is None:
        _fail(Exit.BAD_INPUT, "give a prompt, or --batch FILE")
    if ids_out is not None:
        _fail(Exit.BAD_INPUT, "--ids-out goes with --batch")
    wait = True if wait is None else wait
    handle = submit_job(
        prompt, model=model, priority=priority, system=system, max_tokens=max_tokens, temperature=temperature
    )
    if not wait:
        console.print_json(json.dumps({"id": handle.id})) if as_json else console.print(handle.id)
        return
    result = _wait_explaining(handle, timeout)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        console.print(result.text, highlight=False)
        err.print(
            Text(
                f"job {handle.id} · {result.provider}/{result.model} · {result.latency_ms:.0f} ms · "
                f"{result.usage.get('total_tokens', 0)} tokens",
                style="dim",
            )
        )


def _wait_explaining(handle: Any, timeout: float) -> Any:
    """``handle.result(timeout)``, saying on stderr why the job has no result yet once it has waited
    EXPLAIN_AFTER_S, and again whenever the reasons change; a timeout's error line repeats the last ones.
    Ctrl-C says the job goes on without this command."""
    from ultra_tasks.jobs.waiting import explain_wait

    deadline = time.monotonic() + timeout
    shown: set[tuple[str, str]] = set()
    last: list[str] = []
    step = EXPLAIN_AFTER_S
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                return handle.result(timeout=max(0.0, min(step, left)))
            except JobTimeoutError:
                if time.monotonic() >= deadline:
                    why = f": {'; '.join(last)}" if last else ""
                    _fail(Exit.TIMEOUT, f"{JobTimeoutError(handle.id, timeout)}{why}")
            step = EXPLAIN_EVERY_S
            try:
                reasons = explain_wait(handle.id)
            except Exception as exc:  # the explanation is a courtesy: the wait goes on without it
                reasons = []
                if _debug:
                    err.print(f"(could not tell why: {exc})", highlight=False)
            last = [r.text for r in reasons]
            for reason in reasons:
                if reason.key not in shown:
                    err.print(_styled("waiting:", "yellow", f" {reason.text}"), highlight=False)
            shown = {r.key for r in reasons}
    except KeyboardInterrupt:
        _fail(Exit.INTERRUPTED, f"interrupted; job {handle.id} goes on (`ultra jobs show {handle.id}`)")


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )


def _read_lines(source: str) -> list[str]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(Exit.BAD_INPUT, f"--batch: cannot read {source}: {exc}")
    return text.splitlines()


def _submit_batch(
    source: str, defaults: dict[str, Any], *, ids_out: Path | None, wait: bool, timeout: float, as_json: bool
) -> None:
    """Validate every line (nothing is submitted if one is bad), submit, optionally wait, summarize."""
    from ultra_tasks.config import get_settings
    from ultra_tasks.jobs.batch import job_statuses, parse_batch, submit_entry
    from ultra_tasks.jobs.records import FINAL

    name = "stdin" if source == "-" else source
    entries, errors = parse_batch(_read_lines(source), get_settings(), defaults)
    for error in errors:
        err.print(f"{name}: {error}", highlight=False, markup=False)
    if errors:
        _fail(Exit.BAD_INPUT, f"{len(errors)} bad line(s) in {name}; nothing was submitted")
    if not entries:
        _fail(Exit.BAD_INPUT, f"no jobs in {name}")

    ids: list[str] = []
    notices: set[str] = set()
    stopped: tuple[Exit, str] | None = None
    deadline = time.monotonic() + timeout  # also bounds waiting for room while the queues are full
    with _progress() as progress:
        task = progress.add_task("submitting", total=len(entries))
        for entry in entries:
            try:
                handle = submit_entry(entry, full_wait_s=max(0.0, deadline - time.monotonic()))
            except (QueueFullError, DependencyUnavailableError) as exc:
                code = Exit.QUEUE_FULL if isinstance(exc, QueueFullError) else Exit.UNAVAILABLE
                stopped = (code, f"stopped at line {entry.line}: {exc}")
                break
            ids.append(handle.id)
            notice = getattr(handle, "notice", None)
            if notice:
                notices.add(str(notice))
            progress.advance(task)
    if ids_out is not None:
        ids_out.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    for notice in sorted(notices):
        err.print(_styled("note:", "yellow", f" {notice}"), highlight=False)

    statuses: dict[str, str] = {}
    if wait and stopped is None:
        deadline = time.monotonic() + timeout
        unique = list(dict.fromkeys(ids))  # an idempotency key repeated in the batch names one job
        with _progress() as progress:
            task = progress.add_task("waiting", total=len(unique))
            while True:
                pending = [i for i in unique if statuses.get(i) not in FINAL]
                try:
                    statuses.update(job_statuses(pending))
                except DependencyUnavailableError as exc:
                    progress.update(task, description=f"waiting (database: {exc.__class__.__name__})")
                done = sum(1 for i in unique if statuses.get(i) in FINAL)
                progress.update(task, completed=done)
                if done == len(unique) or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)

    summary: dict[str, Any] = {"lines": len(entries), "submitted": len(ids)}
    if wait and stopped is None:
        summary["succeeded"] = sum(1 for i in ids if statuses.get(i) == "succeeded")
        summary["failed"] = sum(1 for i in ids if statuses.get(i) in FINAL and statuses.get(i) != "succeeded")
        summary["unfinished"] = len(ids) - summary["succeeded"] - summary["failed"]
    if ids_out is not None:
        summary["ids_file"] = str(ids_out)
    if stopped is not None:
        summary["stopped"] = stopped[1]
    if as_json:
        print(json.dumps({**summary, "ids": ids}))
    else:
        console.print(" · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items()), highlight=False)
        for job_id, entry in zip(ids, entries, strict=False):
            if wait and statuses.get(job_id) in FINAL and statuses.get(job_id) != "succeeded":
                err.print(f"line {entry.line}: job {job_id} {statuses[job_id]}", highlight=False)
    if stopped is not None:
        _fail(stopped[0], f"{stopped[1]}; {len(entries) - len(ids)} line(s) from there on were not submitted")
    if summary.get("failed"):
        raise typer.Exit(int(Exit.JOB_FAILED))
    if summary.get("unfinished"):
        _fail(Exit.TIMEOUT, f"{summary['unfinished']} job(s) unfinished after {timeout:g}s")


@cli.command()
@_guarded
def status(
    as_json: bool = typer.Option(False, "--json", help="Print the fleet snapshot as JSON."),
    window: float = typer.Option(
        300.0, "--window", min=1, help="Seconds of history for the queue statistics."
    ),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh in place until Ctrl-C, like top."),
    interval: float = typer.Option(
        2.0, "--interval", "-n", min=MIN_WATCH_INTERVAL_S, help="Seconds between refreshes with --watch."
    ),
) -> None:
    """Mode, components, breakers, queue depths, queue statistics and cache hit rates of the whole fleet.

    Exit 0 NORMAL, 5 DEGRADED, 6 EMERGENCY; 3 when neither Redis nor the database can be read.
    With --watch: refreshed every --interval seconds until Ctrl-C, which exits 0.
    """
    from ultra_tasks.status.render import render_snapshot
    from ultra_tasks.status.snapshot import fleet_snapshot

    if watch:
        if as_json:
            _fail(Exit.BAD_INPUT, "--watch shows the tables; --json prints one snapshot")
        _watch_status(window, interval)
        raise typer.Exit(int(Exit.OK))
    snap = fleet_snapshot(window_s=window)
    if as_json:
        print(json.dumps(snap, indent=2))
    else:
        render_snapshot(snap, console)
    for part, why in snap["errors"].items():
        err.print(_styled("warning:", "yellow", f" {part} unreadable: {why}"), highlight=False)
    if "redis" in snap["errors"] and "database" in snap["errors"]:
        raise typer.Exit(int(Exit.UNAVAILABLE))
    code = {"DEGRADED": Exit.DEGRADED, "EMERGENCY": Exit.EMERGENCY}.get(snap["mode"]["mode"], Exit.OK)
    raise typer.Exit(int(code))


def _watch_status(window: float, interval: float) -> None:
    """The status tables redrawn in place every ``interval`` seconds until Ctrl-C."""
    from rich.console import Group
    from rich.live import Live

    from ultra_tasks.status.render import snapshot_renderables
    from ultra_tasks.status.snapshot import fleet_snapshot

    def frame() -> Group:
        snap = fleet_snapshot(window_s=window)
        head = Text(
            f"ultra status · every {interval:g}s · {time.strftime('%H:%M:%S')} · Ctrl-C to stop", style="dim"
        )
        warnings = [
            _styled("warning:", "yellow", f" {part} unreadable: {why}")
            for part, why in snap["errors"].items()
        ]
        return Group(head, *snapshot_renderables(snap), *warnings)

    try:
        with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass


@cache_cli.command("stats")
@_guarded
def cache_stats(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Fleet-wide hit rates per level, the Redis level's keys per namespace, and this host's disk level."""
    from ultra_tasks.cache.admin import cache_redis_url, disk_level_stats, redis_level_stats
    from ultra_tasks.config import get_settings
    from ultra_tasks.fleet.cache import read_cache
    from ultra_tasks.redis_client import shared_redis

    settings = get_settings()
    info: dict[str, Any] = {
        "fleet": read_cache(shared_redis()).to_json(),
        "redis_level": redis_level_stats(shared_redis(cache_redis_url(settings))),
        "disk_level": disk_level_stats(settings.effective_cache_disk_dir),
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    if info["fleet"]:
        table = Table(
            "level", "hits", "misses", "hit rate", "errors", "avg read", title="fleet-wide counters"
        )
        for level, c in info["fleet"].items():
            rate = "-" if c.get("hit_rate") is None else f"{c['hit_rate']:.1%}"
            avg = "-" if c.get("avg_read_us") is None else f"{c['avg_read_us']:.0f} µs"
            table.add_row(
                level, str(c.get("hits", 0)), str(c.get("misses", 0)), rate, str(c.get("errors", 0)), avg
            )
        console.print(table)
    else:
        console.print("fleet-wide counters: none reported yet", highlight=False)
    level = info["redis_level"]
    table = Table("namespace", "keys", "bytes", title=f"Redis level ({level['server']})")
    for ns, row in level["namespaces"].items():
        table.add_row(ns, str(row["keys"]), str(row["bytes"]))
    table.add_row(Text("total", style="bold"), str(level["keys"]), str(level["bytes"]))
    console.print(table)
    if level["truncated"]:
        console.print(f"(counted the first {level['keys']} keys only)", highlight=False)
    disk = info["disk_level"]
    table = Table("namespace", "entries", title=f"disk level on this host ({disk['directory']})")
    for ns, count in disk["namespaces"].items():
        table.add_row(ns, str(count))
    table.add_row(Text("total", style="bold"), f"{disk['entries']} ({disk['bytes']} bytes)")
    console.print(table)


@cache_cli.command("clear")
@_guarded
def cache_clear(
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Only this namespace (e.g. llm)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Clear the Redis level and this host's disk level; every process drops the entries from memory."""
    from ultra_tasks.cache.admin import clear_cache
    from ultra_tasks.cache.layered import CacheValueError
    from ultra_tasks.config import get_settings

    what = f"namespace {namespace!r}" if namespace else "every namespace"
    if not yes:
        if not sys.stdin.isatty():
            _fail(Exit.BAD_INPUT, f"clearing {what} needs confirmation: pass --yes")
        if not typer.confirm(f"Clear {what} from the fleet's cache?"):
            _fail(Exit.BAD_INPUT, "not confirmed; nothing was cleared")
    try:
        cleared = clear_cache(get_settings(), namespace)
    except CacheValueError as exc:
        _fail(Exit.BAD_INPUT, f"--namespace: {exc}")
    console.print(
        f"cleared {', '.join(cleared.namespaces)}: {cleared.redis_removed} Redis entries, "
        f"{cleared.disk_removed} disk entries on this host; every process was told to drop them from memory",
        highlight=False,
    )


@jobs_cli.command("show")
@_guarded
def jobs_show(job_id: str) -> None:
    """Show one job's record as JSON."""
    from ultra_tasks.jobs.submit import JobHandle

    console.print_json(json.dumps(JobHandle(job_id).record()))


@jobs_cli.command("retry")
@_guarded
def jobs_retry(job_id: str) -> None:
    """Resubmit a failed or expired job with a fresh attempt budget."""
    from ultra_tasks.errors import JobError
    from ultra_tasks.jobs.submit import JobHandle

    try:
        JobHandle(job_id).retry()
    except JobError as exc:
        if isinstance(exc, JobNotFoundError):
            raise
        _fail(Exit.BAD_INPUT, str(exc))
    console.print(f"{job_id}: queued again")


@jobs_cli.command("list")
@_guarded
def jobs_list(
    status: str | None = typer.Option(None, help="queued, running, succeeded or failed"),
    limit: int = typer.Option(20, min=1, max=1000),
) -> None:
    """List the newest jobs."""
    from ultra_tasks.jobs.models import JobStatus
    from ultra_tasks.jobs.records import list_jobs

    try:
        wanted = JobStatus(status) if status else None
    except ValueError:
        _fail(Exit.BAD_INPUT, f"--status: expected one of {', '.join(s.value for s in JobStatus)}")
    table = Table("id", "status", "priority", "model", "provider", "attempts", "created")
    for r in list_jobs(limit=limit, status=wanted):
        table.add_row(
            r.id,
            r.status,
            r.priority,
            r.model_used or r.model,
            r.provider or "",
            str(r.attempts),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


@jobs_cli.command("purge")
@_guarded
def jobs_purge(
    older_than: str = typer.Option(
        ..., "--older-than", help="Delete finished jobs that finished longer ago than this: 30d, 12h, 90m."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted; delete nothing."),
    batch: int = typer.Option(500, "--batch", min=1, max=10_000, help="Rows per transaction."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Delete succeeded, failed and expired jobs older than --older-than, in small batches (queued,
    running and parked jobs are never touched). Beat does the same with JOB_RETENTION."""
    from ultra_tasks.db.migrate import upgrade_schema
    from ultra_tasks.durations import parse_duration
    from ultra_tasks.jobs.retention import purge_finished

    try:
        older_than_s = parse_duration(older_than)
    except ValueError as exc:
        _fail(Exit.BAD_INPUT, f"--older-than: {exc}")
    if older_than_s <= 0:
        _fail(Exit.BAD_INPUT, f"--older-than: {older_than!r} must be longer than zero")
    upgrade_schema()
    progress = None if as_json or dry_run else lambda n, total: err.print(f"batch {n}: {total} deleted")
    report = purge_finished(
        older_than_s, dry_run=dry_run, batch_rows=batch, max_rows=sys.maxsize, on_batch=progress
    )
    oldest = report.oldest_finished_at.isoformat() if report.oldest_finished_at else None
    newest = report.newest_finished_at.isoformat() if report.newest_finished_at else None
    if as_json:
        out = {
            "dry_run": report.dry_run,
            "cutoff": report.cutoff.isoformat(),
            "deleted" if not report.dry_run else "would_delete": report.deleted,
            "batches": report.batches,
            "oldest_finished_at": oldest,
            "newest_finished_at": newest,
        }
        print(json.dumps(out))
        return
    verb = "would delete" if report.dry_run else "deleted"
    span = f" (finished {oldest} .. {newest})" if oldest else ""
    console.print(
        f"{verb} {report.deleted} finished jobs that finished before {report.cutoff.isoformat()}{span}",
        highlight=False,
    )


@breakers_cli.command("list")
@_guarded
def breakers_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every breaker the fleet has used, with its shared state and counters."""
    from ultra_tasks.resilience.breaker import CircuitBreaker, breaker_names

    rows = [CircuitBreaker(name).metrics() for name in breaker_names()]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("breaker", "state", "successes", "failures", "rejections", "success rate", "state changes")
    for m in rows:
        rate = "" if m["success_rate"] is None else f"{m['success_rate']:.1%}"
        changes = ", ".join(f"{k}: {v}" for k, v in sorted(m["state_changes"].items()))
        table.add_row(
            m["name"],
            m["state"],
            str(m["successes"]),
            str(m["failures"]),
            str(m["rejections"]),
            rate,
            changes,
        )
    console.print(table)


def _breaker_action(name: str, action: str, **options: Any) -> None:
    from ultra_tasks.resilience.breaker import CircuitBreaker, breaker_names

    if name not in breaker_names():
        _fail(Exit.BAD_INPUT, f"no breaker named {name!r} (see `ultra breakers list`)")
    breaker = CircuitBreaker(name)
    getattr(breaker, action)(**options)
    console.print(f"{name}: {breaker.state}")


@breakers_cli.command("reset")
@_guarded
def breakers_reset(name: str) -> None:
    """Close a breaker (also ends forced-open and disabled)."""
    _breaker_action(name, "reset")


@breakers_cli.command("force-open")
@_guarded
def breakers_force_open(
    name: str,
    for_seconds: float | None = typer.Option(
        None, "--for", min=1, help="Close again by itself after this many seconds (default: until reset)."
    ),
) -> None:
    """Refuse every call through a breaker, fleet-wide, until reset (or for --for seconds). Jobs that
    need it are parked and released as soon as it is cleared."""
    _breaker_action(name, "force_open", for_s=for_seconds)


@breakers_cli.command("forget")
@_guarded
def breakers_forget(name: str) -> None:
    """Delete a breaker no process uses any more (a deployment renamed or removed): its shared state,
    counters and its line in `ultra breakers list`. One still in use comes back closed."""
    from ultra_tasks.resilience.breaker import forget_breaker

    if not forget_breaker(name):
        _fail(Exit.BAD_INPUT, f"no breaker named {name!r} (see `ultra breakers list`)")
    console.print(f"{name}: forgotten")


@breakers_cli.command("disable")
@_guarded
def breakers_disable(name: str) -> None:
    """Let every call through a breaker, recording nothing, until reset."""
    _breaker_action(name, "disable")


@mode_cli.command("show")
@_guarded
def mode_show(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The current mode, why, the unhealthy components and the latest changes."""
    from ultra_tasks.mode.operation_mode import SystemOperationMode

    mode = SystemOperationMode()
    info: dict[str, Any] = {
        "mode": mode.current_mode,
        "reasons": mode.degradation_reasons,
        "components": mode.degraded_components,
        "history": mode.history(limit=10),
    }
    if as_json:
        console.print_json(json.dumps(info))
        return
    console.print(Text.assemble("mode: ", (str(info["mode"]), "bold")))
    for r in info["reasons"]:
        console.print(f"  {r.get('component')}: {r.get('status')} - {r.get('reason')}", highlight=False)
    for h in info["history"]:
        console.print(f"  {h['at']}  {h['from']} -> {h['to']}", highlight=False)


@mode_cli.command("set")
@_guarded
def mode_set(
    mode_name: str = typer.Argument(..., metavar="MODE", help="NORMAL, DEGRADED or EMERGENCY"),
    for_seconds: float = typer.Option(3600.0, "--for", min=1, help="How long the override holds."),
) -> None:
    """Override the mode for a while (the policy decides again when it expires)."""
    from ultra_tasks.mode.operation_mode import SystemOperationMode

    try:
        result = SystemOperationMode().set_override(mode_name.upper(), for_seconds)
    except ValueError:
        _fail(Exit.BAD_INPUT, f"unknown mode {mode_name!r}; expected NORMAL, DEGRADED or EMERGENCY")
    console.print(f"mode: {result} for {for_seconds:g}s")


@mode_cli.command("clear")
@_guarded
def mode_clear() -> None:
    """End a manual override now."""
    from ultra_tasks.mode.operation_mode import SystemOperationMode

    console.print(f"mode: {SystemOperationMode().clear_override()}")


@health_cli.command("run")
@_guarded
def health_run(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Run every health check now, record the results and evaluate the mode. Exit 1 unless NORMAL."""
    from ultra_tasks.health.runner import check_and_evaluate
    from ultra_tasks.mode.operation_mode import SystemOperationMode

    summary = check_and_evaluate(SystemOperationMode())
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        table = Table("check", "status")
        for name, status in sorted(summary["checks"].items()):
            table.add_row(name, status)
        console.print(table)
        console.print(Text.assemble("mode: ", (str(summary["mode"]), "bold")))
    if summary["mode"] != "NORMAL":
        raise typer.Exit(int(Exit.JOB_FAILED))


@providers_cli.command("list")
@_guarded
def providers_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every deployment: its kind, models, limits, where its calls go and its breaker's state."""
    from ultra_tasks.providers.status import deployment_rows
    from ultra_tasks.resilience.breaker import breaker_redis

    rows = deployment_rows(client=breaker_redis())
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("deployment", "kind", "models", "weight", "limits", "breaker", "where")
    for r in rows:
        limits = ", ".join(
            f"{k} {r[k]:g}" for k in ("rpm", "tpm", "max_concurrency", "timeout_s") if r[k] is not None
        )
        table.add_row(
            r["name"], r["kind"], ", ".join(r["models"]), f"{r['weight']:g}", limits, r["breaker"], r["where"]
        )
    console.print(table)


@providers_cli.command("check")
@_guarded
def providers_check(
    name: str | None = typer.Argument(None, help="One deployment (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Probe each deployment now (a one-token completion through its breaker). Exit 1 if any fails."""
    import asyncio

    from ultra_tasks.health.checks import OK
    from ultra_tasks.health.runner import deployment_checks, run_checks
    from ultra_tasks.providers.deployments import catalog

    if name is not None and name not in catalog().by_name:
        _fail(Exit.BAD_INPUT, f"no deployment named {name!r} (see `ultra providers list`)")
    checks = deployment_checks(names=[name] if name is not None else None)
    for check in checks:
        probe = getattr(check, "client", None)
        if probe is not None:
            probe.min_interval_s = 0  # now, not the answer of a check that ran a moment ago
    results = asyncio.run(run_checks(checks))
    rows = [
        {"name": c.name.removeprefix("llm_provider_"), "status": r.status, "message": r.message}
        for c, r in zip(checks, results.values(), strict=True)
    ]
    if as_json:
        console.print_json(json.dumps(rows))
    else:
        table = Table("deployment", "status", "message")
        for row in rows:
            table.add_row(row["name"], row["status"], row["message"])
        console.print(table)
    if any(row["status"] != OK for row in rows):
        raise typer.Exit(int(Exit.JOB_FAILED))


@db_cli.command("upgrade")
@_guarded
def db_upgrade() -> None:
    """Apply database migrations."""
    from ultra_tasks.config import get_settings, redact_url
    from ultra_tasks.db.migrate import upgrade_schema

    upgrade_schema()
    console.print(f"schema up to date at {redact_url(get_settings().effective_database_url)}")


@cli.command("config")
@_guarded
def show_config() -> None:
    """Validate the configuration and print it (secrets masked); then, on stderr, where each provider's
    calls go (a provider with no key is not configured unless USE_FAKE_PROVIDER chooses the fake)."""
    from ultra_tasks.config import get_settings
    from ultra_tasks.providers.deployments import catalog
    from ultra_tasks.providers.registry import describe

    settings = get_settings()
    console.print_json(json.dumps(settings.redacted(), default=str))
    for deployment in catalog(settings).deployments:
        err.print(f"provider {deployment.name}: {describe(deployment.name, settings)}", highlight=False)


@cli.command("fake-provider")
@_guarded
def fake_provider(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8787, min=0, max=65535),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow listening beyond loopback (it has no authentication)."
    ),
) -> None:
    """Run the local fault-injecting provider (OpenAI and Anthropic APIs)."""
    from ultra_tasks.providers.fake_server import serve

    serve(host=host, port=port, allow_remote=allow_remote)


@cli.command("status-server")
@_guarded
def status_server(
    host: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (beyond loopback STATUS_TOKEN is required)."
    ),
    port: int | None = typer.Option(None, min=1, max=65535, help="Port (default: STATUS_PORT, 8088)."),
) -> None:
    """Serve the status page (/), its JSON (/status.json), fleet metrics (/metrics), /healthz and /readyz.

    With STATUS_TOKEN set every path but /healthz needs `Authorization: Bearer <token>`.
    """
    from ultra_tasks.config import get_settings
    from ultra_tasks.status.web import serve

    settings = get_settings()
    serve(host=host, port=port or settings.status_port, token=settings.status_token)


@cli.command()
@_guarded
def flower(
    host: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (beyond loopback FLOWER_BASIC_AUTH must be your own)."
    ),
    port: int | None = typer.Option(None, min=1, max=65535, help="Port (default: FLOWER_PORT, 5555)."),
    print_only: bool = typer.Option(False, "--print", help="Print the celery command instead of running it."),
) -> None:
    """Run Flower behind FLOWER_BASIC_AUTH; refuses the default credentials beyond loopback.

    Start Flower this way rather than with `celery flower`, whose default address is every interface.
    """
    from ultra_tasks.config import get_settings
    from ultra_tasks.security import check_flower_exposure

    settings = get_settings()
    check_flower_exposure(
        host,
        settings.flower_basic_auth,
        unauthenticated_api=os.environ.get("FLOWER_UNAUTHENTICATED_API", ""),
    )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "ultra_tasks",
        "flower",
        f"--address={host}",
        f"--port={port or settings.flower_port}",
    ]
    if print_only:
        console.print(" ".join(argv), highlight=False)
        return
    # Flower reads its basic auth from the environment, which keeps the secret out of `ps` output
    os.execve(argv[0], argv, {**os.environ, "FLOWER_BASIC_AUTH": settings.flower_basic_auth})


@cli.command()
@_guarded
def worker(
    role: str = typer.Argument(..., help="Worker role from workers/: llm or ops."),
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", min=1),
    name: str | None = typer.Option(None, "--name", "-n", help="Celery node name, e.g. llm2@%h"),
    print_only: bool = typer.Option(False, "--print", help="Print the celery command instead of running it."),
) -> None:
    """Start a Celery worker in one of the roles defined in workers/."""
    from ultra_tasks.config import get_settings
    from workers import roles

    available = roles()
    if role not in available:
        _fail(Exit.BAD_INPUT, f"unknown role {role!r}; expected one of {', '.join(available)}")
    argv = available[role].argv(get_settings(), concurrency=concurrency, node_name=name)
    if print_only:
        console.print(" ".join(argv), highlight=False)
        return
    os.execv(argv[0], argv)


def _print_demo(outcomes: list[Any]) -> int:
    table = Table("priority", "model", "served by", "ms", "tokens", "answer", title="demo batch")
    failed = 0
    for o in outcomes:
        if o.result is None:
            failed += 1
            table.add_row(o.priority, o.model, Text("failed", style="red"), "", "", o.error or "")
        else:
            r = o.result
            table.add_row(
                o.priority,
                o.model,
                f"{r.provider}/{r.model}",
                f"{r.latency_ms:.0f}",
                str(r.usage.get("total_tokens", 0)),
                r.text[:60],
            )
    console.print(table)
    return failed


@cli.command()
@_guarded
def demo(timeout: float = typer.Option(60.0, help="Seconds to wait for the batch.")) -> None:
    """Submit a demo batch to a running stack and print the results."""
    from ultra_tasks.demo import run_demo

    if _print_demo(run_demo(timeout=timeout)):
        raise typer.Exit(int(Exit.JOB_FAILED))


@cli.command()
@_guarded
def up(
    exit_after_demo: bool = typer.Option(False, help="Stop the stack once the demo batch is done."),
    run_demo_batch: bool = typer.Option(True, "--demo/--no-demo", help="Run the demo batch once up."),
) -> None:
    """Run the whole stack locally (workers, beat, Flower; the fake provider, chosen explicitly when no API
    key is set) and a demo batch."""
    from ultra_tasks.db.migrate import upgrade_schema
    from ultra_tasks.demo import run_demo
    from ultra_tasks.stack import Stack, choose_providers

    settings, notes = choose_providers()
    for note in notes:
        console.print(note, highlight=False)
    upgrade_schema()
    stack = Stack(settings)

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a shell that starts us in the background ignores SIGINT unless we take it back.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    code = Exit.OK
    try:
        stack.start(echo=lambda line: console.print(line, highlight=False))
        user = settings.flower_basic_auth.split(",")[0].split(":")[0]
        console.print(f"Flower: http://127.0.0.1:{settings.flower_port}  (user {user!r}, FLOWER_BASIC_AUTH)")
        console.print(f"Status: http://127.0.0.1:{settings.status_port}/  (/status.json, /metrics)")
        console.print(
            f"API: http://127.0.0.1:{settings.api_port}/v1  (OpenAI-compatible; /docs; a key: "
            "`ultra keys create --tenant NAME`)"
        )
        if run_demo_batch and _print_demo(run_demo()):
            code = Exit.JOB_FAILED
        if exit_after_demo:
            return
        console.print("stack running; Ctrl-C stops it")
        while True:
            dead = stack.check_alive()
            if dead:
                _fail(Exit.UNAVAILABLE, f"{', '.join(dead)} stopped; see {settings.var_dir / 'log'}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping...")
    except (TimeoutError, RuntimeError) as exc:
        _fail(Exit.UNAVAILABLE, str(exc))
    finally:
        stack.stop()
    if code != Exit.OK:
        raise typer.Exit(int(code))


from ultra_tasks.api import cli as _api_cli  # noqa: E402  (its commands use _guarded, defined above)

_api_cli.register(cli, _guarded)


def main() -> None:
    try:
        cli()
    except ConfigurationError as exc:  # raised while building the Celery app's config at import time
        err.print(_styled("error:", "red", f" {exc}"), highlight=False)
        sys.exit(int(Exit.BAD_INPUT))


if __name__ == "__main__":
    main()
