"""An Anthropic Messages event stream as OpenAI ``chat.completion.chunk`` events.

Events (https://docs.claude.com/en/docs/build-with-claude/streaming): ``message_start``,
then per content block ``content_block_start`` / ``content_block_delta``* /
``content_block_stop``, then ``message_delta`` (stop reason, cumulative usage) and
``message_stop``; ``ping`` anywhere, and ``error`` when the stream fails. Event types Berry
does not know are skipped, as Anthropic's versioning policy asks.

OpenAI's shape comes out: the role first, text deltas, each ``tool_use`` block as a tool call
(its id and name, then its ``input_json_delta`` fragments as argument fragments at the call's
own index), then the ``finish_reason`` chunk, the usage chunk if the client asked for it, and
``[DONE]``, all sent as soon as ``message_stop`` arrives.

The role chunk waits for the first content: until then nothing has reached the client, so an
``error`` event that comes first (Anthropic overloaded right after ``message_start``) still
fails over to another backend. An ``error`` event that arrives together with content is
raised on the next call, so the content before it is delivered first.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..backend_state import ErrorClass
from ..usage import Usage, estimate_tokens, token_count
from .anthropic_response import finish_reason, usage_from_counts
from .base import ROLE_DELTA, SSE_DONE_EVENT, ChunkWriter, StreamBroken, StreamDecoder
from .sse import SSEParser

# Anthropic's error types -> what a failure mid-stream says about the backend (the request
# itself was accepted, so even the client-error types count against the backend).
STREAM_ERRORS = {
    "overloaded_error": ErrorClass.SERVER,
    "api_error": ErrorClass.SERVER,
    "rate_limit_error": ErrorClass.RATE_LIMIT,
    "authentication_error": ErrorClass.AUTH,
    "permission_error": ErrorClass.AUTH,
    "billing_error": ErrorClass.AUTH,
    "timeout_error": ErrorClass.TIMEOUT,
    "invalid_request_error": ErrorClass.SERVER,
    "not_found_error": ErrorClass.SERVER,
    "request_too_large": ErrorClass.SERVER,
}


class AnthropicStream(StreamDecoder):
    __slots__ = (
        "_cache_creation",
        "_cache_read",
        "_chars",
        "_done",
        "_failure",
        "_input",
        "_output",
        "_parser",
        "_started",
        "_stop_reason",
        "_tools",
        "include_usage",
        "usage",
        "writer",
    )

    def __init__(self, model: str, include_usage: bool) -> None:
        self.writer = ChunkWriter(model)
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self._parser = SSEParser()
        self._started = False  # the role chunk went out
        self._done = False  # message_stop seen, [DONE] sent
        self._failure: StreamBroken | None = None
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._stop_reason: object = None
        self._chars = 0
        self._input = self._cache_read = self._cache_creation = self._output = 0

    def feed(self, data: bytes) -> bytes:
        if self._failure is not None:
            raise self._failure
        out: list[bytes] = []
        for event in self._parser.feed(data):
            if self._done:
                break
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                payload = None
            if not isinstance(payload, dict):
                self._fail(StreamBroken(ErrorClass.SERVER, "a malformed stream event"), out)
                break
            try:
                self._event(payload, out)
            except StreamBroken as broken:
                self._fail(broken, out)
                break
        return b"".join(out)

    def _fail(self, broken: StreamBroken, out: list[bytes]) -> None:
        if not out:
            raise broken
        self._failure = broken  # deliver what came before it; raise on the next call

    def finish(self) -> bytes:
        if self._failure is not None:
            raise self._failure
        if not self._done:
            raise StreamBroken(ErrorClass.SERVER, "the stream ended before message_stop")
        return b""

    @property
    def completion_tokens_estimate(self) -> int:
        return estimate_tokens(self._chars)

    # -- events ------------------------------------------------------------------------------

    def _event(self, event: dict[str, Any], out: list[bytes]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            self._delta(event, out)
        elif kind == "content_block_start":
            self._block_start(event, out)
        elif kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("model"), str):
                    self.writer.model = message["model"]
                self._count(message.get("usage"))
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self._stop_reason = delta["stop_reason"]
            self._count(event.get("usage"))
        elif kind == "message_stop":
            self._end(out)
        elif kind == "error":
            error = event.get("error")
            name = error.get("type") if isinstance(error, dict) else None
            if name in STREAM_ERRORS:
                raise StreamBroken(STREAM_ERRORS[name], f"Anthropic sent {name}")
            # Only known types are quoted: the detail reaches the client unscrubbed.
            raise StreamBroken(ErrorClass.SERVER, "Anthropic sent an error event")
        # ping, content_block_stop and event types added later carry nothing for OpenAI.

    def _send(self, delta: dict[str, Any], out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            out.append(self.writer.chunk(ROLE_DELTA))
        out.append(self.writer.chunk(delta))

    def _text(self, text: Any, out: list[bytes]) -> None:
        if isinstance(text, str) and text:
            self._chars += len(text)
            self._send({"content": text}, out)

    def _block_start(self, event: dict[str, Any], out: list[bytes]) -> None:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "text":
            self._text(block.get("text"), out)
        elif kind == "tool_use":
            index = len(self._tools)
            self._tools[event.get("index", -1)] = index
            tool_input = block.get("input")
            # The input arrives in input_json_delta fragments; a start that carries it whole
            # (not seen from Anthropic, but allowed by the schema) sends it at once.
            arguments = orjson.dumps(tool_input).decode() if tool_input else ""
            self._chars += len(arguments)
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": arguments},
            }
            self._send({"tool_calls": [call]}, out)

    def _delta(self, event: dict[str, Any], out: list[bytes]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta":
            self._text(delta.get("text"), out)
        elif kind == "input_json_delta":
            fragment = delta.get("partial_json")
            index = self._tools.get(event.get("index", -1))
            if index is not None and isinstance(fragment, str) and fragment:
                self._chars += len(fragment)
                call = {"index": index, "function": {"arguments": fragment}}
                self._send({"tool_calls": [call]}, out)
        # thinking_delta, signature_delta, citations_delta: nothing OpenAI can carry.

    def _count(self, usage: object) -> None:
        """Usage counts are cumulative: each one seen replaces the one before."""
        if not isinstance(usage, dict):
            return
        if usage.get("input_tokens") is not None:
            self._input = token_count(usage["input_tokens"])
        if usage.get("cache_read_input_tokens") is not None:
            self._cache_read = token_count(usage["cache_read_input_tokens"])
        if usage.get("cache_creation_input_tokens") is not None:
            self._cache_creation = token_count(usage["cache_creation_input_tokens"])
        if usage.get("output_tokens") is not None:
            self._output = token_count(usage["output_tokens"])
        self.usage = usage_from_counts(
            self._input, self._cache_read, self._cache_creation, self._output
        )

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            out.append(self.writer.chunk(ROLE_DELTA))
        out.append(self.writer.chunk({}, finish_reason(self._stop_reason)))
        if self.include_usage:
            usage = self.usage or Usage(0, self.completion_tokens_estimate, estimated=True)
            out.append(self.writer.usage_chunk(usage))
        out.append(SSE_DONE_EVENT)
        self._done = True
