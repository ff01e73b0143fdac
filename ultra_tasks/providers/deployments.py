"""The deployments of this fleet: read from the deployments file (PROVIDERS_FILE), or made from the
environment variables when there is none, one per provider, exactly as before deployments files existed.

A file is validated whole at load: an unknown kind or key, a duplicate name, an ``env:`` reference to a
variable that is not set, a kind's missing base URL or options, or a ``fallbacks`` model no deployment
serves raises ``DeploymentsFileError`` naming the file, the entry and the field, so a bad deploy stops at
start-up. Keys are resolved once here and never logged, printed or stored (``Deployment.__repr__`` leaves
them out; ``secrets()`` feeds the log redaction).

The ``Catalog`` answers which deployments serve a model. With a file, every deployment whose globs match
serves it (the router spreads its traffic); from the environment, routes are checked in order (MODEL_MAP
first, then each kind's own models) and the first match decides, as it always did.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ultra_tasks.config import Settings
from ultra_tasks.errors import ConfigurationError, DeploymentsFileError, UnknownModelError
from ultra_tasks.providers.kinds import all_kinds, get_kind, kind_names
from ultra_tasks.providers.kinds.base import Deployment, Price

log = logging.getLogger(__name__)

#: the prefix of a key given as a reference to an environment variable
ENV_PREFIX = "env:"
#: model names remembered per catalog with the deployments that serve them (beyond it: recomputed)
SERVING_CACHE_SIZE = 4096
#: a deployment's name: it becomes part of breaker names, Redis keys and metric labels
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class _PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class DeploymentEntry(BaseModel):
    """One ``deployments:`` entry of the file, as written."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    kind: str
    models: list[str] = Field(min_length=1)
    base_url: str | None = None
    api_key: str | None = None
    weight: float = Field(1.0, gt=0)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    price: _PriceEntry | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class DeploymentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: list[DeploymentEntry] = Field(min_length=1)
    #: requested model (name or glob) -> models to fall back to, in order
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)


@dataclass
class Catalog:
    """Every deployment, and which serve a model; made once per process (``catalog()``)."""

    deployments: tuple[Deployment, ...]
    #: from the environment: ordered (glob, deployment name), first match wins; with a file: ()
    routes: tuple[tuple[str, str], ...] = ()
    #: from the file: (glob on the requested model, fallback models in order)
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    path: Path | None = None
    by_name: dict[str, Deployment] = field(default_factory=dict)
    _serving: dict[str, tuple[Deployment, ...]] = field(default_factory=dict, repr=False)
    #: per-model answers derived from the catalog (the default chain of a model), kept by their users
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    _candidates: dict[tuple[str, str], tuple[Deployment, ...]] = field(default_factory=dict, repr=False)

    #: deployments that share a model with another (the router keeps their in-flight counts, latencies)
    shared: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.by_name = {d.name: d for d in self.deployments}
        self.shared = frozenset(n for group in self.model_groups() if len(group) > 1 for n in group)

    @property
    def from_file(self) -> bool:
        return self.path is not None

    def known_patterns(self) -> list[str]:
        if self.routes:
            return [glob for glob, _ in self.routes]
        return [glob for d in self.deployments for glob in d.models]

    def serving(self, model: str) -> tuple[Deployment, ...]:
        """The deployments that serve ``model``, in file order; () when none does."""
        found = self._serving.get(model)
        if found is None:
            if self.routes:
                target = next((name for glob, name in self.routes if fnmatch.fnmatchcase(model, glob)), None)
                found = (self.by_name[target],) if target is not None else ()
            else:
                found = tuple(d for d in self.deployments if d.serves(model))
            if len(self._serving) >= SERVING_CACHE_SIZE:
                self._serving.clear()
            self._serving[model] = found
        return found

    def require(self, model: str) -> tuple[Deployment, ...]:
        """As ``serving``, but UnknownModelError (on the field ``model``) when nothing serves it."""
        found = self.serving(model)
        if not found:
            raise UnknownModelError(model, self.known_patterns())
        return found

    def candidates(self, selector: str, model: str) -> tuple[Deployment, ...]:
        """The deployments a chain entry ``selector:model`` may use: the deployment named ``selector``
        (a chain that names one means it), else those serving ``model`` whose kind is ``selector``, or
        all of them when it is ``*``."""
        key = (selector, model)
        found = self._candidates.get(key)
        if found is None:
            named = self.by_name.get(selector)
            if named is not None:
                found = (named,)
            else:
                found = tuple(d for d in self.serving(model) if selector in ("*", d.kind))
            if len(self._candidates) >= SERVING_CACHE_SIZE:
                self._candidates.clear()
            self._candidates[key] = found
        return found

    def is_selector(self, text: str) -> bool:
        return text == "*" or text in self.by_name or text in kind_names()

    def fallback_models(self, model: str) -> tuple[str, ...] | None:
        """The file's fallbacks for ``model`` (first matching glob), or None when it names none."""
        for glob, models in self.fallbacks:
            if fnmatch.fnmatchcase(model, glob):
                return models
        return None

    def model_groups(self) -> list[frozenset[str]]:
        """Sets of deployments that serve a common model (a glob of one matched by another's): the mode
        counts a model down only when all of its set are."""
        groups: list[frozenset[str]] = []
        for d in self.deployments:
            for glob in d.models:
                peers = frozenset(e.name for e in self.deployments if _overlaps(glob, e))
                if peers not in groups:
                    groups.append(peers)
        return groups

    def rate_limits(self, settings: Settings) -> dict[str, dict[str, float]]:
        """PROVIDER_RATE_LIMITS, with each deployment's own rpm/tpm over it."""
        limits = {k: dict(v) for k, v in settings.provider_rate_limits.items()}
        for d in self.deployments:
            if d.limits():
                limits[d.name] = d.limits()
        return limits

    def secrets(self) -> tuple[str, ...]:
        return tuple(d.api_key for d in self.deployments if d.api_key and not d.is_fake)


