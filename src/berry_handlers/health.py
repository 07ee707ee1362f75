"""Route group "health and metrics": ``/``, ``/health``, ``/v1/health``, ``/metrics``,
``/prometheus``. No auth: these are what load balancers and dashboards poll."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from berry_shared import reports

from .common import GatewayDep, build_app, json_response
from .serverless import lambda_handler
from .status_page import REFRESH_SECONDS, render_status_page

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def status_page(
    gateway: GatewayDep,
    refresh: Annotated[int, Query(ge=1, le=3600, description="seconds between updates")] = (
        REFRESH_SECONDS
    ),
) -> HTMLResponse:
    _, body = reports.health(gateway)
    usage = await reports.usage_by_model(gateway)
    page = render_status_page(body, refresh, usage)
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.get("/health", response_model=None)
async def health(gateway: GatewayDep) -> Response:
    status, body = reports.health(gateway)
    return json_response(orjson.dumps(body), status)


@router.get("/v1/health", response_model=None)
async def openai_health(gateway: GatewayDep) -> Response:
    status, body = reports.openai_health(gateway)
    return json_response(orjson.dumps(body), status)


@router.get("/metrics", response_model=None)
async def metrics(gateway: GatewayDep) -> Response:
    return json_response(orjson.dumps(reports.metrics(gateway)))


@router.get("/prometheus", response_model=None)
async def prometheus(gateway: GatewayDep) -> Response:
    return Response(gateway.metrics.prometheus_text(), media_type=CONTENT_TYPE_LATEST)


app = build_app(router, title="Berry health and metrics")
handler = lambda_handler(app, "health")
