"""Gemini answers as OpenAI chat completions: whole (``generateContent``) and streamed
(``streamGenerateContent?alt=sse``, one whole ``GenerateContentResponse`` per SSE event).

* Text parts become ``content``; thought parts (only sent when asked for) are left out.
* ``functionCall`` parts become ``tool_calls``: Gemini's own ``id`` when it gives one, else an
  id Berry makes (``call_<24 hex>``). Arguments arrive whole, so a stream carries each call in
  one chunk (id, name and all arguments), which the openai SDK assembles like any other.
* ``finishReason``: STOP is ``stop`` (``tool_calls`` when calls came), MAX_TOKENS ``length``,
  the safety family (SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, IMAGE_*) is
  ``content_filter``, anything else ``stop``.
* A prompt Gemini blocks (``promptFeedback.blockReason``, no candidates) is answered the way
  OpenAI reports filtered output: 200, every choice with empty content and finish_reason
  ``content_filter``.
* ``usageMetadata``: prompt = promptTokenCount + toolUsePromptTokenCount, completion =
  candidatesTokenCount + thoughtsTokenCount (thinking is billed as output),
  cachedContentTokenCount = prompt_tokens_details.cached_tokens.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from ..backend_state import ErrorClass
from ..usage import Usage, estimate_tokens, token_count
from .base import (
    ROLE_DELTA,
    SSE_DONE_EVENT,
    AttemptFailed,
    ChunkWriter,
    StreamBroken,
    StreamDecoder,
    assistant_message,
    openai_tool_call,
)
from .sse import SSEParser

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}


def finish_reason(reason: Any, called: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if called and mapped == "stop" else mapped


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def tool_call(call: dict[str, Any]) -> dict[str, Any]:
    call_id = call.get("id")
    args = call.get("args")
    return openai_tool_call(
        call_id if isinstance(call_id, str) and call_id else new_call_id(),
        call.get("name") or "",
        args if isinstance(args, dict) else {},
    )


def usage_from_gemini(metadata: Any) -> Usage | None:
    if not isinstance(metadata, dict):
        return None
    get = metadata.get
    return Usage(
        token_count(get("promptTokenCount")) + token_count(get("toolUsePromptTokenCount")),
        token_count(get("candidatesTokenCount")) + token_count(get("thoughtsTokenCount")),
        token_count(get("cachedContentTokenCount")),
    )


def _parts(candidate: dict[str, Any]) -> list[Any]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _index(candidate: dict[str, Any], position: int) -> int:
    # proto3 JSON leaves out zero values, so candidate 0 may come without "index".
    index = candidate.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def blocked(response: dict[str, Any]) -> bool:
    feedback = response.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def filtered_choice(index: int) -> dict[str, Any]:
    message = {"role": "assistant", "content": "", "refusal": None}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": "content_filter"}


def choices(response: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The OpenAI ``choices`` of a whole answer; ``count`` is how many were asked for."""
    candidates = response.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        if blocked(response):
            return [filtered_choice(i) for i in range(count)]
        raise AttemptFailed(ErrorClass.SERVER, "answered without candidates")
    out = []
    for position, candidate in enumerate(candidates):
        if not isinstance(candidate, dict):
            raise AttemptFailed(ErrorClass.SERVER, "answered with a malformed candidate")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in _parts(candidate):
            if not isinstance(part, dict) or part.get("thought"):
                continue
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
            call = part.get("functionCall")
            if isinstance(call, dict):
                calls.append(tool_call(call))
        message = assistant_message(texts, calls)
        out.append(
            {
                "index": _index(candidate, position),
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls)),
            }
        )
    return out


