"""A client's chat request, parsed and checked once: the canonical form every dialect reads.

Clients speak OpenAI's chat completions. The body is kept as the client sent it (anything
Berry does not read passes through to OpenAI-type backends); the few fields Berry itself acts
on are lifted out here, so no later step parses the body again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidRequest


@dataclass(slots=True)
class ChatRequest:
    """A validated chat request: the body as the client sent it, plus what Berry reads."""

    body: dict[str, Any]
    model: str
    stream: bool
    # A provider id the client pinned with the body field "backend" (removed from the body).
    backend: str | None = None
    # The client asked for a usage chunk at the end of its stream (stream_options).
    include_usage: bool = False

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a chat body once; anything Berry does not read passes through."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "The request body is not valid JSON (it must be a UTF-8 JSON object).",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest(
            "'model' must be a non-empty string.", param="model", code="invalid_type"
        )
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' must be a non-empty array of message objects.",
            param="messages",
            code="invalid_type",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                f"'messages[{index}]' must be an object with a string 'role'.",
                param=f"messages[{index}]",
                code="invalid_type",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest(
            "'stream_options' must be an object.", param="stream_options", code="invalid_type"
        )
    backend = body.pop("backend", None)
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise InvalidRequest(
            "'backend' must be a provider id (a string).", param="backend", code="invalid_type"
        )
    include_usage = bool(stream) and options is not None and options.get("include_usage") is True
    return ChatRequest(body, model, bool(stream), backend, include_usage)
