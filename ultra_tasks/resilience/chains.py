"""Fallback chains: for a requested model, the ordered (provider, model) entries a job may be served by.

The default chain is the requested model, then the equivalent tier at the other major provider
(``map_model``; ``map_to_anthropic_model`` is its Anthropic-only form). ``FALLBACK_CHAINS`` overrides it per
model, and a job may bring its own chain or none at all. Entries whose context window cannot hold the
input are skipped, so a too-large input falls back to a larger-context model.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ultra_tasks.config import Settings
from ultra_tasks.errors import ConfigurationError, JobValidationError
from ultra_tasks.providers.base import LLMRequest
from ultra_tasks.providers.registry import ANTHROPIC, OPENAI, PROVIDER_NAMES, provider_for_model

#: equivalent tiers across providers: (glob on the requested model, {provider: model})
TIERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("gpt-4o-mini*", {ANTHROPIC: "claude-3-5-haiku-latest"}),
    ("gpt-4.1-mini*", {ANTHROPIC: "claude-3-5-haiku-latest"}),
    ("gpt-4.1-nano*", {ANTHROPIC: "claude-3-5-haiku-latest"}),
    ("gpt-3.5*", {ANTHROPIC: "claude-3-5-haiku-latest"}),
    ("o*-mini*", {ANTHROPIC: "claude-3-5-haiku-latest"}),
    ("gpt-4*", {ANTHROPIC: "claude-3-5-sonnet-latest"}),
    ("o1*", {ANTHROPIC: "claude-3-opus-latest"}),
    ("o3*", {ANTHROPIC: "claude-3-opus-latest"}),
    ("claude-*haiku*", {OPENAI: "gpt-4o-mini"}),
    ("claude-*opus*", {OPENAI: "o3"}),
    ("claude-*", {OPENAI: "gpt-4o"}),
)

#: context windows in tokens (glob, tokens), first match wins; unknown models are assumed to be large
CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1*", 1_000_000),
    ("gpt-3.5*", 16_385),
    ("gpt-4o*", 128_000),
    ("o1*", 200_000),
    ("o3*", 200_000),
    ("o4*", 200_000),
    ("claude-*", 200_000),
)
UNKNOWN_WINDOW = 128_000
#: characters per token used to estimate an input's size before sending it
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ChainEntry:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def map_model(model: str, provider: str) -> str | None:
    """The equivalent of ``model`` at ``provider``, or None if there is none."""
    for pattern, targets in TIERS:
        if fnmatch.fnmatchcase(model, pattern) and provider in targets:
            return targets[provider]
    return None


def map_to_anthropic_model(model: str) -> str:
    """Public API: the Anthropic model of the same tier."""
    return map_model(model, ANTHROPIC) or "claude-3-5-sonnet-latest"


def context_window(model: str) -> int:
    for pattern, tokens in CONTEXT_WINDOWS:
        if fnmatch.fnmatchcase(model, pattern):
            return tokens
    return UNKNOWN_WINDOW


def estimated_tokens(request: LLMRequest) -> int:
    return sum(len(m.content) for m in request.messages) // CHARS_PER_TOKEN + request.max_tokens


def parse_entry(text: str, where: str) -> ChainEntry:
    provider, sep, model = text.partition(":")
    if not sep or provider not in PROVIDER_NAMES or not model:
        raise JobValidationError(
            where, f"expected 'provider:model' with a provider in {PROVIDER_NAMES}, got {text!r}"
        )
    return ChainEntry(provider, model)


def chain_for(
    request: LLMRequest, settings: Settings, *, override: list[str] | None = None, fallback: bool = True
) -> list[ChainEntry]:
    """The chain for this request: the job's own, FALLBACK_CHAINS's, or the default; first entry first."""
    primary = ChainEntry(provider_for_model(request.model, settings), request.model)
    if not fallback:
        return [primary]
    if override is not None:
        entries = [parse_entry(e, f"chain[{i}]") for i, e in enumerate(override)]
    elif request.model in settings.fallback_chains:
        try:
            entries = [parse_entry(e, "FALLBACK_CHAINS") for e in settings.fallback_chains[request.model]]
        except JobValidationError as exc:
            raise ConfigurationError(f"FALLBACK_CHAINS[{request.model!r}]: {exc.message}") from None
    else:
        entries = [primary]
        for provider in (OPENAI, ANTHROPIC):
            mapped = map_model(request.model, provider) if provider != primary.provider else None
            if mapped:
                entries.append(ChainEntry(provider, mapped))
    if primary not in entries:
        entries.insert(0, primary)
    # keep order, drop repeats
    seen: set[ChainEntry] = set()
    return [e for e in entries if not (e in seen or seen.add(e))]  # type: ignore[func-returns-value]
