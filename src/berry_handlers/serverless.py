"""A route group on AWS Lambda: Mangum for the ASGI app, powertools around it.

Each route group module ends with ``handler = lambda_handler(app, "<group>")``. On its first
invocation the handler is built: a Mangum handler (lifespan off, see ``GatewayHolder``)
decorated with powertools' Logger (JSON logs with the request id; the event is never logged,
so no prompt or token reaches the logs), Tracer (X-Ray; responses are not captured) and
Metrics (CloudWatch EMF, one line per invocation). Building it lazily keeps powertools out of
``berry serve``, whose logging it would otherwise take over. Secrets reach the config's
``${VAR}`` through environment variables, filled at cold start from Secrets Manager
(``BERRY_SECRETS_ID``) or SSM (``BERRY_SSM_PATH``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastapi import FastAPI

from berry_shared.gateway import Gateway

from .common import GatewayHolder

SERVICE = "berry"

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class Powertools:
    logger: Any
    tracer: Any
    metrics: Any
    count: Any  # MetricUnit.Count
    milliseconds: Any  # MetricUnit.Milliseconds


@cache
def powertools() -> Powertools:
    """Logger, Tracer and Metrics, made once per container, on Lambda only."""
    from aws_lambda_powertools import Logger, Metrics, Tracer
    from aws_lambda_powertools.metrics import MetricUnit

    logger = Logger(service=SERVICE)
    # The "berry" logger now writes JSON through powertools' handler; the runtime's root
    # handler would print every line a second time.
    logging.getLogger(SERVICE).propagate = False
    # Mangum logs every request at INFO; Berry logs nothing per request at INFO.
    logging.getLogger("mangum").setLevel(logging.WARNING)
    return Powertools(
        logger=logger,
        tracer=Tracer(service=SERVICE, patch_modules=["botocore"]),
        metrics=Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Berry")),
        count=MetricUnit.Count,
        milliseconds=MetricUnit.Milliseconds,
    )


def instrumented(function: LambdaHandler) -> LambdaHandler:
    """``function`` with powertools' logging context, tracing and metrics flushing."""
    tools = powertools()
    function = tools.metrics.log_metrics(capture_cold_start_metric=True)(function)
    function = tools.tracer.capture_lambda_handler(capture_response=False)(function)
    wrapped: LambdaHandler = tools.logger.inject_lambda_context(clear_state=True)(function)
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


def gateway_from_lambda_environment() -> Gateway:
    """The cold-start path: secrets into the environment, then the bundled or named config."""
    names = load_secrets()
    if names:
        logging.getLogger("berry").info("loaded %d secret(s) into the environment", len(names))
    return Gateway.from_config_file()


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


def _settle(app: FastAPI) -> None:
    """Give the state store its once-a-second flush before the container is frozen."""
    holder: GatewayHolder = app.state.gateway_holder
    if holder.gateway is not None:
        asyncio.get_event_loop().run_until_complete(holder.gateway.store.settle())


def lambda_handler(app: FastAPI, route_group: str) -> LambdaHandler:
    """The Lambda entry point for one route group's app."""
    app.state.gateway_holder.set_factory(gateway_from_lambda_environment)

    def build() -> LambdaHandler:
        from mangum import Mangum

        asgi = Mangum(app, lifespan="off")

        def invoke(event: dict[str, Any], context: Any) -> dict[str, Any]:
            response = asgi(event, context)
            _record(route_group, response)
            _settle(app)
            return response

        return instrumented(invoke)

    return lazily(build)
