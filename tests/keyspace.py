"""The key families of ultra_tasks/keys.py: the pattern of each key a function there names, and how long
its docstring says it lives (shared by tests/unit/test_keys.py and the Redis footprint tests)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ultra_tasks import keys

#: functions of keys.py that name no key of their own: prefixes, SCAN patterns, lists of other keys
NOT_KEYS = ("_prefix", "_pattern", "_keys")
_ARG = "\x00arg\x00"


@dataclass(frozen=True)
class Family:
    function: str
    pattern: re.Pattern[str]
    #: "channel", "owner" (no expiry, deleted or kept bounded by its owner) or "expires"; "" if unsaid
    lifetime: str
    #: characters of the key that are not an argument: the most specific family of a key has the most
    literal: int


def lifetime(doc: str) -> str:
    if doc.lstrip().startswith("Pub/sub channel"):
        return "channel"
    if "Owner:" in doc:
        return "owner"
    if re.search(r"with expiry|\bexpires?\b", doc, re.IGNORECASE):
        return "expires"
    return ""


def key_functions() -> list[tuple[str, Callable[..., Any]]]:
    return [
        (name, fn)
        for name, fn in inspect.getmembers(keys, inspect.isfunction)
        if fn.__module__ == keys.__name__ and not name.startswith("_") and not name.endswith(NOT_KEYS)
    ]


def families() -> list[Family]:
    """One family per key a keys.py function names (the breaker's four keys are four families)."""
    found = []
    for name, fn in key_functions():
        made = fn(*[_ARG] * len(inspect.signature(fn).parameters))
        for key in made if isinstance(made, tuple) else (made,):
            pattern = re.compile(re.escape(key).replace(re.escape(_ARG), ".+") + "$")
            literal = len(key.replace(_ARG, ""))
            found.append(Family(name, pattern, lifetime(inspect.getdoc(fn) or ""), literal))
    return found


def family_of(key: str, known: list[Family]) -> Family | None:
    """The most specific family ``key`` belongs to, or None if no keys.py function names it."""
    matching = [f for f in known if f.pattern.match(key)]
    return max(matching, key=lambda f: f.literal) if matching else None
