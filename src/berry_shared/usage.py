"""Token usage of one answer, what it cost, and how it is estimated when a provider is silent."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Price

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


def token_count(value: object) -> int:
    """A provider's token count as reported, or 0 for anything that is not a positive int."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_openai(usage: object) -> Usage | None:
    """OpenAI's ``usage`` object (from a completion or the last stream chunk)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(
        token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens")), cached
    )


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


# Costs are counted in integer nano-dollars: exact sums (a token can cost $0.00000015) with
# room for 9 billion dollars in 64 bits.
NANO_PER_USD = 1_000_000_000
# Per-million prices to nano-dollars per token.
_NANO_PER_TOKEN_PER_USD_PER_MILLION = NANO_PER_USD // 1_000_000


def cost_nano(usage: Usage, price: Price | None) -> int:
    """What ``usage`` cost at ``price`` (0 without a price), in nano-dollars."""
    if price is None:
        return 0
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = price.input_per_million
    if price.cached_input_per_million is not None:
        cached_price = price.cached_input_per_million
    dollars_per_million_tokens = (
        (usage.prompt_tokens - cached) * price.input_per_million
        + cached * cached_price
        + usage.completion_tokens * price.output_per_million
    )
    return round(dollars_per_million_tokens * _NANO_PER_TOKEN_PER_USD_PER_MILLION)


@dataclass(slots=True)
class UsageCounts:
    """What a user spent on a model (in a day, or any sum of days)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nano: int = 0

    @classmethod
    def of(cls, usage: Usage, cost: int) -> UsageCounts:
        return cls(1, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, cost)

    def add(self, other: UsageCounts) -> None:
        for field in fields(self):
            name = field.name
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def report(self) -> dict[str, Any]:
        """``/admin/usage``'s fields."""
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": round(self.cost_nano / NANO_PER_USD, 9),
        }


_days: dict[int, str] = {}


def utc_day(now: float) -> str:
    """The UTC day of a wall-clock time, as usage is kept: ``2026-11-30``."""
    index = int(now // 86400)
    day = _days.get(index)
    if day is None:
        if len(_days) > 1000:
            _days.clear()
        day = _days[index] = time.strftime("%Y-%m-%d", time.gmtime(now))
    return day


def utc_month(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


def days_ending(now: float, count: int) -> list[str]:
    """The last ``count`` UTC days up to today, oldest first."""
    today = datetime.fromtimestamp(now, UTC).date()
    return [(today - timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]


def seconds_to_next_month(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp() - now