def _overlaps(glob: str, deployment: Deployment) -> bool:
    """Whether ``deployment`` serves some model ``glob`` matches (as far as globs can tell)."""
    return deployment.serves(glob) or any(fnmatch.fnmatchcase(p, glob) for p in deployment.models)


# --- from the environment -------------------------------------------------------------------------------
def environment_catalog(settings: Settings) -> Catalog:
    """One deployment per kind the variables describe (openai, anthropic, openai_compat)."""
    deployments = [
        spec.from_environment(settings) for spec in all_kinds() if spec.from_environment is not None
    ]
    made = [d for d in deployments if d is not None]
    names = {d.name for d in made}
    for glob, target in settings.model_map.items():
        if target not in names:
            raise ConfigurationError(
                f"MODEL_MAP routes {glob!r} to unknown provider {target!r} (expected one of "
                f"{', '.join(sorted(names))})"
            )
    routes = [*settings.model_map.items(), *((g, d.name) for d in made for g in d.models)]
    return Catalog(tuple(made), routes=tuple(routes))


# --- from the file --------------------------------------------------------------------------------------
def _entry_label(raw: Any, index: int) -> str:
    try:
        name = raw["deployments"][index]["name"]
    except (KeyError, IndexError, TypeError):
        name = None
    return f"deployment {name!r}" if isinstance(name, str) else f"deployments[{index}]"


def _schema_error(path: str, raw: Any, exc: ValidationError) -> DeploymentsFileError:
    error = exc.errors()[0]
    loc = list(error["loc"])
    if loc[:1] == ["deployments"] and len(loc) > 1 and isinstance(loc[1], int):
        entry, rest = _entry_label(raw, loc[1]), loc[2:]
    elif loc[:1] == ["fallbacks"]:
        entry, rest = "fallbacks", loc[1:]
    else:
        entry, rest = "file", loc
    where = ".".join(str(p) for p in rest) or "-"
    # the message only: pydantic's rendering would quote the input, and a value may be a key
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    return DeploymentsFileError(path, entry, where, message)


def _resolve_key(path: str, entry: str, value: str | None, environ: Mapping[str, str]) -> str | None:
    if value is None or not value.startswith(ENV_PREFIX):
        return value
    variable = value.removeprefix(ENV_PREFIX).strip()
    resolved = environ.get(variable)
    if not resolved:
        raise DeploymentsFileError(path, entry, "api_key", f"environment variable {variable} is not set")
    return resolved


