"""LLM providers behind one interface: deployments of kinds (OpenAI, Azure OpenAI, Anthropic,
OpenAI-compatible servers, a local fake, or a plugin's), read from the deployments file or the environment."""

from ultra_tasks.providers.base import ChatMessage, LLMRequest, LLMResponse, Provider, Usage
from ultra_tasks.providers.kinds import register_kind
from ultra_tasks.providers.kinds.base import Deployment, KindSpec
from ultra_tasks.providers.registry import ProviderRegistry, default_registry, provider_for_model

__all__ = [
    "ChatMessage",
    "Deployment",
    "KindSpec",
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "ProviderRegistry",
    "Usage",
    "default_registry",
    "provider_for_model",
    "register_kind",
]
