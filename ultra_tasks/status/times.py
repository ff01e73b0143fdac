"""Times as people read them on the status page: relative ("12 s ago", "in 5 min") with the exact UTC time
on hover, in a ``<time>`` element that keeps the machine-readable value."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape


def parse_iso(value: object) -> datetime | None:
    """An ISO 8601 time (naive ones are UTC), or None for anything else."""
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str) and value:
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def relative(at: datetime, now: datetime) -> str:
    """``at`` relative to ``now``: "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago", "in 4 min"."""
    seconds = (now - at).total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "just now"
    if seconds < 90:
        amount = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        amount = f"{seconds / 60:.0f} min"
    elif seconds < 36 * 3600:
        amount = f"{seconds / 3600:.0f} h"
    else:
        amount = f"{seconds / 86400:.0f} d"
    return f"in {amount}" if ahead else f"{amount} ago"


def exact(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def time_html(value: object, now: datetime, *, empty: str = "") -> str:
    """``<time datetime=ISO title=exact>relative</time>``; a value that is not a time is shown escaped."""
    at = parse_iso(value)
    if at is None:
        return escape(empty if value is None or value == "" else str(value), quote=True)
    return (
        f'<time datetime="{escape(at.isoformat(), quote=True)}" title="{escape(exact(at), quote=True)}">'
        f"{escape(relative(at, now))}</time>"
    )
