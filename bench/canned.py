"""The fixed answers nginx serves as the benchmark's fake upstreams, one per provider API.

Each is the smallest answer of the real shape: a two-word text reply with usage. The Anthropic
and Bedrock ones follow local/fakes/anthropic.py and local/fakes/bedrock.py (themselves proven
against the official SDKs), encoded with those fakes' own encoders, so Berry's dialects parse
exactly what they parse in the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "local"))

from fakes.anthropic import sse
from fakes.bedrock import event_frame

TEXT = ("Hello", " from nginx")

# -- OpenAI chat completions (the pass-through path) -------------------------------------------

OPENAI_COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(TEXT)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
)


def _openai_chunk(content: str, finish_reason: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


OPENAI_STREAM = _openai_chunk(TEXT[0], None) + _openai_chunk(TEXT[1], "stop") + b"data: [DONE]\n\n"

# -- Anthropic Messages (backend_type "claude") -------------------------------------------------

ANTHROPIC_MODEL = "claude-haiku-4-5-20251001"
_ANTHROPIC_USAGE: dict[str, Any] = {
    "input_tokens": 5,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 4,
    "service_tier": "standard",
}
_ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_bench0123456789abcdef0123",
    "type": "message",
    "role": "assistant",
    "model": ANTHROPIC_MODEL,
    "content": [{"type": "text", "text": "".join(TEXT)}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "stop_details": None,
    "usage": _ANTHROPIC_USAGE,
}
ANTHROPIC_MESSAGE = orjson.dumps(_ANTHROPIC_MESSAGE)


def _anthropic_event(kind: str, **fields: Any) -> bytes:
    return sse(kind, {"type": kind, **fields})


# The documented flow for one text block, as the fake's stream_events produces it (without
# its ping, which Berry skips anyway).
ANTHROPIC_STREAM = b"".join(
    [
        _anthropic_event(
            "message_start",
            message={
                **_ANTHROPIC_MESSAGE,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**_ANTHROPIC_USAGE, "output_tokens": 1},
            },
        ),
        _anthropic_event(
            "content_block_start", index=0, content_block={"type": "text", "text": ""}
        ),
        *(
            _anthropic_event(
                "content_block_delta", index=0, delta={"type": "text_delta", "text": t}
            )
            for t in TEXT
        ),
        _anthropic_event("content_block_stop", index=0),
        _anthropic_event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={
                "input_tokens": 5,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 4,
            },
        ),
        _anthropic_event("message_stop"),
    ]
)

# -- Amazon Bedrock Converse / ConverseStream (backend_type "bedrock") ---------------------------

# An id with a ':' as real Bedrock ids have: Berry sends it percent-encoded (%3A).
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
_BEDROCK_USAGE = {"inputTokens": 5, "outputTokens": 4, "totalTokens": 9}
BEDROCK_CONVERSE = orjson.dumps(
    {
        "output": {"message": {"role": "assistant", "content": [{"text": "".join(TEXT)}]}},
        "stopReason": "end_turn",
        "usage": _BEDROCK_USAGE,
        "metrics": {"latencyMs": 120},
    }
)
# application/vnd.amazon.eventstream frames, with the "p" padding member the real service adds.
BEDROCK_STREAM = b"".join(
    [
        event_frame("messageStart", {"role": "assistant"}, pad=0),
        *(
            event_frame("contentBlockDelta", {"delta": {"text": t}, "contentBlockIndex": 0}, pad=i)
            for i, t in enumerate(TEXT, start=1)
        ),
        event_frame("contentBlockStop", {"contentBlockIndex": 0}, pad=3),
        event_frame("messageStop", {"stopReason": "end_turn"}, pad=4),
        event_frame("metadata", {"usage": _BEDROCK_USAGE, "metrics": {"latencyMs": 120}}, pad=5),
    ]
)


def nginx_string(body: bytes) -> str:
    """``body`` as the text of a single-quoted nginx string (``return 200 '...'``): newlines
    as ``\\n``, which nginx turns back into newlines; anything nginx would read as a variable
    or a quote end is refused rather than escaped."""
    text = body.decode()
    if any(c in text for c in "'$\\\r"):
        raise ValueError("a canned body must not contain ', $, \\ or CR")
    return text.replace("\n", "\\n")
