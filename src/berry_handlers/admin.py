"""Route group "admin": ``/admin/*``, for admin tokens only."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response

from berry_shared import reports

from .common import GatewayDep, admin_only, build_app, json_response
from .serverless import lambda_handler

router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)])


@router.get("/model-weights", response_model=None)
async def model_weights(gateway: GatewayDep, model: str | None = None) -> Response:
    key = None if model is None else gateway.directory.model_key(model)
    return json_response(orjson.dumps(reports.model_weights(gateway, key)))


@router.get("/backend-health", response_model=None)
async def backend_health(gateway: GatewayDep) -> Response:
    return json_response(orjson.dumps(reports.backend_health(gateway)))


@router.get("/system-stats", response_model=None)
async def system_stats(gateway: GatewayDep) -> Response:
    return json_response(orjson.dumps(reports.system_stats(gateway)))


app = build_app(router, title="Berry admin")
handler = lambda_handler(app, "admin")
