"""Converse answers as OpenAI chat completions, and ConverseStream events as OpenAI chunks.

A whole answer: ``output.message.content`` becomes ``content`` (the text blocks, joined) and
``tool_calls`` (the toolUse blocks, input as a JSON string); ``stopReason`` becomes
``finish_reason``; ``usage`` is read from inputTokens, outputTokens and the cache counts.

A stream: messageStart, contentBlockStart (a tool call's id and name), contentBlockDelta
(text, or a piece of a tool call's input), contentBlockStop, messageStop (the stop reason) and
metadata (usage) become chunks in OpenAI's order: the role, content and tool-call deltas, the
finish_reason chunk, the usage chunk when the client asked for it, then ``[DONE]``. The role
chunk waits for the first content, so an exception event before any content still fails over.
Reasoning text is not part of OpenAI's chat completions and is not relayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..backend_state import ErrorClass
from ..chat_request import ChatRequest
from ..usage import Usage, estimate_prompt_tokens, estimate_tokens, token_count
from .base import (
    ROLE_DELTA,
    SSE_DONE_EVENT,
    AttemptFailed,
    ChunkWriter,
    ClientMistake,
    Completion,
    StreamBroken,
    StreamDecoder,
    assistant_message,
    completion_body,
    openai_tool_call,
)
from .bedrock_events import FrameDecoder, FrameError

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# ConverseStream's exception events: which fail over (before the first bytes) or break the
# stream, and which one is the client's own mistake.
STREAM_EXCEPTIONS = {
    "throttlingException": ErrorClass.RATE_LIMIT,
    "serviceUnavailableException": ErrorClass.SERVER,
    "internalServerException": ErrorClass.SERVER,
    "modelStreamErrorException": ErrorClass.SERVER,
}
CLIENT_STREAM_EXCEPTION = "validationException"
DETAIL_LIMIT = 200

# An error body for the client, from a status and the provider's raw error body.
ClientError = Callable[[int, bytes], bytes]
Scrub = Callable[[bytes], bytes]


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def converse_usage(usage: Any) -> Usage | None:
    """Converse's TokenUsage: inputTokens counts only the uncached part of the prompt, so the
    cache reads and writes are added back to make OpenAI's prompt_tokens."""
    if not isinstance(usage, dict):
        return None
    read = token_count(usage.get("cacheReadInputTokens"))
    written = token_count(usage.get("cacheWriteInputTokens"))
    prompt = token_count(usage.get("inputTokens")) + read + written
    return Usage(prompt, token_count(usage.get("outputTokens")), read)


def openai_message(content: Any) -> dict[str, Any]:
    """Converse's output content blocks as OpenAI's assistant message."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            tool = block["toolUse"]
            tool_calls.append(
                openai_tool_call(tool.get("toolUseId"), tool.get("name"), tool.get("input") or {})
            )
    return assistant_message(texts, tool_calls)


def completion(body: bytes, chat: ChatRequest) -> Completion:
    """A Converse answer as an OpenAI ``chat.completion``."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    output = answer.get("output") if isinstance(answer, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    if not isinstance(message, dict) or not isinstance(answer, dict):
        raise AttemptFailed(ErrorClass.SERVER, "answered with a body that is not a Converse answer")
    usage = converse_usage(answer.get("usage"))
    choice = {
        "index": 0,
        "message": openai_message(message.get("content")),
        "logprobs": None,
        "finish_reason": finish_reason(answer.get("stopReason")),
    }
    return Completion(completion_body(chat.model, [choice], usage), usage)


def exception_message(payload: bytes) -> str:
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(parsed, dict):
        message = parsed.get("message") or parsed.get("Message")
        if isinstance(message, str):
            return message
    return ""