def _deployment(
    path: str, entry: DeploymentEntry, settings: Settings, environ: Mapping[str, str]
) -> Deployment:
    label = f"deployment {entry.name!r}"
    if entry.kind not in kind_names():
        raise DeploymentsFileError(
            path, label, "kind", f"unknown kind {entry.kind!r} (known: {', '.join(kind_names())})"
        )
    spec = get_kind(entry.kind)
    api_key = _resolve_key(path, label, entry.api_key, environ)
    if spec.needs_api_key and not api_key:
        raise DeploymentsFileError(path, label, "api_key", f"a {spec.name} deployment needs one (env:VAR)")
    base_url = entry.base_url or (spec.default_base_url(settings) if spec.default_base_url else None)
    if spec.needs_base_url and not base_url:
        raise DeploymentsFileError(path, label, "base_url", f"a {spec.name} deployment needs one")
    if spec.options is not None:
        try:
            spec.options.model_validate(entry.options)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(["options", *(str(p) for p in error["loc"])])
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            raise DeploymentsFileError(path, label, where, message) from None
    elif entry.options:
        raise DeploymentsFileError(path, label, "options", f"the {spec.name} kind takes no options")
    price = entry.price
    return Deployment(
        name=entry.name,
        kind=entry.kind,
        models=tuple(entry.models),
        base_url=base_url,
        api_key=api_key,
        weight=entry.weight,
        rpm=entry.rpm,
        tpm=entry.tpm,
        max_concurrency=entry.max_concurrency,
        timeout_s=entry.timeout_s,
        price=Price(price.input_per_mtok, price.output_per_mtok) if price else None,
        options=dict(entry.options),
        is_fake=entry.kind == "fake",
        source="file",
    )


def load_file(path: Path, settings: Settings, environ: Mapping[str, str] | None = None) -> Catalog:
    """The catalog the deployments file at ``path`` describes; DeploymentsFileError when it is bad."""
    environ = os.environ if environ is None else environ
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DeploymentsFileError(where, "file", "-", f"cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise DeploymentsFileError(where, "file", "-", f"is not valid YAML ({exc})") from None
    try:
        parsed = DeploymentsFile.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error(where, raw, exc) from None
    seen: set[str] = set()
    deployments = []
    for entry in parsed.deployments:
        if entry.name in seen:
            raise DeploymentsFileError(where, f"deployment {entry.name!r}", "name", "duplicate name")
        seen.add(entry.name)
        deployments.append(_deployment(where, entry, settings, environ))
    for glob, models in parsed.fallbacks.items():
        for i, model in enumerate([glob, *models]):
            if not any(_overlaps(model, d) for d in deployments):
                field_name = "key" if i == 0 else f"{glob}[{i - 1}]"
                raise DeploymentsFileError(where, "fallbacks", field_name, f"no deployment serves {model!r}")
    fallbacks = tuple((glob, tuple(models)) for glob, models in parsed.fallbacks.items())
    return Catalog(tuple(deployments), fallbacks=fallbacks, path=path)


# --- the process's catalog ------------------------------------------------------------------------------
_cache: dict[tuple[Any, ...], Catalog] = {}
#: the catalog of a settings object (held, so its id stays its own)
_by_settings: dict[int, tuple[Settings, Catalog]] = {}
_lock = threading.Lock()


def _fingerprint(settings: Settings) -> tuple[Any, ...]:
    """What a catalog depends on, so settings changed by a test (or `ultra up`) make a new one."""
    return (
        settings.effective_providers_file,
        settings.use_fake_provider,
        settings.fake_provider_url,
        settings.openai_api_key,
        settings.openai_base_url,
        settings.anthropic_api_key,
        settings.anthropic_base_url,
        settings.openai_compat_api_key,
        settings.openai_compat_base_url,
        tuple(settings.model_map.items()),
    )


def catalog(settings: Settings | None = None) -> Catalog:
    """The deployments of this process's settings (the file's, or the environment's), loaded once."""
    from ultra_tasks.config import get_settings

    settings = settings or get_settings()
    # the job path asks once per job: the same settings object answers from a dict, with no stat()
    same = _by_settings.get(id(settings))
    if same is not None and same[0] is settings:
        return same[1]
    key = _fingerprint(settings)
    found = _cache.get(key)
    if found is None:
        with _lock:
            found = _cache.get(key)
            if found is None:
                path = settings.effective_providers_file
                found = load_file(path, settings) if path is not None else environment_catalog(settings)
                if path is not None and settings.model_map:
                    log.warning("MODEL_MAP is ignored: the deployments file %s routes every model", path)
                if len(_cache) > 16:
                    _cache.clear()
                _cache[key] = found
    if len(_by_settings) > 16:
        _by_settings.clear()
    _by_settings[id(settings)] = (settings, found)
    return found


def forget_catalogs() -> None:
    """Drop loaded catalogs (tests that rewrite a file under the same settings)."""
    with _lock:
        _cache.clear()
        _by_settings.clear()
