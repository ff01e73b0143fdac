"""Durations as operators write them: ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (a bare number is seconds).

One parser for settings (``JOB_RETENTION``) and the command line (``ultra jobs purge --older-than``), so
both accept and refuse the same spellings.
"""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
#: spellings of "no limit" (keep forever)
FOREVER = ("0", "none", "never", "forever", "off")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a number of seconds).
    ``ValueError`` saying what is accepted for anything else, including negative values."""
    match = _DURATION.match(str(text))
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: expected a number with a unit, e.g. 30d, 12h, 90m, 45s or 2w"
        )
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def parse_retention(value: object) -> float | None:
    """A retention period in seconds, or None for "keep forever" (``0``, ``none``, ``never``, ``forever``,
    ``off``, or nothing)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if text in FOREVER or text == "":
            return None
        seconds = parse_duration(text)
    if seconds < 0:
        raise ValueError("a retention period cannot be negative")
    return seconds or None


def format_duration(seconds: float) -> str:
    """The largest whole unit that states ``seconds`` exactly (``2592000`` -> ``30d``)."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