class GeminiStream(StreamDecoder):
    """Gemini's SSE events in, OpenAI chunks out; ends with the usage chunk (when the client
    asked for it) and ``[DONE]`` once every started choice has its finish reason."""

    __slots__ = (
        "_calls",
        "_chars",
        "_count",
        "_done",
        "_finished",
        "_include_usage",
        "_metadata",
        "_model",
        "_parser",
        "_started",
        "_writer",
        "usage",
    )

    def __init__(self, model: str, include_usage: bool, count: int) -> None:
        self.usage: Usage | None = None
        self._model = model
        self._include_usage = include_usage
        self._count = count  # choices asked for: a blocked prompt answers each of them
        self._parser = SSEParser()
        self._writer: ChunkWriter | None = None
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._calls: dict[int, int] = {}  # tool calls sent so far, per choice
        self._chars = 0
        self._metadata: Any = None
        self._done = False

    def feed(self, data: bytes) -> bytes:
        events = self._parser.feed(data)
        if not events:
            return b""
        if len(events) == 1:
            return self._event(events[0].data)
        return b"".join(self._event(event.data) for event in events)

    def finish(self) -> bytes:
        rest = self.feed(b"\n\n") if self._parser.pending else b""
        if not self._done and not (self._finished and self._finished >= self._started):
            raise StreamBroken(ErrorClass.SERVER, "the stream ended before its finish reason")
        if self.usage is None:
            self.usage = usage_from_gemini(self._metadata)
        if self._include_usage:
            # Asked for, the usage chunk always comes, as from OpenAI; an estimate if need be.
            usage = self.usage or Usage(0, self.completion_tokens_estimate, estimated=True)
            rest += self._chunks().usage_chunk(usage)
        return rest + SSE_DONE_EVENT

    @property
    def completion_tokens_estimate(self) -> int:
        return estimate_tokens(self._chars)

    def _chunks(self, response: dict[str, Any] | None = None) -> ChunkWriter:
        if self._writer is None:
            version = response.get("modelVersion") if response else None
            self._writer = ChunkWriter(version if isinstance(version, str) else self._model)
        return self._writer

    def _event(self, data: bytes) -> bytes:
        try:
            response = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StreamBroken(ErrorClass.SERVER, "the stream sent a malformed event") from None
        if not isinstance(response, dict):
            raise StreamBroken(ErrorClass.SERVER, "the stream sent a malformed event")
        if "error" in response:
            raise StreamBroken(
                _stream_error_class(response["error"]), "the stream reported an error"
            )
        writer = self._chunks(response)
        metadata = response.get("usageMetadata")
        if metadata is not None:
            self._metadata = metadata
        candidates = response.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            if not blocked(response):
                return b""  # a usage-only event
            self._done = True
            self.usage = usage_from_gemini(self._metadata)
            return b"".join(
                writer.chunk(ROLE_DELTA, None, i) + writer.chunk({}, "content_filter", i)
                for i in range(self._count)
            )
        out: list[bytes] = []
        for position, candidate in enumerate(candidates):
            if isinstance(candidate, dict):
                self._candidate(candidate, _index(candidate, position), writer, out)
        return b"".join(out)

    def _candidate(
        self, candidate: dict[str, Any], index: int, writer: ChunkWriter, out: list[bytes]
    ) -> None:
        if index not in self._started:
            self._started.add(index)
            out.append(writer.chunk(ROLE_DELTA, None, index))
        for part in _parts(candidate):
            if not isinstance(part, dict) or part.get("thought"):
                continue
            text = part.get("text")
            if isinstance(text, str) and text:
                self._chars += len(text)
                out.append(writer.chunk({"content": text}, None, index))
            call = part.get("functionCall")
            if isinstance(call, dict):
                number = self._calls.get(index, 0)
                self._calls[index] = number + 1
                delta = {"index": number, **tool_call(call)}
                self._chars += len(delta["function"]["arguments"])
                out.append(writer.chunk({"tool_calls": [delta]}, None, index))
        reason = candidate.get("finishReason")
        if reason and index not in self._finished:
            self._finished.add(index)
            out.append(writer.chunk({}, finish_reason(reason, index in self._calls), index))
            if self._finished >= self._started:
                self.usage = usage_from_gemini(self._metadata)


def _stream_error_class(error: Any) -> ErrorClass:
    code = error.get("code") if isinstance(error, dict) else None
    if code == 429:
        return ErrorClass.RATE_LIMIT
    if code in (401, 403):
        return ErrorClass.AUTH
    return ErrorClass.SERVER
