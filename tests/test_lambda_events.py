"""Every function of template.yaml, invoked in-process with the events AWS SAM generates
(`sam local generate-event`: API Gateway REST proxy events, the EventBridge schedule), a
real demo upstream and DynamoDB Local: the routes, the catch-all's 404/405/CORS answers,
and the limits the Lambda path imposes (Berry's 413 below Lambda's payload limit, Berry's
504 before API Gateway's timeout)."""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import importlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from berry_handlers.serverless import LAMBDA_BODY_LIMIT_BYTES
from support import ADMIN_TOKEN, ROOT, USER_TOKEN, DemoUpstream, LambdaContext

SAM = ROOT / ".cache/sam-venv/bin/sam"
MODULES = ("chat", "models", "health", "admin", "smart_ai", "fallback", "probe")
ORIGIN = "https://app.example"
TIME_LIMIT_SECONDS = 2.0  # the Lambda path's limit (25 s in template.yaml), short for tests
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hello events"}]}


def sam_cli() -> str:
    """aws-sam-cli in its own venv (make sam-cli), installed on first use."""
    if not SAM.exists():
        subprocess.run(["make", "-C", str(ROOT), "sam-cli"], check=True, capture_output=True)
    return str(SAM)


@functools.cache
def generated(service: str, kind: str, *options: str) -> str:
    result = subprocess.run(
        [sam_cli(), "local", "generate-event", service, kind, *options],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
    )
    return result.stdout


def api_event(
    method: str,
    path: str,
    resource: str | None = None,
    body: Any = None,
    token: str | None = USER_TOKEN,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """SAM's API Gateway REST proxy event for this request. SAM's template has no caller
    headers and keeps its sample multi-value query: both are set as API Gateway would."""
    options = ["--method", method, "--path", path.lstrip("/"), "--resource", resource or path]
    options += ["--querystringparameters", json.dumps(query or {})]
    if body is not None:
        options += ["--body", body if isinstance(body, str) else json.dumps(body)]
    event: dict[str, Any] = copy.deepcopy(
        json.loads(generated("apigateway", "aws-proxy", *options))
    )
    if body is None:
        event["body"], event["isBase64Encoded"] = None, False
    extra = {"Content-Type": "application/json", **(headers or {})}
    if token:
        extra["Authorization"] = f"Bearer {token}"
    for name, value in extra.items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    event["queryStringParameters"] = query or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} if query else None
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    return event


@dataclass
class Deployment:
    modules: dict[str, Any]
    upstream: DemoUpstream

    def invoke(self, module: str, event: dict[str, Any]) -> dict[str, Any]:
        handler = self.modules[module].handler
        response: dict[str, Any] = handler(event, LambdaContext(function_name=f"berry-{module}"))
        return response


@pytest.fixture(scope="module")
def deployment(dynamodb_local, tmp_path_factory) -> Iterator[Deployment]:
    upstream = DemoUpstream().start()
    config = tmp_path_factory.mktemp("events") / "config.toml"
    config.write_text(f"""
[settings]
cors_allow_origins = ["{ORIGIN}"]
[providers.up]
name = "Upstream"
base_url = "{upstream.base_url}"
api_key = "sk-events-key-0123456789"
models = ["up-model"]
[models.m]
name = "test-model"
[[models.m.backends]]
provider = "up"
model = "up-model"
[users.admin]
name = "Admin"
token = "{ADMIN_TOKEN}"
[users.user]
name = "User"
token = "{USER_TOKEN}"
allowed_models = ["m"]
""")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the runtime's one loop, which Mangum reuses
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            **dynamodb_local.env(f"berry-events-{uuid.uuid4().hex[:8]}"),
            "CONFIG_PATH": str(config),
            "BERRY_TIME_LIMIT_SECONDS": str(TIME_LIMIT_SECONDS),
            "POWERTOOLS_SERVICE_NAME": "berry",
        }.items():
            patch.setenv(name, value)
        modules = {name: importlib.import_module(f"berry_handlers.{name}") for name in MODULES}
        yield Deployment(modules, upstream)
        for name, module in modules.items():
            if name == "probe":
                loop.run_until_complete(module.close())
            else:
                loop.run_until_complete(module.app.state.gateway_holder.close())
    upstream.stop()
    loop.close()
    asyncio.set_event_loop(None)


