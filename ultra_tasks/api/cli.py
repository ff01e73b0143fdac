"""``ultra api``, ``ultra keys create|list|revoke`` and ``ultra batches list|show`` (registered by
ultra_tasks/cli.py, which maps errors to exit codes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Column, Table

from ultra_tasks.errors import ApiError, ConfigurationError

console = Console(markup=False)

keys_cli = typer.Typer(help="API tenants and their keys.", no_args_is_help=True)
batches_cli = typer.Typer(help="API batches, every tenant's (for operators).", no_args_is_help=True)


def register(cli: typer.Typer, guarded: Callable[[Any], Any]) -> None:
    """Add the API's commands to the ``ultra`` command line."""
    cli.add_typer(keys_cli, name="keys")
    cli.add_typer(batches_cli, name="batches")
    from ultra_tasks.billing import cli as billing_cli

    billing_cli.register(cli, guarded)

    @cli.command("api")
    @guarded
    def api(
        host: str = typer.Option(
            "127.0.0.1", help="Interface to listen on (beyond loopback API_TLS_CERTFILE is required)."
        ),
        port: int | None = typer.Option(None, min=1, max=65535, help="Port (default: API_PORT, 8000)."),
        behind_tls_proxy: bool = typer.Option(
            False, "--behind-tls-proxy", help="A TLS-terminating proxy is the only client (beyond loopback)."
        ),
    ) -> None:
        """Serve the OpenAI-compatible HTTP API (chat completions, files, batches; OpenAPI page at /docs)."""
        from ultra_tasks.api.server import serve
        from ultra_tasks.config import get_settings

        settings = get_settings()
        serve(host, port or settings.api_port, behind_tls_proxy=behind_tls_proxy, settings=settings)

    @keys_cli.command("create")
    @guarded
    def keys_create(
        tenant: str = typer.Option(..., "--tenant", help="The tenant's name (made on first use)."),
        rpm: int | None = typer.Option(None, "--rpm", min=1, help="Requests per minute for the tenant."),
        budget_usd: float | None = typer.Option(
            None, "--budget-usd", min=0, help="The tenant's budget per --period (USD)."
        ),
        period: str | None = typer.Option(None, "--period", help="The budget's period: day or month."),
    ) -> None:
        """Make a key for a tenant; the key is printed once, on the last line, and never kept."""
        from ultra_tasks.api.tenants import create_key

        info, key = create_key(tenant, rpm=rpm, budget_usd=budget_usd, budget_period=period)
        console.print(f"key {info.id} for tenant {info.tenant}; it is shown once, keep it now:")
        print(key)

    @keys_cli.command("list")
    @guarded
    def keys_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Every key: its id, tenant, first characters, when made and revoked (never the key)."""
        from ultra_tasks.api.tenants import list_keys

        found = list_keys()
        if as_json:
            print(json.dumps([k.to_dict() for k in found], indent=2))
            return
        table = Table("tenant", "key starts", "created", "revoked")
        table.columns.insert(0, Column("id", no_wrap=True))
        for k in found:
            table.add_row(k.id, k.tenant, f"{k.prefix}…", _when(k.created_at), _when(k.revoked_at) or "-")
        console.print(table)

    @keys_cli.command("revoke")
    @guarded
    def keys_revoke(key_id: str) -> None:
        """Revoke a key by its id (`ultra keys list`): requests with it are refused with 401."""
        from ultra_tasks.api.tenants import revoke_key

        if not revoke_key(key_id):
            raise ConfigurationError(f"no live key with id {key_id!r} (see `ultra keys list`)")
        console.print(f"key {key_id} revoked")

    @batches_cli.command("list")
    @guarded
    def batches_list(
        limit: int = typer.Option(20, min=1, max=100), as_json: bool = typer.Option(False, "--json")
    ) -> None:
        """The newest batches of every tenant with their status and counts."""
        from ultra_tasks.api.batch_store import list_batches

        found, _ = list_batches(None, limit=limit)
        if as_json:
            print(json.dumps(found, indent=2))
            return
        table = Table("status", "total", "completed", "failed", "created")
        table.columns.insert(0, Column("id", no_wrap=True))
        for b in found:
            counts = b["request_counts"]
            created = datetime.fromtimestamp(b["created_at"], UTC)
            table.add_row(
                b["id"],
                b["status"],
                str(counts["total"]),
                str(counts["completed"]),
                str(counts["failed"]),
                _when(created),
            )
        console.print(table)

    @batches_cli.command("show")
    @guarded
    def batches_show(batch_id: str) -> None:
        """One batch as the API answers it (brought up to date)."""
        from ultra_tasks.api.batch_store import retrieve

        try:
            print(json.dumps(retrieve(batch_id, None), indent=2))
        except ApiError as exc:
            raise ConfigurationError(exc.message) from None


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}" if at is not None else ""
