"""Fallback chains: for a requested model, the ordered entries (deployments, model) a job may be served by.

An entry is ``selector:model``: the selector names a deployment, a kind (its deployments serving the
model) or ``*`` (every deployment serving it); the router chooses among an entry's deployments, and the
chain moves to the next entry (another model, or another provider's) only when none of them answered.

The default chain is the requested model, then the equivalent tier at each other kind that declares tiers
(``map_model``; ``map_to_anthropic_model`` is its Anthropic-only form). The deployments file's
``fallbacks`` (or ``FALLBACK_CHAINS`` without a file) override it per model, and a job may bring its own
chain or none at all. Entries whose context window cannot hold the input are skipped, so a too-large input
falls back to a larger-context model.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass

from ultra_tasks.config import Settings
from ultra_tasks.errors import ConfigurationError, JobValidationError
from ultra_tasks.providers.base import LLMRequest
from ultra_tasks.providers.deployments import SERVING_CACHE_SIZE, Catalog, catalog
from ultra_tasks.providers.kinds import all_kinds, get_kind

#: context window of a model no kind declares (tokens)
UNKNOWN_WINDOW = 128_000
#: characters per token used to estimate an input's size before sending it
CHARS_PER_TOKEN = 4
#: a selector that takes every deployment serving the entry's model
ANY = "*"


@dataclass(frozen=True)
class ChainEntry:
    #: a deployment's name, a kind, or ``*``
    provider: str
    model: str

    def __str__(self) -> str:
        return self.model if self.provider == ANY else f"{self.provider}:{self.model}"


def map_model(model: str, provider: str) -> str | None:
    """The equivalent of ``model`` at kind ``provider``, or None if there is none."""
    try:
        return get_kind(provider).equivalent(model)
    except ConfigurationError:
        return None


def map_to_anthropic_model(model: str) -> str:
    """Public API: the Anthropic model of the same tier."""
    return map_model(model, "anthropic") or "claude-3-5-sonnet-latest"


@functools.lru_cache(maxsize=4096)
def context_window(model: str) -> int:
    for spec in all_kinds():
        for pattern, tokens in spec.context_windows:
            if fnmatch.fnmatchcase(model, pattern):
                return tokens
    return UNKNOWN_WINDOW


def estimated_tokens(request: LLMRequest) -> int:
    return sum(len(m.content) for m in request.messages) // CHARS_PER_TOKEN + request.max_tokens


def parse_entry(text: str, where: str, deployments: Catalog | None = None) -> ChainEntry:
    """``selector:model`` (a deployment, a kind or ``*``), or a model name alone (``*``); with a
    deployments file a model whose own name holds a colon (``llama3:8b``) is read whole."""
    deployments = deployments or catalog()
    selector, sep, model = text.partition(":")
    if sep and model and deployments.is_selector(selector):
        return ChainEntry(selector, model)
    if deployments.from_file and text and deployments.serving(text):
        return ChainEntry(ANY, text)
    names = sorted(deployments.by_name)
    raise JobValidationError(
        where,
        f"expected 'provider:model' with a provider among {names} (or a kind), "
        f"or a model some deployment serves, got {text!r}",
    )


def _primary(model: str, deployments: Catalog) -> ChainEntry:
    served = deployments.require(model)
    if deployments.from_file:
        return ChainEntry(ANY, model)
    return ChainEntry(served[0].name, model)


def _default_chain(model: str, primary: ChainEntry, deployments: Catalog) -> tuple[ChainEntry, ...]:
    """The model, then its equivalent tier at each other kind that declares tiers (made once per model)."""
    key = ("default-chain", model)
    found = deployments.memo.get(key)
    if found is None:
        entries = [primary]
        primary_kinds = {d.kind for d in deployments.serving(model)}
        for spec in all_kinds():
            mapped = spec.equivalent(model) if spec.name not in primary_kinds else None
            if not mapped:
                continue
            if deployments.from_file:
                if deployments.serving(mapped):
                    entries.append(ChainEntry(ANY, mapped))
            elif spec.name in deployments.by_name:
                entries.append(ChainEntry(spec.name, mapped))
        found = tuple(entries)
        if len(deployments.memo) >= SERVING_CACHE_SIZE:
            deployments.memo.clear()
        deployments.memo[key] = found
    return found


def chain_for(
    request: LLMRequest, settings: Settings, *, override: list[str] | None = None, fallback: bool = True
) -> list[ChainEntry]:
    """The chain for this request: the job's own, the file's or FALLBACK_CHAINS's, or the default."""
    deployments = catalog(settings)
    primary = _primary(request.model, deployments)
    if not fallback:
        return [primary]
    configured = deployments.fallback_models(request.model) if deployments.from_file else None
    if override is not None:
        entries = [parse_entry(e, f"chain[{i}]", deployments) for i, e in enumerate(override)]
    elif configured is not None:
        entries = [primary, *(ChainEntry(ANY, m) for m in configured)]
    elif request.model in settings.fallback_chains:
        try:
            entries = [
                parse_entry(e, "FALLBACK_CHAINS", deployments)
                for e in settings.fallback_chains[request.model]
            ]
        except JobValidationError as exc:
            raise ConfigurationError(f"FALLBACK_CHAINS[{request.model!r}]: {exc.message}") from None
    else:
        entries = list(_default_chain(request.model, primary, deployments))
    if primary not in entries:
        entries.insert(0, primary)
    # keep order, drop repeats
    seen: set[ChainEntry] = set()
    return [e for e in entries if not (e in seen or seen.add(e))]  # type: ignore[func-returns-value]
