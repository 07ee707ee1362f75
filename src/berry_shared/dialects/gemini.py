"""``backend_type = "gemini"``: the Gemini API (generativelanguage.googleapis.com, v1beta).

``POST {base}/models/{model}:generateContent``, or ``:streamGenerateContent?alt=sse`` for a
stream; ``base_url`` like ``https://generativelanguage.googleapis.com/v1beta``, a bare host
getting ``/v1beta``, any other path used as given. The key travels only in the
``x-goog-api-key`` header, never in a URL (URLs end up in logs). Translation lives in
gemini_request.py (requests), gemini_response.py (answers, streams) and gemini_schema.py
(JSON Schema).

Errors: 429 RESOURCE_EXHAUSTED, 5xx and 404 fail over like any backend's. A 400 is the
client's own mistake (an OpenAI-shaped 400 with Google's message), except that Google also
answers 400 for a bad key ("API key not valid", reason API_KEY_INVALID) and for an account
it will not serve (FAILED_PRECONDITION, e.g. an unsupported region): those are this
backend's auth failure, failed over and never shown to the client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from ..backend_state import ErrorClass
from ..chat_request import ChatRequest
from ..config import Provider
from ..transport import HttpRequest
from .base import (
    AttemptFailed,
    ClientMistake,
    Completion,
    Dialect,
    StreamDecoder,
    Unsupported,
    completion_body,
    parse_retry_after,
)
from .gemini_request import gemini_request
from .gemini_response import GeminiStream, choices, usage_from_gemini

DEFAULT_VERSION_PATH = "/v1beta"
_STATUS_WORD = re.compile(r"[A-Z_]{1,40}")


def api_base(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if urlsplit(base).path else base + DEFAULT_VERSION_PATH


def model_path(model: str) -> str:
    """The model's resource path: ``models/{id}`` (a leading ``models/`` is accepted) or a
    tuned model's own ``tunedModels/{id}``, the id quoted so ``:`` or ``/`` cannot change the
    method or the path."""
    for collection in ("models/", "tunedModels/"):
        if model.startswith(collection):
            return collection + quote(model[len(collection) :], safe="")
    return "models/" + quote(model, safe="")


def choice_count(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


class GeminiDialect(Dialect):
    backend_type = "gemini"

    def __init__(self, provider_id: str, provider: Provider) -> None:
        super().__init__(provider_id, provider)
        self.base = api_base(provider.base_url)
        headers = dict(provider.headers)
        if provider.api_key:
            headers["x-goog-api-key"] = provider.api_key
        headers["Content-Type"] = "application/json"
        self.headers = headers
        # model -> (generateContent URL, streamGenerateContent URL); models come from config.
        self._urls: dict[str, tuple[str, str]] = {}

    def urls(self, model: str) -> tuple[str, str]:
        urls = self._urls.get(model)
        if urls is None:
            resource = f"{self.base}/{model_path(model)}"
            urls = (
                f"{resource}:generateContent",
                f"{resource}:streamGenerateContent?alt=sse",
            )
            self._urls[model] = urls
        return urls

    def chat_request(self, chat: ChatRequest, model: str) -> HttpRequest:
        try:
            body = gemini_request(chat.body, model)
        except (TypeError, ValueError, AttributeError, KeyError):
            # A body shape the translation did not foresee: the client's, not the backend's.
            raise Unsupported(
                "The request has a shape that cannot be translated for Gemini backends."
            ) from None
        whole, stream = self.urls(model)
        return HttpRequest(
            stream if chat.stream else whole,
            self.headers,
            orjson.dumps(body),
            "POST",
            self.read_timeout,
        )

    # -- answers -------------------------------------------------------------------------------

    def failure(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailed | ClientMistake:
        error = _google_error(body)
        word = error.get("status")
        detail = f"HTTP {status}"
        if isinstance(word, str) and _STATUS_WORD.fullmatch(word):
            detail += f" {word}"
        if status == 400:
            if _key_rejected(error):
                return AttemptFailed(ErrorClass.AUTH, f"{detail} (API key rejected)")
            if word == "FAILED_PRECONDITION":
                return AttemptFailed(ErrorClass.AUTH, detail)
            return ClientMistake(400, self.client_error(status, body))
        outcome = super().failure(status, headers, body)
        if isinstance(outcome, AttemptFailed):
            retry_after = outcome.retry_after
            if status == 429 and retry_after is None:
                retry_after = _retry_delay(error)
            error_class = ErrorClass.TIMEOUT if status == 504 else outcome.error
            return AttemptFailed(error_class, detail, retry_after)
        return outcome

    def error_message(self, body: bytes) -> bytes:
        message = _google_error(body).get("message")
        if isinstance(message, str) and message:
            return message[:2000].encode()
        return body[:2000]

    def completion(self, body: bytes, content_type: str, chat: ChatRequest) -> Completion:
        try:
            response = orjson.loads(body)
        except orjson.JSONDecodeError:
            response = None
        if not isinstance(response, dict):
            raise AttemptFailed(ErrorClass.SERVER, "answered with a body that is not a JSON object")
        usage = usage_from_gemini(response.get("usageMetadata"))
        version = response.get("modelVersion")
        model = version if isinstance(version, str) and version else chat.model
        answer = completion_body(model, choices(response, choice_count(chat.body)), usage)
        return Completion(answer, usage)

    def stream_decoder(self, chat: ChatRequest) -> StreamDecoder:
        return GeminiStream(chat.model, chat.include_usage, choice_count(chat.body))


def _google_error(body: bytes) -> dict[str, Any]:
    """The ``error`` object of Google's ``{"error": {code, message, status, details}}``."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(parsed, list) and parsed:  # some front ends wrap it in a list
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _key_rejected(error: dict[str, Any]) -> bool:
    """Google's 400 for a key that is invalid or expired (ErrorInfo reason API_KEY_*)."""
    if any(str(d.get("reason", "")).startswith("API_KEY_") for d in _details(error)):
        return True
    message = error.get("message")
    return isinstance(message, str) and message.startswith("API key")


def _retry_delay(error: dict[str, Any]) -> float | None:
    """RetryInfo.retryDelay ("20s", a proto Duration) of a 429."""
    for detail in _details(error):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            return parse_retry_after(delay[:-1])
    return None
