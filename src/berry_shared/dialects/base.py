"""The dialect interface: what Berry needs to know about one provider API.

Clients always speak OpenAI's chat completions. A dialect builds the upstream request for a
backend, classifies an answer (fail over, or the client's own mistake), turns a whole answer
into an OpenAI chat completion and the upstream's byte stream into OpenAI chunks, and builds a
health probe. The relay, SmartAI, circuits, probes, metrics and usage accounting see only this
interface, so they work the same for every backend type.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from ..backend_state import ErrorClass
from ..chat_request import ChatRequest
from ..config import Provider
from ..errors import error_json
from ..transport import HttpRequest
from ..usage import Usage

# An error answer is read whole to classify it; one larger than this is a failure.
ERROR_BODY_LIMIT = 1024 * 1024
PROBE_MESSAGES = [{"role": "user", "content": "ping"}]
REDACTED = b"[redacted]"
# Secrets shorter than this are not scrubbed from bodies (they would match ordinary text).
MIN_SCRUBBED_SECRET = 8


class AttemptFailed(Exception):
    """The backend failed this attempt: the request fails over to another backend."""

    def __init__(self, error: ErrorClass, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.retry_after = retry_after


class ClientMistake(Exception):
    """The provider says the request itself is wrong: the client gets this answer (an
    OpenAI-shaped error), and no other backend is tried."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


class Unsupported(Exception):
    """This backend type cannot honour the request as asked (say, ``n > 1`` on Anthropic).

    The backend is skipped for this request without counting against it; if no backend can
    serve it, the client gets a 400 with this message.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class StreamBroken(Exception):
    """A stream failed after it began (an upstream error event, a malformed frame)."""

    def __init__(self, error: ErrorClass, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer in OpenAI's shape."""

    body: bytes
    usage: Usage | None
    content_type: str = "application/json"


class StreamDecoder(ABC):
    """Turns one upstream stream into OpenAI ``chat.completion.chunk`` SSE events.

    ``feed`` takes bytes as they arrive and returns the SSE bytes to send now (possibly none);
    ``finish`` is called at the upstream's clean end and returns what remains, ending with
    ``data: [DONE]``, or raises ``StreamBroken`` if the stream was incomplete. Either may
    raise ``StreamBroken``. ``usage`` holds the provider's count once it was seen, and
    ``completion_tokens_estimate`` what was relayed so far, for when it never is.
    """

    usage: Usage | None = None

    @abstractmethod
    def feed(self, data: bytes) -> bytes: ...

    @abstractmethod
    def finish(self) -> bytes: ...

    @property
    @abstractmethod
    def completion_tokens_estimate(self) -> int:
        """Completion tokens relayed so far, estimated (for a stream that ended early)."""


def status_error(status: int) -> ErrorClass | None:
    """The error class of an upstream status; None for the client's own mistakes.

    401/402/403 mean the provider rejects *our* key or account, so another backend may work;
    404 on the chat path means the provider does not serve that model; a redirect is never
    followed (it would carry the key and the prompt elsewhere), so it is a failure.
    """
    if status >= 500 or 300 <= status < 400:
        return ErrorClass.SERVER
    if status == 429:
        return ErrorClass.RATE_LIMIT
    if status in (401, 402, 403):
        return ErrorClass.AUTH
    if status == 404:
        return ErrorClass.MODEL
    if status == 408:
        return ErrorClass.TIMEOUT
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only; dates are rare upstream)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds <= 3600 else None


def json_object(value: object) -> dict[str, Any] | None:
    """A JSON object given as a dict or as JSON text; None for anything else."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def tool_arguments(arguments: object) -> dict[str, Any]:
    """An OpenAI tool call's ``arguments`` (JSON text) as the object providers take; text
    that is no JSON object (a model's broken JSON in the history) is kept whole under
    "arguments"."""
    if not arguments:
        return {}
    parsed = json_object(arguments)
    return parsed if parsed is not None else {"arguments": arguments}


def openai_tool_call(call_id: object, name: object, arguments: object) -> dict[str, Any]:
    """One entry of an OpenAI message's ``tool_calls``; ``arguments`` becomes its JSON text."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def assistant_message(texts: list[str], tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant ``message`` of an OpenAI choice. OpenAI sends null content beside tool
    calls, and a string otherwise."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE_EVENT = b"data: [DONE]\n\n"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class Dialect(ABC):
    """One provider API. Built once per provider at start-up; stateless per request."""

    backend_type: ClassVar[str]
    # The content type a healthy stream answer carries.
    stream_content_type: ClassVar[str] = "text/event-stream"

    def __init__(self, provider_id: str, provider: Provider) -> None:
        self.provider_id = provider_id
        self.provider = provider
        self.read_timeout = provider.timeout_seconds
        # Values that must never reach a client, even inside a provider's own error body.
        self._secrets = [
            value.encode()
            for value in (provider.api_key, *provider.headers.values())
            if len(value) >= MIN_SCRUBBED_SECRET
        ]

    # -- requests ------------------------------------------------------------------------------

    @abstractmethod
    def chat_request(self, chat: ChatRequest, model: str) -> HttpRequest:
        """The upstream request serving ``chat`` on the upstream ``model``; may raise
        ``Unsupported``."""

    def probe_request(self, model: str) -> HttpRequest:
        """The cheapest request that proves the backend answers: one token of chat."""
        body = {"model": model, "messages": PROBE_MESSAGES, "max_tokens": 1}
        return self.chat_request(ChatRequest(body, model, False), model)

    # -- answers -------------------------------------------------------------------------------

    def failure(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailed | ClientMistake:
        """A non-2xx answer: the backend's failure (fail over), or the client's mistake."""
        error = status_error(status)
        if error is None:
            return ClientMistake(status, self.client_error(status, body))
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return AttemptFailed(error, f"HTTP {status}", retry_after)

    def client_error(self, status: int, body: bytes) -> bytes:
        """The OpenAI-shaped error a client gets for the provider's 4xx ``body``."""
        message = self.scrub(self.error_message(body)).decode("utf-8", "replace")
        return error_json(
            message or f"The provider rejected the request (HTTP {status}).",
            "invalid_request_error",
            "upstream_rejected_request",
        )

    def error_message(self, body: bytes) -> bytes:
        """The provider's own message inside an error body (override per dialect)."""
        return body[:2000]

    @abstractmethod
    def completion(self, body: bytes, content_type: str, chat: ChatRequest) -> Completion:
        """A 2xx whole answer in OpenAI's shape; raises ``AttemptFailed`` if it is not one."""

    @abstractmethod
    def stream_decoder(self, chat: ChatRequest) -> StreamDecoder: ...

    def scrub(self, body: bytes) -> bytes:
        """``body`` without the provider's key or configured header values."""
        for secret in self._secrets:
            if secret in body:
                body = body.replace(secret, REDACTED)
        return body


# The first delta of every choice in an OpenAI stream names the speaker.
ROLE_DELTA: dict[str, Any] = {"role": "assistant", "content": ""}


class ChunkWriter:
    """Builds OpenAI stream chunks for a translated stream: one id, time and model for all."""

    def __init__(self, model: str) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self.model = model

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        index: int = 0,
    ) -> bytes:
        return sse_event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    def usage_chunk(self, usage: Usage) -> bytes:
        return sse_event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage.openai(),
            }
        )


def completion_body(
    model: str,
    choices: list[dict[str, Any]],
    usage: Usage | None,
) -> bytes:
    """A whole OpenAI ``chat.completion`` for a translated answer."""
    body: dict[str, Any] = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage.openai()
    return orjson.dumps(body)
