"""Route group "models": ``GET /v1/models`` and ``/models``, only what the caller may use."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from .common import CallerDep, GatewayDep, build_app, json_response
from .serverless import lambda_handler

router = APIRouter()


@router.get("/v1/models", response_model=None)
@router.get("/models", response_model=None)
async def list_models(gateway: GatewayDep, caller: CallerDep) -> Response:
    created = int(gateway.started_at)
    data = [
        {"id": model.name, "object": "model", "created": created, "owned_by": "berry-api"}
        for _, model in gateway.directory.models_for(caller)
    ]
    return json_response(orjson.dumps({"object": "list", "data": data}))


app = build_app(router, title="Berry models")
handler = lambda_handler(app, "models")
