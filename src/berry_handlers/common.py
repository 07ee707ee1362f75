"""What every route group shares: the app factory, auth dependencies, errors as OpenAI JSON.

Each route group module builds its own small app with ``build_app(router)`` (one Lambda
function each); the local server builds one app with every router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berry_shared.auth import Caller
from berry_shared.config import ConfigError
from berry_shared.errors import BerryError, PayloadTooLarge, PermissionDenied, error_json
from berry_shared.gateway import Gateway

logger = logging.getLogger("berry")

JSON = "application/json"


def json_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(content=body, status_code=status, media_type=JSON, headers=headers)


def error_response(
    status: int,
    message: str,
    error_type: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return json_response(error_json(message, error_type, code, param), status, headers)


# -- dependencies ---------------------------------------------------------------------------


class GatewayHolder:
    """An app's gateway, made and started once per process.

    Under uvicorn that happens at start-up (lifespan). Mangum runs lifespan around every
    single invocation, so Lambda apps turn it off and the first request makes the gateway:
    once per container, kept warm for the invocations that follow.
    """

    def __init__(
        self, factory: GatewayFactory, gateway: Gateway | None, background_probes: bool
    ) -> None:
        self._factory = factory
        self.gateway = gateway
        self._given = gateway is not None
        self._background_probes = background_probes
        self._started = False
        self._lock: asyncio.Lock | None = None

    def set_factory(self, factory: GatewayFactory) -> None:
        self._factory = factory

    async def get(self) -> Gateway:
        if self._started and self.gateway is not None:
            return self.gateway
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if not self._started:
                try:
                    gateway = self.gateway or self._factory()
                except ConfigError as exc:
                    for problem in exc.problems:
                        logger.error("config: %s", problem)
                    raise ServiceMisconfigured(
                        "Berry's configuration is invalid; the operator must fix it (see logs)."
                    ) from None
                await gateway.start(self._background_probes)
                self.gateway, self._started = gateway, True
        assert self.gateway is not None
        return self.gateway

    async def close(self) -> None:
        if self._started and self.gateway is not None:
            await self.gateway.close()
        self._started = False
        if not self._given:
            self.gateway = None  # the next start reads the config again


class ServiceMisconfigured(BerryError):
    status_code = 503
    error_type = "service_unavailable"
    code = "configuration_error"


async def get_gateway(request: Request) -> Gateway:
    holder: GatewayHolder = request.app.state.gateway_holder
    return await holder.get()


# Dependencies are async on purpose: FastAPI runs a sync one in a worker thread, a thread hop
# per request that cost the hot path about a tenth of its throughput.
async def authenticated(
    request: Request, gateway: Annotated[Gateway, Depends(get_gateway)]
) -> Caller:
    return gateway.directory.authenticate(request.headers.get("authorization"))


async def admin_only(caller: Annotated[Caller, Depends(authenticated)]) -> Caller:
    if not caller.is_admin:
        raise PermissionDenied("This endpoint is for admin tokens only.", code="admin_required")
    return caller


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
CallerDep = Annotated[Caller, Depends(authenticated)]


class ClientClosedRequest(BerryError):
    """The client went away before its request arrived whole: nginx's 499, for the metrics;
    nobody reads the answer."""

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        # An aborted upload is the client's business, not an error of Berry's.
        logger.debug("client left during its upload, after %d body bytes", size)
        raise ClientClosedRequest("The client closed the connection during its upload.") from None
    return b"".join(chunks)


class RelayStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, so a client that goes away
    mid-stream frees the upstream connection at once instead of whenever GC gets to it."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


# -- errors ---------------------------------------------------------------------------------


async def _berry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BerryError)
    return json_response(
        error_json(exc.message, exc.error_type, exc.code, exc.param), exc.status_code, exc.headers
    )


_HTTP_ERRORS = {
    404: ("Unknown path. See /v1/models, /v1/chat/completions, /health.", "not_found"),
    405: ("Method not allowed on this path.", "method_not_allowed"),
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message, code = _HTTP_ERRORS.get(exc.status_code, (str(exc.detail), None))
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(exc.status_code, message, error_type, code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    message = f"Invalid parameter '{location}': {first.get('msg', 'invalid value')}."
    return error_response(400, message, "invalid_request_error", "invalid_parameter", location)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log, never to the caller.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "Internal error in Berry.", "server_error", "internal_error")


# -- metrics middleware ---------------------------------------------------------------------


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (never by raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder: GatewayHolder | None = getattr(scope["app"].state, "gateway_holder", None)
        gateway = holder.gateway if holder is not None else None
        if gateway is None:
            await self.app(scope, receive, send)
            return
        metrics = gateway.metrics
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                endpoint = getattr(scope.get("route"), "path", "unmatched")
                metrics.http_headers_sent(scope["method"], endpoint, time.perf_counter() - started)
            await send(message)

        metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_with_status)
        except ClientDisconnect:  # a body read outside read_body: still the client's doing
            logger.debug("client left during its upload")
            status = ClientClosedRequest.status_code
        finally:
            metrics.in_flight -= 1
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            metrics.http_answered(scope["method"], endpoint, status)


class CORSMiddleware:
    """CORS from the config's ``cors_allow_origins``, read per request because a Lambda app
    loads its config on the first request, after the middleware stack is built. Off (no
    CORS headers, preflights refused) unless origins are configured."""

    ALLOW_HEADERS = "authorization, content-type, openai-organization, openai-project"
    EXPOSE_HEADERS = "x-berry-backend, x-berry-attempts, x-berry-overhead-ms, retry-after"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        holder: GatewayHolder = scope["app"].state.gateway_holder
        allowed = (await holder.get()).settings.cors_allow_origins
        permitted = "*" in allowed or origin in allowed
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            status = 204 if permitted else 403
            headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
            if permitted:
                headers += [
                    (b"access-control-allow-origin", origin.encode()),
                    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", self.ALLOW_HEADERS.encode()),
                    (b"access-control-max-age", b"600"),
                ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if not permitted:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", origin.encode()),
                    (b"access-control-expose-headers", self.EXPOSE_HEADERS.encode()),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


# -- the app factory ------------------------------------------------------------------------

GatewayFactory = Callable[[], Gateway]


def build_app(
    *routers: APIRouter,
    gateway: Gateway | None = None,
    title: str = "Berry",
    gateway_factory: GatewayFactory = Gateway.from_config_file,
    background_probes: bool = False,
) -> FastAPI:
    """An app serving ``routers``; the gateway is the given one, or made from the config.

    ``background_probes`` suits a long-running server only: a Lambda container is frozen
    between invocations, so there the scheduled probe function does that work.
    """
    holder = GatewayHolder(gateway_factory, gateway, background_probes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await holder.get()
        try:
            yield {}
        finally:
            await holder.close()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway_holder = holder
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(BerryError, _berry_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(CORSMiddleware)
    app.add_middleware(MetricsMiddleware)
    return app
