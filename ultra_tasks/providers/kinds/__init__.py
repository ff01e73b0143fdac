"""The registry of provider kinds: each module of this package declares one ``SPEC``; a plugin adds its
own with ``register_kind`` (or the ``ultra_tasks.provider_kinds`` entry point group, whose objects are
modules or specs). Adding a kind is one file: nothing else names the kinds.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from importlib.metadata import entry_points
from types import ModuleType

from ultra_tasks.errors import ConfigurationError
from ultra_tasks.providers.kinds.base import Deployment, KindSpec, Price

#: entry point group through which an installed package adds kinds
ENTRY_POINT_GROUP = "ultra_tasks.provider_kinds"
#: the built-in kinds in the order the environment defines their deployments (routes, default chains)
BUILTIN_ORDER = ("openai", "anthropic", "openai_compatible", "azure_openai", "fake")

_kinds: dict[str, KindSpec] = {}
_loaded = False
_lock = threading.RLock()


def register_kind(spec: KindSpec) -> KindSpec:
    """Add (or replace) a kind; returns it, so a module may write ``SPEC = register_kind(KindSpec(...))``."""
    with _lock:
        _kinds[spec.name] = spec
    return spec


def unregister_kind(name: str) -> None:
    """Forget a kind (tests that register one of their own)."""
    with _lock:
        _kinds.pop(name, None)


def _from_module(module: ModuleType) -> None:
    spec = getattr(module, "SPEC", None)
    if isinstance(spec, KindSpec) and spec.name not in _kinds:
        _kinds[spec.name] = spec


def _load() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        for name in BUILTIN_ORDER:
            _from_module(importlib.import_module(f"{__name__}.{name}"))
        for info in pkgutil.iter_modules(__path__):
            if info.name not in BUILTIN_ORDER and info.name != "base":
                _from_module(importlib.import_module(f"{__name__}.{info.name}"))
        for point in entry_points(group=ENTRY_POINT_GROUP):
            loaded = point.load()
            if isinstance(loaded, KindSpec):
                _kinds.setdefault(loaded.name, loaded)
            elif isinstance(loaded, ModuleType):
                _from_module(loaded)
        _loaded = True


def all_kinds() -> tuple[KindSpec, ...]:
    """Every registered kind, built-in ones first."""
    _load()
    return tuple(_kinds.values())


def kind_names() -> tuple[str, ...]:
    return tuple(k.name for k in all_kinds())


def get_kind(name: str) -> KindSpec:
    _load()
    spec = _kinds.get(name)
    if spec is None:
        raise ConfigurationError(f"unknown provider kind {name!r} (known: {', '.join(kind_names())})")
    return spec


def sdk_modules() -> tuple[str, ...]:
    """Every kind's SDK modules, once each (a worker imports them before it takes a job)."""
    seen: dict[str, None] = {}
    for spec in all_kinds():
        seen.update(dict.fromkeys(spec.sdk_modules))
    return tuple(seen)


__all__ = [
    "Deployment",
    "KindSpec",
    "Price",
    "all_kinds",
    "get_kind",
    "kind_names",
    "register_kind",
    "sdk_modules",
    "unregister_kind",
]
