"""Route group "smart-ai": SmartAI's weights, per model or all."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from berry_shared import reports

from .common import GatewayDep, build_app, json_response
from .serverless import lambda_handler

router = APIRouter(prefix="/smart-ai")


@router.get("/weights", response_model=None)
async def all_weights(gateway: GatewayDep) -> Response:
    return json_response(orjson.dumps(reports.smart_ai_weights(gateway)))


@router.get("/models/{model:path}/weights", response_model=None)
async def model_weights(gateway: GatewayDep, model: str) -> Response:
    key = gateway.directory.model_key(model)
    return json_response(orjson.dumps(reports.smart_ai_weights(gateway, key)))


app = build_app(router, title="Berry SmartAI")
handler = lambda_handler(app, "smart-ai")