def error(response: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(response["body"])
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    return dict(body["error"])


def header(response: dict[str, Any], name: str) -> str:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():
        headers.setdefault(key.lower(), ", ".join(values))
    return headers.get(name, "")


ROUTES = [
    ("models", "GET", "/v1/models", None, USER_TOKEN),
    ("models", "GET", "/models", None, USER_TOKEN),
    ("health", "GET", "/", None, None),
    ("health", "GET", "/health", None, None),
    ("health", "GET", "/v1/health", None, None),
    ("health", "GET", "/metrics", None, None),
    ("health", "GET", "/prometheus", None, None),
    ("admin", "GET", "/admin/model-weights", None, ADMIN_TOKEN),
    ("admin", "GET", "/admin/backend-health", None, ADMIN_TOKEN),
    ("admin", "GET", "/admin/system-stats", None, ADMIN_TOKEN),
    ("admin", "GET", "/admin/usage", None, ADMIN_TOKEN),
    ("smart_ai", "GET", "/smart-ai/weights", None, None),
    ("smart_ai", "GET", "/smart-ai/models/test-model/weights", "/smart-ai/models/{proxy+}", None),
]


@pytest.mark.parametrize(("module", "method", "path", "resource", "token"), ROUTES)
def test_every_route_answers_through_its_function(
    deployment: Deployment, module, method, path, resource, token
) -> None:
    response = deployment.invoke(module, api_event(method, path, resource, token=token))
    assert response["statusCode"] == 200, response["body"][:300]


def test_chat_with_sams_base64_body(deployment: Deployment) -> None:
    event = api_event("POST", "/v1/chat/completions", body=CHAT)
    assert event["isBase64Encoded"] is True  # SAM encodes bodies, as binary media would be
    response = deployment.invoke("chat", event)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["choices"][0]["message"]["content"]
    assert header(response, "x-berry-backend") == "up:up-model"


def test_admin_rate_limit_usage_needs_a_user(deployment: Deployment) -> None:
    path = "/admin/rate-limit-usage"
    missing = deployment.invoke("admin", api_event("GET", path, token=ADMIN_TOKEN))
    assert missing["statusCode"] == 400 and error(missing)
    given = api_event("GET", path, token=ADMIN_TOKEN, query={"user_id": "user"})
    assert deployment.invoke("admin", given)["statusCode"] == 200


def test_the_probe_runs_on_sams_scheduled_event(deployment: Deployment) -> None:
    summary = deployment.invoke("probe", json.loads(generated("cloudwatch", "scheduled-event")))
    assert summary["failed"] == {}
    assert summary["probed"] == len(summary["healthy"])


# -- the catch-all ------------------------------------------------------------------------


def test_an_unknown_path_is_berrys_404(deployment: Deployment) -> None:
    response = deployment.invoke("fallback", api_event("GET", "/v2/engines", "/{proxy+}"))
    assert response["statusCode"] == 404
    assert error(response)["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/health", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/stream/v1/chat/completions", "POST"),
    ],
)
def test_another_method_on_a_known_path_is_berrys_405(
    deployment: Deployment, method: str, path: str, allowed: str
) -> None:
    response = deployment.invoke("fallback", api_event(method, path))
    assert response["statusCode"] == 405
    assert error(response)["code"] == "method_not_allowed"
    assert header(response, "allow") == allowed


def test_cors_preflights_pass_through_api_gateway(deployment: Deployment) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    for path in ("/v1/chat/completions", "/stream/v1/chat/completions"):
        response = deployment.invoke(
            "fallback", api_event("OPTIONS", path, token=None, headers=preflight)
        )
        assert response["statusCode"] == 204, path
        assert header(response, "access-control-allow-origin") == ORIGIN
        assert "POST" in header(response, "access-control-allow-methods")
    stranger = {**preflight, "Origin": "https://evil.example"}
    refused = deployment.invoke(
        "fallback", api_event("OPTIONS", "/v1/chat/completions", token=None, headers=stranger)
    )
    assert refused["statusCode"] == 403
    assert not header(refused, "access-control-allow-origin")
    # The real request then carries the header, from the function that serves it.
    answer = deployment.invoke(
        "chat", api_event("POST", "/v1/chat/completions", body=CHAT, headers={"Origin": ORIGIN})
    )
    assert answer["statusCode"] == 200
    assert header(answer, "access-control-allow-origin") == ORIGIN


# -- the Lambda path's limits -------------------------------------------------------------


def test_a_body_lambda_could_carry_but_berry_refuses_is_berrys_413(
    deployment: Deployment,
) -> None:
    """max_request_body_bytes defaults to 10 MiB; on Lambda Berry refuses past 5 MiB, so a
    body that still fits Lambda's 6 MB payload gets Berry's 413, not AWS's error."""

    def chat_of(size: int) -> dict[str, Any]:
        event = api_event("POST", "/v1/chat/completions", body=CHAT)
        message = {"role": "user", "content": "x" * size}
        event["body"] = base64.b64encode(json.dumps({**CHAT, "messages": [message]}).encode())
        event["body"] = event["body"].decode()
        return event

    too_big = chat_of(LAMBDA_BODY_LIMIT_BYTES)
    assert len(json.dumps(too_big)) < 6_291_456 * 1.2  # Lambda could still deliver it
    response = deployment.invoke("chat", too_big)
    assert response["statusCode"] == 413
    assert str(LAMBDA_BODY_LIMIT_BYTES) in error(response)["message"]
    assert deployment.invoke("chat", chat_of(LAMBDA_BODY_LIMIT_BYTES // 2))["statusCode"] == 200


def test_berry_answers_504_before_the_paths_time_limit(deployment: Deployment) -> None:
    """A backend that never answers: Berry's own OpenAI-shaped 504 at its deadline (capped to
    the path's limit), alive to record what the attempt showed (the relay keeps a cut
    attempt's duration as the backend's latency floor)."""
    warm = deployment.invoke("chat", api_event("POST", "/v1/chat/completions", body=CHAT))
    assert warm["statusCode"] == 200
    gateway = deployment.modules["chat"].app.state.gateway_holder.gateway
    assert gateway is not None
    latency_before = gateway.store.state("up:up-model").latency_ms or 0.0
    upstream = deployment.upstream
    upstream.behaviour.mode = "hang"
    try:
        started = time.monotonic()
        response = deployment.invoke("chat", api_event("POST", "/v1/chat/completions", body=CHAT))
        elapsed = time.monotonic() - started
    finally:
        upstream.behaviour.mode = "ok"
    assert response["statusCode"] == 504
    assert error(response)["type"]
    # The config says 30 s; the path's limit made it TIME_LIMIT_SECONDS.
    assert TIME_LIMIT_SECONDS <= elapsed < 30
    assert gateway.settings.request_timeout_seconds == TIME_LIMIT_SECONDS
    assert (gateway.store.state("up:up-model").latency_ms or 0.0) > latency_before
