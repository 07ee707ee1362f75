"""Route group "chat": ``POST /v1/chat/completions``, the hot path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive

from berry_shared.chat_request import parse_chat_request
from berry_shared.errors import BerryError

from .common import ClientClosedRequest, RelayStreamingResponse, build_app, read_body
from .serverless import lambda_handler

router = APIRouter()
T = TypeVar("T")

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
    try:
        gateway = await request.app.state.gateway_holder.get()
        caller = gateway.directory.authenticate(request.headers.get("authorization"))
        raw = await read_body(request, gateway.settings.max_request_body_bytes)
        chat = parse_chat_request(raw)
        if "aws.event" in request.scope:
            # Mangum: the whole event is the request; there is no connection to watch.
            answer = await gateway.relay.chat(caller, chat, started)
        else:
            answer = await _unless_client_leaves(
                request.receive, gateway.relay.chat(caller, chat, started)
            )
    except BerryError as error:
        # Every answer of this route says what Berry tried and what it cost, errors too.
        error.headers.setdefault("x-berry-attempts", "0")
        overhead = (time.perf_counter() - started) * 1000
        error.headers.setdefault("x-berry-overhead-ms", f"{overhead:.2f}")
        raise
    if answer.stream is not None:
        return RelayStreamingResponse(
            answer.stream,
            status_code=answer.status,
            media_type=answer.content_type,
            headers=answer.headers,
        )
    return Response(answer.body, answer.status, answer.headers, answer.content_type)


# Answers faster than this never start a watcher: it would cost more than it could save.
WATCH_AFTER_SECONDS = 0.05


async def _unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """``work``, cancelled as soon as the client disconnects: a provider must not generate
    (and bill) an answer nobody will read. The body has been read, so the next ASGI message
    can only be the disconnect. The watcher starts only once the answer takes a while."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_SECONDS, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientClosedRequest("The client closed the connection before the answer.") from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


app = build_app(router, title="Berry chat")
handler = lambda_handler(app, "chat")
