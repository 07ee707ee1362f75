"""Provider dialects: one module per backend type, all behind ``Dialect`` (see base.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from ..config import Provider
from .base import (
    AttemptFailed,
    ClientMistake,
    Completion,
    Dialect,
    StreamBroken,
    StreamDecoder,
    Unsupported,
)

__all__ = [
    "AttemptFailed",
    "ClientMistake",
    "Completion",
    "Dialect",
    "StreamBroken",
    "StreamDecoder",
    "Unsupported",
    "build_dialects",
]

DialectFactory = Callable[[str, Provider], Dialect]


# backend_type -> module and class. Imported only when a provider uses it, so a deployment
# without Bedrock never loads botocore's signer, and cold starts stay short.
DIALECTS = {
    "openai": ("openai", "OpenAIDialect"),
    "claude": ("anthropic", "AnthropicDialect"),
    "gemini": ("gemini", "GeminiDialect"),
    "bedrock": ("bedrock", "BedrockDialect"),
}


def dialect_class(backend_type: str) -> DialectFactory:
    module, name = DIALECTS[backend_type]
    factory: DialectFactory = getattr(importlib.import_module(f".{module}", __name__), name)
    return factory


def build_dialects(providers: Mapping[str, Provider]) -> dict[str, Dialect]:
    """One dialect per provider, by its ``backend_type``."""
    return {pid: dialect_class(p.backend_type)(pid, p) for pid, p in providers.items()}
