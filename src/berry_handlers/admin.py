"""Route group "admin": ``/admin/*``, for admin tokens only."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from berry_shared import reports
from berry_shared.errors import InvalidRequest, NotFound, echoed
from berry_shared.gateway import Gateway

from .common import GatewayDep, admin_only, build_app, json_response
from .serverless import lambda_handler

router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)])

# Usage is kept about 400 days.
MAX_USAGE_DAYS = 400


@router.get("/model-weights", response_model=None)
async def model_weights(gateway: GatewayDep, model: str | None = None) -> Response:
    key = None if model is None else gateway.directory.model_key(model)
    return json_response(orjson.dumps(reports.model_weights(gateway, key)))


@router.get("/backend-health", response_model=None)
async def backend_health(gateway: GatewayDep) -> Response:
    return json_response(orjson.dumps(reports.backend_health(gateway)))


@router.get("/usage", response_model=None)
async def usage(
    gateway: GatewayDep,
    user_id: str | None = None,
    days: Annotated[int, Query(ge=1, le=MAX_USAGE_DAYS)] = 1,
) -> Response:
    if user_id is not None:
        _known_user(gateway, user_id)
    return json_response(orjson.dumps(await reports.usage(gateway, user_id, days)))


@router.get("/rate-limit-usage", response_model=None)
async def rate_limit_usage(gateway: GatewayDep, user_id: str | None = None) -> Response:
    if not user_id:
        raise InvalidRequest(
            "Missing required parameter: 'user_id' (a user's id in the config).",
            param="user_id",
            code="missing_required_parameter",
        )
    _known_user(gateway, user_id)
    return json_response(orjson.dumps(await reports.rate_limit_usage(gateway, user_id)))


def _known_user(gateway: Gateway, user_id: str) -> None:
    if user_id not in gateway.config.users:
        raise NotFound(f"Unknown user '{echoed(user_id)}'.", param="user_id", code="user_not_found")


@router.get("/system-stats", response_model=None)
async def system_stats(gateway: GatewayDep) -> Response:
    return json_response(orjson.dumps(reports.system_stats(gateway)))


app = build_app(router, title="Berry admin")
handler = lambda_handler(app, "admin")
