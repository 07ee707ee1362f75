"""A route group on AWS Lambda: Mangum for the ASGI app, powertools around it.

Each route group module ends with ``handler = lambda_handler(app, "<group>")``. On its first
invocation the handler is built: a Mangum handler (lifespan off, see ``GatewayHolder``)
decorated with powertools' Logger (JSON logs with the request id; the event is never logged,
so no prompt or token reaches the logs), Metrics (CloudWatch EMF, one line per invocation)
and Tracer (X-Ray; responses are not captured). Building it lazily keeps powertools out of
``berry serve``, whose logging it would otherwise take over. Secrets reach the config's
``${VAR}`` through environment variables, filled at cold start from Secrets Manager
(``BERRY_SECRETS_ID``) or SSM (``BERRY_SSM_PATH``).

Inside Lambda's Python runtime an internal extension (``lambda_extension``) takes what need
not delay a response off the invocation: the state store's flush runs after the response,
and at shutdown; the X-Ray SDK is loaded after the first response.

The config is fitted to the Lambda path at cold start: ``BERRY_TIME_LIMIT_SECONDS`` (set per
function by template.yaml) caps the request deadline and stream duration, so Berry answers
with its own 504 (or ends a stream with its SSE error event) before API Gateway or Lambda
cut in, and request bodies are capped below Lambda's invocation payload limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from berry_shared.config import Config, load_config
from berry_shared.gateway import Gateway

from .lambda_extension import LambdaExtension, runtime_extension

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .common import GatewayHolder

SERVICE = "berry"

# Lambda refuses a synchronous invocation whose event exceeds 6 MB (6,291,456 bytes). The
# body travels inside that JSON event, escaped, next to the headers: up to 5 MiB it fits with
# a margin, so any body Lambda can deliver at all and Berry does not want gets Berry's 413.
LAMBDA_BODY_LIMIT_BYTES = 5 * 1024 * 1024
TIME_LIMIT_VARIABLE = "BERRY_TIME_LIMIT_SECONDS"

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class Powertools:
    logger: Any
    metrics: Any
    count: Any  # MetricUnit.Count
    milliseconds: Any  # MetricUnit.Milliseconds


@cache
def powertools() -> Powertools:
    """Logger and Metrics, made once per container, on Lambda only."""
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    logger = Logger(service=SERVICE)
    # The "berry" logger now writes JSON through powertools' handler; the runtime's root
    # handler would print every line a second time.
    logging.getLogger(SERVICE).propagate = False
    # Mangum logs every request at INFO; Berry logs nothing per request at INFO.
    logging.getLogger("mangum").setLevel(logging.WARNING)
    return Powertools(
        logger=logger,
        metrics=Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Berry")),
        count=MetricUnit.Count,
        milliseconds=MetricUnit.Milliseconds,
    )


@cache
def tracer() -> Any:
    """powertools' Tracer. It patches nothing: only the handler is traced. Berry's DynamoDB
    calls are batched off the request path (a per-request subsegment would blame the wrong
    request), and upstream calls go through aiohttp, which X-Ray's patcher does not cover."""
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE, auto_patch=False)


class _Traced:
    """A handler traced by X-Ray from the moment ``start_tracing`` has run. Loading the X-Ray
    SDK costs a cold start ~150 ms (it builds a botocore client for its sampler), so with an
    extension that happens after the first response instead."""

    def __init__(self, function: LambdaHandler) -> None:
        self._plain = function
        self._traced: LambdaHandler | None = None

    def start_tracing(self, after_first_invocation: bool = False) -> None:
        traced: LambdaHandler = tracer().capture_lambda_handler(capture_response=False)(self._plain)
        if after_first_invocation:
            # The Tracer marks its first traced call a cold start; here that call is warm.
            from aws_lambda_powertools.tracing import tracer as tracer_module

            tracer_module.is_cold_start = False
        self._traced = traced

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        return (self._traced or self._plain)(event, context)


def instrumented(
    function: LambdaHandler, extension: LambdaExtension | None = None
) -> LambdaHandler:
    """``function`` with powertools' logging context, metrics flushing and tracing; with an
    ``extension``, tracing starts after the first response."""
    tools = powertools()
    function = tools.metrics.log_metrics(capture_cold_start_metric=True)(function)
    traced = _Traced(function)
    if extension is None:
        traced.start_tracing()
    else:
        extension.after_first_invocation.append(
            lambda: traced.start_tracing(after_first_invocation=True)
        )
    wrapped: LambdaHandler = tools.logger.inject_lambda_context(clear_state=True)(traced)
    return wrapped


def lazily(build: Callable[[], LambdaHandler]) -> LambdaHandler:
    """A Lambda entry point that builds the real handler on its first invocation."""
    built: list[LambdaHandler] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if not built:
            built.append(build())
        return built[0](event, context)

    return handler


