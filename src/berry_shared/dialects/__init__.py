"""Provider dialects: one module per backend type, all behind ``Dialect`` (see base.py)."""

from __future__ import annotations

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
from .openai import OpenAIDialect

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


def _factories() -> dict[str, DialectFactory]:
    return {"openai": OpenAIDialect}


def build_dialects(providers: Mapping[str, Provider]) -> dict[str, Dialect]:
    """One dialect per provider, by its ``backend_type``."""
    factories = _factories()
    return {pid: factories[p.backend_type](pid, p) for pid, p in providers.items()}
