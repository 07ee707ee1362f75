"""Route group "chat": ``POST /v1/chat/completions``, the hot path."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from berry_shared.relay import parse_chat_request

from .common import CallerDep, GatewayDep, RelayStreamingResponse, build_app, read_body
from .serverless import lambda_handler

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request, gateway: GatewayDep, caller: CallerDep) -> Response:
    started = time.perf_counter()
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
