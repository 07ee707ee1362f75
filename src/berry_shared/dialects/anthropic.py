"""``backend_type = "claude"``: Anthropic's Messages API behind OpenAI's chat completions.

Requests go to ``POST {base_url}/v1/messages`` (``base_url`` with or without ``/v1``, a
proxy's path prefix kept) with the key in ``x-api-key``, ``anthropic-version: 2023-06-01``
and the provider's configured headers (``anthropic-beta``, or an ``anthropic-version`` that
replaces Berry's). 2023-06-01 is the stable version every Anthropic-compatible endpoint
serves; newer versions (the anthropic SDK 2.x sends 2026-10-21) drop ``temperature`` and
``top_p``, which OpenAI clients send.

The translation itself lives in pure modules: ``anthropic_request`` (the body, with the
defaults the docs leave open: ``max_tokens`` 4096 when the client sends none, sampling
parameters per model generation), ``anthropic_response`` (a whole answer) and
``anthropic_stream`` (the event stream).

Errors: 529 overloaded, 429 and 5xx fail over; 401/403 (and the 400 Anthropic sends for an
exhausted credit balance) concern Berry's key or account, so they fail over as the auth class
and never reach the client; a 404 ``not_found_error`` is a model this backend does not serve
(fail over). The rest of 4xx (``invalid_request_error`` with 400, 404 or 413, and the like)
is the client's own mistake: it comes back with its status as an OpenAI-shaped error carrying
Anthropic's message, secrets scrubbed.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from ..backend_state import ErrorClass
from ..chat_request import ChatRequest
from ..config import Provider
from ..transport import HttpRequest
from .anthropic_request import messages_request
from .anthropic_response import openai_completion
from .anthropic_stream import AnthropicStream
from .base import (
    AttemptFailed,
    ClientMistake,
    Completion,
    Dialect,
    StreamDecoder,
    parse_retry_after,
    status_error,
)

API_VERSION = "2023-06-01"
# Anthropic's documented error types: only these are quoted in Berry's own messages (the
# upstream's text never is, unscrubbed).
ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    }
)
# A 400 about the account, not the request (the wording Anthropic's API uses:
# "Your credit balance is too low to access the Anthropic API. ...").
_ACCOUNT_PROBLEMS = ("credit balance",)


def error_details(body: bytes) -> tuple[str, str]:
    """(error type, message) of an Anthropic error body; empty strings when it is not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return "", ""
    kind, message = error.get("type"), error.get("message")
    return (
        kind if isinstance(kind, str) else "",
        message if isinstance(message, str) else "",
    )


class AnthropicDialect(Dialect):
    backend_type = "claude"

    def __init__(self, provider_id: str, provider: Provider) -> None:
        super().__init__(provider_id, provider)
        self.messages_url = provider.api_base + "/messages"
        headers = {"anthropic-version": API_VERSION, "content-type": "application/json"}
        # Lower-cased so a configured "Anthropic-Version" replaces Berry's instead of doubling it.
        headers.update({name.lower(): value for name, value in provider.headers.items()})
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        self.headers = headers

    def chat_request(self, chat: ChatRequest, model: str) -> HttpRequest:
        body = messages_request(chat.body, model, chat.stream)
        return HttpRequest(
            self.messages_url, self.headers, orjson.dumps(body), "POST", self.read_timeout
        )

    def failure(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailed | ClientMistake:
        kind, message = error_details(body)
        error = status_error(status)
        if status == 404 and kind == "invalid_request_error":
            error = None  # the request names something that does not exist: the client's
        elif status == 400 and any(p in message.lower() for p in _ACCOUNT_PROBLEMS):
            error = ErrorClass.AUTH
        if error is None:
            return ClientMistake(status, self.client_error(status, body))
        retry_after = parse_retry_after(headers.get("retry-after"))
        detail = f"HTTP {status} {kind}" if kind in ERROR_TYPES else f"HTTP {status}"
        return AttemptFailed(error, detail, retry_after)

    def error_message(self, body: bytes) -> bytes:
        return error_details(body)[1][:2000].encode()

    def completion(self, body: bytes, content_type: str, chat: ChatRequest) -> Completion:
        try:
            parsed = orjson.loads(body) if "json" in content_type else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or parsed.get("type") != "message":
            raise AttemptFailed(ErrorClass.SERVER, "answered with a body that is not a message")
        answer, usage = openai_completion(parsed, chat.model)
        return Completion(answer, usage)

    def stream_decoder(self, chat: ChatRequest) -> StreamDecoder:
        return AnthropicStream(chat.model, chat.include_usage)
