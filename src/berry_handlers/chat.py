"""Route group "chat": ``POST /v1/chat/completions``, the hot path."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from berry_shared.chat_request import parse_chat_request

from .common import RelayStreamingResponse, build_app, read_body
from .serverless import lambda_handler

router = APIRouter()

# The body is parsed by hand on the hot path (parse_chat_request); this schema documents it
# for OpenAPI clients and fuzzers. Any other field is passed through to the backend.
CHAT_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": True,
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "additionalProperties": True,
                "properties": {"role": {"type": "string"}, "content": {}},
            },
        },
        "stream": {"type": "boolean"},
        "backend": {"type": "string", "minLength": 1, "description": "pin a provider id"},
    },
}


@router.post(
    "/v1/chat/completions",
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}},
        }
    },
)
async def chat_completions(request: Request) -> Response:
    # The hot path: no FastAPI dependencies (their resolution costs more than the work).
    started = time.perf_counter()
    gateway = await request.app.state.gateway_holder.get()
    caller = gateway.directory.authenticate(request.headers.get("authorization"))
    raw = await read_body(request, gateway.settings.max_request_body_bytes)
    chat = parse_chat_request(raw)
    answer = await gateway.relay.chat(caller, chat, started)
    if answer.stream is not None:
        return RelayStreamingResponse(
            answer.stream,
            status_code=answer.status,
            media_type=answer.content_type,
            headers=answer.headers,
        )
    return Response(answer.body, answer.status, answer.headers, answer.content_type)


app = build_app(router, title="Berry chat")
handler = lambda_handler(app, "chat")
