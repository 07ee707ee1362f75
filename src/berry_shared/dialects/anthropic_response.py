"""Anthropic Messages answers as OpenAI chat completions: pure functions, body in, body out.

Text blocks become ``content``, ``tool_use`` blocks ``tool_calls`` (the input object as a JSON
arguments string); thinking and server-tool blocks have no OpenAI counterpart and are left
out. ``usage`` follows OpenAI's meaning: ``prompt_tokens`` counts every input token, those
read from and written to Anthropic's prompt cache included (Anthropic's ``input_tokens`` counts
only the rest), and the cache reads are ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

from typing import Any

from ..usage import Usage, token_count
from .base import assistant_message, completion_body, openai_tool_call

# Anthropic's stop_reason -> OpenAI's finish_reason. pause_turn (a server tool paused a long
# turn) has no OpenAI counterpart: the answer so far is complete as far as a client can tell.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_counts(
    input_tokens: int, cache_read: int, cache_creation: int, output_tokens: int
) -> Usage:
    return Usage(input_tokens + cache_read + cache_creation, output_tokens, cache_read)


def usage_from_anthropic(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return usage_from_counts(
        token_count(usage.get("input_tokens")),
        token_count(usage.get("cache_read_input_tokens")),
        token_count(usage.get("cache_creation_input_tokens")),
        token_count(usage.get("output_tokens")),
    )


def tool_call(block: dict[str, Any]) -> dict[str, Any]:
    tool_input = block.get("input")
    arguments = tool_input if tool_input is not None else {}
    return openai_tool_call(block.get("id"), block.get("name"), arguments)


def openai_message(content: list[Any]) -> dict[str, Any]:
    """The assistant ``message`` of an OpenAI choice, from Anthropic content blocks."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif kind == "tool_use":
            calls.append(tool_call(block))
    return assistant_message(texts, calls)


def openai_completion(message: dict[str, Any], model: str) -> tuple[bytes, Usage | None]:
    """An Anthropic ``message`` as an OpenAI ``chat.completion`` body, and its usage."""
    content = message.get("content")
    choice = {
        "index": 0,
        "message": openai_message(content if isinstance(content, list) else []),
        "logprobs": None,
        "finish_reason": finish_reason(message.get("stop_reason")),
    }
    usage = usage_from_anthropic(message.get("usage"))
    answered_by = message.get("model")
    return completion_body(
        answered_by if isinstance(answered_by, str) else model, [choice], usage
    ), usage