class ConverseStream(StreamDecoder):
    """One ConverseStream answer as OpenAI chunks."""

    __slots__ = (
        "_chars",
        "_chat",
        "_client_error",
        "_failure",
        "_frames",
        "_role_pending",
        "_scrub",
        "_sent",
        "_stopped",
        "_tools",
        "_usage_sent",
        "_writer",
        "usage",
    )

    def __init__(self, chat: ChatRequest, client_error: ClientError, scrub: Scrub) -> None:
        self._chat = chat
        self._client_error = client_error
        self._scrub = scrub
        self._writer = ChunkWriter(chat.model)
        self._frames = FrameDecoder()
        self.usage: Usage | None = None
        self._role_pending = False
        self._sent = False  # anything reached the relay (so an error can no longer fail over)
        self._stopped = False  # messageStop arrived
        self._usage_sent = False
        self._tools: dict[Any, int] = {}  # contentBlockIndex -> OpenAI tool_calls index
        self._chars = 0
        self._failure: StreamBroken | ClientMistake | None = None  # raised on the next call

    def feed(self, data: bytes) -> bytes:
        if self._failure is not None:
            raise self._failure
        try:
            frames = self._frames.feed(data)
        except FrameError as error:
            raise StreamBroken(ErrorClass.SERVER, f"malformed event stream ({error})") from None
        if not frames:
            return b""
        out = bytearray()
        for frame in frames:
            if frame.kind != "event":
                relayed = self._sent or bool(out)
                failure = self._exception(frame.name, frame.payload, frame.headers, relayed)
                if not out:
                    raise failure
                # What arrived before the error still reaches the client; the error follows.
                self._failure = failure
                break
            try:
                out += self._event(frame.name, frame.payload)
            except (ValueError, AttributeError, TypeError):  # not JSON, or not the shape
                raise StreamBroken(ErrorClass.SERVER, f"malformed {frame.name} event") from None
        if out:
            self._sent = True
        return bytes(out)

    def _event(self, name: str, payload: bytes) -> bytes:
        if name == "contentBlockDelta":
            event = orjson.loads(payload)
            delta = event.get("delta") or {}
            text = delta.get("text")
            if isinstance(text, str):
                if not text:
                    return b""
                self._chars += len(text)
                return self._role() + self._writer.chunk({"content": text})
            tool = delta.get("toolUse")
            if isinstance(tool, dict) and isinstance(tool.get("input"), str):
                arguments = tool["input"]
                self._chars += len(arguments)
                index = self._tool_index(event.get("contentBlockIndex"))
                call = {"index": index, "function": {"arguments": arguments}}
                return self._role() + self._writer.chunk({"tool_calls": [call]})
            return b""  # reasoning, citations: not part of OpenAI's chunks
        if name == "messageStart":
            self._role_pending = True
            return b""
        if name == "contentBlockStart":
            event = orjson.loads(payload)
            tool = (event.get("start") or {}).get("toolUse")
            if not isinstance(tool, dict):
                return b""
            index = self._tool_index(event.get("contentBlockIndex"))
            call = {
                "index": index,
                "id": tool.get("toolUseId"),
                "type": "function",
                "function": {"name": tool.get("name"), "arguments": ""},
            }
            return self._role() + self._writer.chunk({"tool_calls": [call]})
        if name == "messageStop":
            self._stopped = True
            reason = finish_reason(orjson.loads(payload).get("stopReason"))
            return self._role() + self._writer.chunk({}, reason)
        if name == "metadata":
            self.usage = converse_usage(orjson.loads(payload).get("usage")) or self.usage
            if self._chat.include_usage and self.usage is not None:
                self._usage_sent = True
                return self._writer.usage_chunk(self.usage)
        return b""  # contentBlockStop, and events Bedrock may add later

    def _role(self) -> bytes:
        if not self._role_pending:
            return b""
        self._role_pending = False
        return self._writer.chunk(ROLE_DELTA)

    def _tool_index(self, block: Any) -> int:
        index = self._tools.get(block)
        if index is None:
            index = self._tools[block] = len(self._tools)
        return index

    def _exception(
        self, name: str, payload: bytes, headers: dict[str, Any], relayed: bool
    ) -> StreamBroken | ClientMistake:
        """An exception (or error) event ends the stream: before anything was relayed, a
        validation error is the client's mistake and the rest fail over."""
        message = exception_message(payload) or str(headers.get(":error-message", ""))
        if name == CLIENT_STREAM_EXCEPTION and not relayed:
            return ClientMistake(400, self._client_error(400, payload))
        text = self._scrub(message[:DETAIL_LIMIT].encode()).decode("utf-8", "replace")
        detail = f"{name or 'error'}: {text}" if text else name or "error event"
        return StreamBroken(STREAM_EXCEPTIONS.get(name, ErrorClass.SERVER), detail)

    def finish(self) -> bytes:
        if self._failure is not None:
            raise self._failure
        if self._frames.incomplete:
            raise StreamBroken(ErrorClass.SERVER, "the stream ended inside an event frame")
        if not self._stopped:
            raise StreamBroken(ErrorClass.SERVER, "the stream ended before messageStop")
        out = b""
        if self.usage is None:
            # Bedrock always ends with a metadata event; should it not, count an estimate.
            self.usage = Usage(
                estimate_prompt_tokens(self._chat.messages),
                self.completion_tokens_estimate,
                estimated=True,
            )
        if self._chat.include_usage and not self._usage_sent:
            out = self._writer.usage_chunk(self.usage)
        return out + SSE_DONE_EVENT

    @property
    def completion_tokens_estimate(self) -> int:
        return estimate_tokens(self._chars)
