"""LLM providers behind one interface: OpenAI, Anthropic, OpenAI-compatible servers, and a local fake."""

from ultra_tasks.providers.base import ChatMessage, LLMRequest, LLMResponse, Provider, Usage
from ultra_tasks.providers.registry import ProviderRegistry, default_registry, provider_for_model

__all__ = [
    "ChatMessage",
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "ProviderRegistry",
    "Usage",
    "default_registry",
    "provider_for_model",
]
