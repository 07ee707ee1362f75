"""Token usage of one answer, what it cost, and how it is estimated when a provider is silent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Without a provider count, ~4 characters of English text make one token (OpenAI's rule of
# thumb); estimates are marked as such in the usage records.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer, as the provider counted them (or as Berry estimated them)."""

    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens served from the provider's cache (part of prompt_tokens).
    cached_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai(self) -> dict[str, Any]:
        """OpenAI's ``usage`` object."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_openai(usage: object) -> Usage | None:
    """OpenAI's ``usage`` object (from a completion or the last stream chunk)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), cached)


def estimate_tokens(characters: int) -> int:
    return -(-characters // CHARS_PER_TOKEN)  # rounded up: any text is at least one token


def _text(content: object) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The prompt's tokens from its text (images and tool schemas are not counted)."""
    return estimate_tokens(sum(len(t) for m in messages for t in _text(m.get("content"))))
