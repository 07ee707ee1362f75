"""``backend_type = "openai"``: OpenAI-compatible providers. Bodies pass through.

The request body goes upstream as the client sent it, with ``model`` rewritten (and, for a
stream, usage requested so Berry can count it). Answers come back byte for byte: a whole
answer is only parsed to check it and read its ``usage``; a stream is only scanned for event
boundaries, its final ``[DONE]`` and its usage chunk. The one change to a stream: a client that
did not ask for usage does not get the usage chunk Berry asked for, so it sees exactly what
OpenAI would have sent it.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..backend_state import ErrorClass
from ..chat_request import ChatRequest
from ..config import Provider
from ..transport import HttpRequest
from ..usage import Usage, estimate_prompt_tokens, estimate_tokens, usage_from_openai
from .base import AttemptFailed, Completion, Dialect, StreamBroken, StreamDecoder

USAGE_MARKS = (b'"usage":{', b'"usage": {')
NULL_USAGE = ((b',"usage":null', b""), (b', "usage": null', b""))
DONE = b"data: [DONE]"
EVENT_END = (b"\n\n", b"\r\n\r\n")


class OpenAIDialect(Dialect):
    backend_type = "openai"

    def __init__(self, provider_id: str, provider: Provider) -> None:
        super().__init__(provider_id, provider)
        base = provider.api_base
        self.chat_url = base + "/chat/completions"
        headers = dict(provider.headers)
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        headers["Content-Type"] = "application/json"
        self.headers = headers

    def chat_request(self, chat: ChatRequest, model: str) -> HttpRequest:
        body: dict[str, Any] = {**chat.body, "model": model}
        if chat.stream and not chat.include_usage:
            # Ask for usage so it can be counted; the client does not see it (OpenAIStream).
            options = chat.body.get("stream_options")
            body["stream_options"] = {**(options or {}), "include_usage": True}
        return HttpRequest(
            self.chat_url, self.headers, orjson.dumps(body), "POST", self.read_timeout
        )

    def client_error(self, status: int, body: bytes) -> bytes:
        # OpenAI clients expect the provider's own error body: pass it on, minus secrets.
        return self.scrub(body)

    def completion(self, body: bytes, content_type: str, chat: ChatRequest) -> Completion:
        try:
            parsed = orjson.loads(body) if "json" in content_type else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise AttemptFailed(ErrorClass.SERVER, "answered with a body that is not a JSON object")
        usage = usage_from_openai(parsed.get("usage")) or _estimate(parsed, chat)
        return Completion(body, usage, content_type)

    def stream_decoder(self, chat: ChatRequest) -> StreamDecoder:
        return OpenAIStream(hide_usage=not chat.include_usage)


def _estimate(completion: dict[str, Any], chat: ChatRequest) -> Usage:
    """A provider that reports no usage: count characters (see usage.CHARS_PER_TOKEN)."""
    choices = completion.get("choices")
    text = 0
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            text += len(content)
    prompt = estimate_prompt_tokens(chat.messages)
    return Usage(prompt, estimate_tokens(text), estimated=True)


def _last_event_end(data: bytes) -> int:
    """The index just past the last complete SSE event in ``data``; 0 if there is none."""
    end = 0
    for separator in EVENT_END:
        at = data.rfind(separator)
        if at >= 0:
            end = max(end, at + len(separator))
    return end


class OpenAIStream(StreamDecoder):
    """Pass-through with event framing: whole events only, usage read (and maybe hidden)."""

    __slots__ = ("_chunks", "_done", "_pending", "hide_usage", "usage")

    def __init__(self, hide_usage: bool) -> None:
        self.hide_usage = hide_usage
        self.usage: Usage | None = None
        self._pending = b""
        self._done = False
        self._chunks = 0

    def feed(self, data: bytes) -> bytes:
        if self._pending:
            data = self._pending + data
        end = _last_event_end(data)
        if end == 0:
            self._pending = data
            return b""
        out, self._pending = data[:end], data[end:]
        return self._events(out)

    def _events(self, out: bytes) -> bytes:
        # Chunks that carry text (OpenAI streams about one token per chunk).
        self._chunks += out.count(b'"content":"') - out.count(b'"content":""')
        if USAGE_MARKS[0] in out or USAGE_MARKS[1] in out:
            out = self._take_usage(out)
        if self.hide_usage:
            for mark, replacement in NULL_USAGE:
                if mark in out:
                    out = out.replace(mark, replacement)
        if DONE in out:
            self._done = True
        return out

    def _take_usage(self, out: bytes) -> bytes:
        """Read the usage chunk (rare: once per stream); drop it if the client did not ask."""
        kept: list[bytes] = []
        for event in out.replace(b"\r\n", b"\n").split(b"\n\n"):
            if not event:
                continue
            payload = event.removeprefix(b"data: ").removeprefix(b"data:").strip()
            if any(mark in event for mark in USAGE_MARKS):
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    chunk = None
                if isinstance(chunk, dict):
                    self.usage = usage_from_openai(chunk.get("usage")) or self.usage
                    if self.hide_usage:
                        if not chunk.get("choices"):
                            continue  # the usage-only chunk the client did not ask for
                        chunk.pop("usage", None)
                        event = b"data: " + orjson.dumps(chunk)
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def finish(self) -> bytes:
        rest = self._events(self._pending) if self._pending else b""
        self._pending = b""
        if not self._done:
            raise StreamBroken(ErrorClass.SERVER, "the stream ended without [DONE]")
        return rest

    @property
    def completion_tokens_estimate(self) -> int:
        return self._chunks