SecretFetcher = Callable[[str], dict[str, Any]]


def _secret_from_secrets_manager(secret_id: str) -> dict[str, Any]:
    from aws_lambda_powertools.utilities import parameters

    return parameters.get_secret(secret_id, transform="json") or {}


def _parameters_from_ssm(path: str) -> dict[str, Any]:
    from aws_lambda_powertools.utilities import parameters

    return parameters.get_parameters(path, decrypt=True, recursive=False)


def load_secrets(
    environ: MutableMapping[str, str] = os.environ,
    from_secret: SecretFetcher = _secret_from_secrets_manager,
    from_path: SecretFetcher = _parameters_from_ssm,
) -> list[str]:
    """Fill env vars from Secrets Manager (a JSON object) and SSM (parameters under a path).

    Variables already set win, so a deployment can override one secret. Returns the names
    loaded (never the values).
    """
    values: dict[str, Any] = {}
    if secret_id := environ.get("BERRY_SECRETS_ID"):
        values.update(from_secret(secret_id))
    if ssm_path := environ.get("BERRY_SSM_PATH"):
        values.update(from_path(ssm_path))
    loaded = []
    for name, value in values.items():
        if name not in environ:
            environ[name] = str(value)
            loaded.append(name)
    return loaded


def fit_to_lambda(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """The config as this function can honour it: bodies within Lambda's payload limit, and
    the deadline and stream duration within the path's time limit (``BERRY_TIME_LIMIT_SECONDS``:
    25 s behind API Gateway's 29 s, 890 s for streams within Lambda's 900 s)."""
    settings = config.settings
    changes: dict[str, Any] = {
        "max_request_body_bytes": min(settings.max_request_body_bytes, LAMBDA_BODY_LIMIT_BYTES)
    }
    if limit := environ.get(TIME_LIMIT_VARIABLE):
        seconds = float(limit)
        changes["request_timeout_seconds"] = min(settings.request_timeout_seconds, seconds)
        changes["max_stream_duration_seconds"] = min(settings.max_stream_duration_seconds, seconds)
    return config.model_copy(update={"settings": settings.model_copy(update=changes)})


def gateway_from_lambda_environment() -> Gateway:
    """The cold-start path: secrets into the environment, then the bundled or named config,
    fitted to this function's limits."""
    names = load_secrets()
    if names:
        logging.getLogger("berry").info("loaded %d secret(s) into the environment", len(names))
    return Gateway(fit_to_lambda(load_config()))


def _record(route_group: str, response: dict[str, Any]) -> None:
    tools = powertools()
    metrics, count = tools.metrics, tools.count
    metrics.add_dimension(name="route_group", value=route_group)
    metrics.add_metric(name="Requests", unit=count, value=1)
    status = int(response.get("statusCode", 500))
    if status >= 500:
        metrics.add_metric(name="ServerErrors", unit=count, value=1)
    elif status >= 400:
        metrics.add_metric(name="ClientErrors", unit=count, value=1)
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    if "x-berry-attempts" in headers:
        metrics.add_metric(
            name="BackendAttempts", unit=count, value=int(headers["x-berry-attempts"])
        )
    if "x-berry-overhead-ms" in headers:
        metrics.add_metric(
            name="GatewayOverhead",
            unit=tools.milliseconds,
            value=float(headers["x-berry-overhead-ms"]),
        )


async def _settle(holder: GatewayHolder) -> None:
    """The state store's flush, when due (at most once a second, at once after a failure)."""
    if holder.gateway is not None:
        await holder.gateway.store.settle()


async def _flush(holder: GatewayHolder) -> None:
    """Everything the store still holds: the container is going away."""
    if holder.gateway is not None:
        await holder.gateway.store.flush()


def lambda_handler(app: FastAPI, route_group: str) -> LambdaHandler:
    """The Lambda entry point for one route group's app."""
    holder: GatewayHolder = app.state.gateway_holder
    holder.set_factory(gateway_from_lambda_environment)
    extension = runtime_extension()
    if extension is not None:
        extension.after_invocation.append(lambda: _settle(holder))
        extension.at_shutdown.append(lambda: _flush(holder))

    def build() -> LambdaHandler:
        from mangum import Mangum

        asgi = Mangum(app, lifespan="off")

        def invoke(event: dict[str, Any], context: Any) -> dict[str, Any]:
            response = asgi(event, context)
            _record(route_group, response)
            if extension is None:  # the container may be frozen as soon as we return
                asyncio.get_event_loop().run_until_complete(_settle(holder))
            return response

        return instrumented(invoke, extension)

    handler = lazily(build)
    if extension is None:
        return handler

    def handler_with_extension(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with extension.invocation(context.aws_request_id):
            return handler(event, context)

    return handler_with_extension
