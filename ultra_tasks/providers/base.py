"""The provider interface: one normalized request in, one normalized response out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What a job asks a model for, independent of the provider that will answer."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float | None = None
    #: extra sampling parameters the providers share (top_p, stop, seed...)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [asdict(m) for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMRequest:
        return cls(
            model=data["model"],
            messages=tuple(ChatMessage(m["role"], m["content"]) for m in data["messages"]),
            max_tokens=int(data["max_tokens"]),
            temperature=data.get("temperature"),
            params=dict(data.get("params") or {}),
        )

    def with_model(self, model: str) -> LLMRequest:
        return LLMRequest(model, self.messages, self.max_tokens, self.temperature, self.params)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class LLMResponse:
    text: str
    model: str
    provider: str
    usage: Usage
    latency_ms: float
    finish_reason: str | None


class Provider(ABC):
    """A source of completions. Implementations raise only ``ultra_tasks.errors.ProviderError``s."""

    #: the name used in model routes, breakers and metrics
    name: str

    @abstractmethod
    def complete(self, request: LLMRequest, *, timeout: float) -> LLMResponse:
        """Answer ``request`` within ``timeout`` seconds."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
