"""Every Lambda handler, invoked in-process as the runtime would: API Gateway REST (v1) and
HTTP API (v2) proxy events, a Lambda context, a real demo upstream and DynamoDB Local."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import lambda_events
from berry_handlers import lambda_extension
from berry_handlers.serverless import (
    LAMBDA_BODY_LIMIT_BYTES,
    fit_to_lambda,
    instrumented,
    load_secrets,
)
from berry_shared.config import parse_config
from berry_shared.state.dynamo import make_client
from support import ADMIN_TOKEN, PROVIDER_KEY_PREFIX, USER_TOKEN, DemoUpstream, LambdaContext

GROUPS = ("chat", "models", "health", "admin", "smart_ai", "probe")
MESSAGES = [{"role": "user", "content": "hello lambda"}]


# As the user, unless a test names another token.
rest_event = functools.partial(lambda_events.rest_event, token=USER_TOKEN)


def http_event(
    method: str, path: str, body: Any = None, token: str | None = USER_TOKEN, query: str = ""
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event."""
    headers = {
        "host": "xyz789.execute-api.us-east-1.amazonaws.com",
        "content-type": "application/json",
        "user-agent": "curl/8.0",
    }
    if token:
        headers["authorization"] = f"Bearer {token}"
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "xyz789",
            "domainName": headers["host"],
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "24/Nov/2026:20:00:00 +0000",
            "timeEpoch": 1795550000000,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.0",
            },
        },
        "body": None if body is None else orjson.dumps(body).decode(),
        "isBase64Encoded": False,
    }


@pytest.fixture(scope="module")
def lambda_env(dynamodb_local, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """One Lambda "deployment": config file, env vars, upstreams, a fresh table and loop."""
    good = DemoUpstream().start()
    good.behaviour.name = "good"
    flaky = DemoUpstream().start()
    flaky.behaviour.name = "flaky"
    config = tmp_path_factory.mktemp("lambda") / "config.toml"
    config.write_text(f"""
[settings]
circuit_breaker_failure_threshold = 1
[providers.good]
name = "Good"
base_url = "{good.base_url}"
api_key = "${{GOOD_KEY}}"
models = ["up-model"]
[providers.flaky]
name = "Flaky"
base_url = "{flaky.base_url}"
api_key = "{PROVIDER_KEY_PREFIX}flaky"
models = ["up-model"]
[models.m]
name = "test-model"
[[models.m.backends]]
provider = "good"
model = "up-model"
[[models.m.backends]]
provider = "flaky"
model = "up-model"
[users.admin]
name = "Admin"
token = "{ADMIN_TOKEN}"
[users.user]
name = "User"
token = "{USER_TOKEN}"
allowed_models = ["m"]
""")
    table = f"berry-lambda-{uuid.uuid4().hex[:8]}"
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the runtime's one loop, which Mangum reuses
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            **dynamodb_local.env(table),
            "CONFIG_PATH": str(config),
            "GOOD_KEY": f"{PROVIDER_KEY_PREFIX}good",
            "POWERTOOLS_SERVICE_NAME": "berry",
            "POWERTOOLS_METRICS_NAMESPACE": "Berry",
        }.items():
            patch.setenv(name, value)
        modules = {g: importlib.import_module(f"berry_handlers.{g}") for g in GROUPS}
        yield {
            "modules": modules,
            "good": good,
            "flaky": flaky,
            "table": table,
            "endpoint": dynamodb_local.endpoint,
        }
        for group, module in modules.items():
            if group == "probe":
                loop.run_until_complete(module.close())
            else:
                loop.run_until_complete(module.app.state.gateway_holder.close())
    good.stop()
    flaky.stop()
    loop.close()
    asyncio.set_event_loop(None)


def invoke(lambda_env, group: str, event: dict[str, Any]) -> dict[str, Any]:
    handler = lambda_env["modules"][group].handler
    return handler(event, LambdaContext(function_name=f"berry-{group}"))


def header(response: dict[str, Any], name: str) -> str:
    return {k.lower(): v for k, v in response["headers"].items()}[name]


@pytest.mark.parametrize("make_event", [rest_event, http_event], ids=["rest-v1", "http-v2"])
def test_chat_non_stream(lambda_env, make_event) -> None:
    body = {"model": "test-model", "messages": MESSAGES, "backend": "good"}
    response = invoke(lambda_env, "chat", make_event("POST", "/v1/chat/completions", body))
    assert response["statusCode"] == 200
    assert header(response, "x-berry-backend") == "good:up-model"
    assert header(response, "x-berry-attempts") == "1"
    completion = json.loads(response["body"])
    assert completion["choices"][0]["message"]["content"] == "Hello from demo upstream (good)"
    forwarded = lambda_env["good"].stats()["last_request"]["headers"]["authorization"]
    assert forwarded == f"Bearer {PROVIDER_KEY_PREFIX}good"  # the ${GOOD_KEY} from the env


@pytest.mark.parametrize("make_event", [rest_event, http_event], ids=["rest-v1", "http-v2"])
def test_chat_stream_is_a_complete_sse_body_under_mangum(lambda_env, make_event) -> None:
    body = {"model": "test-model", "messages": MESSAGES, "stream": True, "backend": "good"}
    response = invoke(lambda_env, "chat", make_event("POST", "/v1/chat/completions", body))
    assert response["statusCode"] == 200
    assert header(response, "content-type").startswith("text/event-stream")
    events = [line for line in response["body"].splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    text = "".join(
        orjson.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1]
    )
    assert text == "Hello from demo upstream (good)"


def test_chat_with_a_base64_body_and_bad_input(lambda_env) -> None:
    body = {"model": "test-model", "messages": MESSAGES, "backend": "good"}
    event = rest_event("POST", "/v1/chat/completions", body, base64_body=True)
    assert invoke(lambda_env, "chat", event)["statusCode"] == 200
    broken = invoke(lambda_env, "chat", rest_event("POST", "/v1/chat/completions", b"{nope"))
    assert broken["statusCode"] == 400
    assert json.loads(broken["body"])["error"]["code"] == "invalid_json"
    anonymous = invoke(
        lambda_env, "chat", http_event("POST", "/v1/chat/completions", body, token=None)
    )
    assert anonymous["statusCode"] == 401
    assert "Traceback" not in broken["body"] + anonymous["body"]


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models(lambda_env, path) -> None:
    for event in (rest_event("GET", path), http_event("GET", path)):
        response = invoke(lambda_env, "models", event)
        assert response["statusCode"] == 200
        assert [m["id"] for m in json.loads(response["body"])["data"]] == ["test-model"]


def test_health_routes(lambda_env) -> None:
    for path in ("/health", "/v1/health", "/metrics", "/prometheus", "/"):
        response = invoke(lambda_env, "health", http_event("GET", path, token=None))
        assert response["statusCode"] == 200, path
    health = json.loads(invoke(lambda_env, "health", rest_event("GET", "/health"))["body"])
    assert health["state_store"]["kind"] == "dynamodb"
    assert health["state_store"]["healthy"] is True
    page = invoke(lambda_env, "health", rest_event("GET", "/", token=None))
    assert "<title>Berry status</title>" in page["body"]


def test_admin_routes(lambda_env) -> None:
    path = "/admin/model-weights"
    denied = invoke(lambda_env, "admin", http_event("GET", path))
    assert denied["statusCode"] == 403
    for route in ("/admin/model-weights", "/admin/backend-health", "/admin/system-stats"):
        response = invoke(lambda_env, "admin", rest_event("GET", route, token=ADMIN_TOKEN))
        assert response["statusCode"] == 200, route
    filtered = invoke(
        lambda_env, "admin", http_event("GET", path, token=ADMIN_TOKEN, query="model=test-model")
    )
    assert list(json.loads(filtered["body"])["models"]) == ["m"]
    unknown = invoke(
        lambda_env, "admin", rest_event("GET", path, token=ADMIN_TOKEN, query={"model": "nope"})
    )
    assert unknown["statusCode"] == 404


def test_smart_ai_sees_the_circuit_the_chat_function_opened(lambda_env) -> None:
    """Two functions (two gateways, like two containers) share the circuit through DynamoDB
    within about a second."""
    flaky = lambda_env["flaky"]
    flaky.behaviour.mode = "fail"
    try:
        body = {"model": "test-model", "messages": MESSAGES, "backend": "flaky"}
        failed = invoke(lambda_env, "chat", rest_event("POST", "/v1/chat/completions", body))
        assert failed["statusCode"] in (502, 503)  # threshold 1: this failure opens it
    finally:
        flaky.behaviour.mode = "ok"
    event = rest_event(
        "GET",
        "/smart-ai/models/test-model/weights",
        token=None,
        resource="/smart-ai/models/{proxy+}",
    )
    deadline = time.monotonic() + 10
    while True:
        response = invoke(lambda_env, "smart_ai", event)
        assert response["statusCode"] == 200
        backends = json.loads(response["body"])["models"][0]["backends"]
        flaky_view = next(b for b in backends if b["provider"] == "flaky")
        if flaky_view["health_details"]["circuit"] == "open":
            break
        assert time.monotonic() < deadline, flaky_view
        time.sleep(0.2)
    weights = invoke(lambda_env, "smart_ai", http_event("GET", "/smart-ai/weights", token=None))
    assert weights["statusCode"] == 200


def test_scheduled_probe_heals_and_flushes_to_dynamodb(lambda_env) -> None:
    flaky = lambda_env["flaky"]
    flaky.behaviour.mode = "fail"
    body = {"model": "test-model", "messages": MESSAGES, "backend": "flaky"}
    failed = invoke(lambda_env, "chat", rest_event("POST", "/v1/chat/completions", body))
    assert failed["statusCode"] in (502, 503)  # pinned to the failing backend: its circuit opens
    flaky.behaviour.mode = "ok"
    summary = invoke(lambda_env, "probe", lambda_events.schedule_event())
    assert "flaky:up-model" in summary["healthy"]
    assert summary["failed"] == {}
    # The backend's control item: the probe's success closed the circuit for every instance.
    item = make_client(lambda_env["endpoint"]).get_item(
        TableName=lambda_env["table"],
        Key={"pk": {"S": "backend"}, "sk": {"S": "flaky:up-model"}},
        ConsistentRead=True,
    )["Item"]
    assert float(item["opened_at"]["N"]) == 0


def test_logs_are_json_without_secrets_and_metrics_are_emf(lambda_env, capsys) -> None:
    body = {"model": "test-model", "messages": MESSAGES}
    invoke(lambda_env, "chat", rest_event("POST", "/v1/chat/completions", body))
    invoke(lambda_env, "chat", rest_event("POST", "/v1/chat/completions", b"{bad"))
    out = capsys.readouterr().out
    emf = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    assert emf, out
    names = {
        m["Name"] for doc in emf for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]
    }
    assert {"Requests", "BackendAttempts", "GatewayOverhead", "ClientErrors"} <= names
    assert all(doc["route_group"] == "chat" for doc in emf if "Requests" in doc)
    for secret in (USER_TOKEN, ADMIN_TOKEN, PROVIDER_KEY_PREFIX, "hello lambda"):
        assert secret not in out


def test_secrets_fill_the_environment_without_overriding() -> None:
    environ = {"BERRY_SECRETS_ID": "berry/prod", "BERRY_SSM_PATH": "/berry/prod", "ALREADY": "kept"}
    asked: list[str] = []

    def from_secret(name: str) -> dict[str, Any]:
        asked.append(name)
        return {"OPENAI_API_KEY": "sk-from-secret", "ALREADY": "ignored"}

    def from_path(path: str) -> dict[str, Any]:
        asked.append(path)
        return {"ANTHROPIC_KEY": "from-ssm"}

    loaded = load_secrets(environ, from_secret, from_path)
    assert asked == ["berry/prod", "/berry/prod"]
    assert sorted(loaded) == ["ANTHROPIC_KEY", "OPENAI_API_KEY"]
    assert environ["OPENAI_API_KEY"] == "sk-from-secret" and environ["ALREADY"] == "kept"
    assert load_secrets({}, from_secret, from_path) == [] and len(asked) == 2


def test_the_config_is_fitted_to_the_lambda_path() -> None:
    config = parse_config(
        {
            "settings": {
                "request_timeout_seconds": 60,
                "max_stream_duration_seconds": 1200,
                "max_request_body_bytes": 10 * 1024 * 1024,
            }
        }
    )
    api = fit_to_lambda(config, {"BERRY_TIME_LIMIT_SECONDS": "25"}).settings
    assert (api.request_timeout_seconds, api.max_stream_duration_seconds) == (25, 25)
    assert api.max_request_body_bytes == LAMBDA_BODY_LIMIT_BYTES
    stream = fit_to_lambda(config, {"BERRY_TIME_LIMIT_SECONDS": "890"}).settings
    assert (stream.request_timeout_seconds, stream.max_stream_duration_seconds) == (60, 890)
    # What already fits is kept, and nothing else changes.
    small = parse_config(
        {"settings": {"request_timeout_seconds": 8, "max_request_body_bytes": 4096}}
    )
    fitted = fit_to_lambda(small, {"BERRY_TIME_LIMIT_SECONDS": "25"})
    assert fitted.settings.request_timeout_seconds == 8
    assert fitted.settings.max_request_body_bytes == 4096
    assert fitted.model_dump(exclude={"settings"}) == small.model_dump(exclude={"settings"})
    assert fit_to_lambda(config, {}).settings.request_timeout_seconds == 60  # no path limit


def test_check_config_warns_about_what_lambda_cannot_fit() -> None:
    config = parse_config(
        {
            "settings": {
                "request_timeout_seconds": 60,
                "max_stream_duration_seconds": 1200,
                "max_request_body_bytes": 8 * 1024 * 1024,
            }
        }
    )
    notes = [n for n in config.warnings() if n.startswith("settings.")]
    assert len(notes) == 3
    assert "25 s" in notes[0] and "890 s" in notes[1] and str(LAMBDA_BODY_LIMIT_BYTES) in notes[2]
    fitting = parse_config({"settings": {"request_timeout_seconds": 25}})
    assert not [n for n in fitting.warnings() if n.startswith("settings.")]


@pytest.mark.parametrize(
    ("environment", "registers"),
    [
        (
            {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9", "_HANDLER": "berry_handlers.chat.handler"},
            True,
        ),
        ({"_HANDLER": "berry_handlers.chat.handler"}, False),  # not inside Lambda
        # The streaming function: its runtime client is the Web Adapter, not Python.
        (
            {
                "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9",
                "_HANDLER": "run_stream.sh",
                "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
            },
            False,
        ),
    ],
)
def test_the_extension_registers_only_in_lambdas_python_runtime(
    environment: dict[str, str], registers: bool
) -> None:
    attempts: list[str] = []

    class Refusing(lambda_extension.ExtensionsApi):
        def register(self, name: str, events: list[str]) -> None:
            attempts.append(self.address)
            raise lambda_extension.ExtensionError("refused")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lambda_extension, "_extension", [])
        patch.setattr(lambda_extension, "ExtensionsApi", Refusing)
        # A refusal is survivable: the handlers flush inside their invocations instead.
        assert lambda_extension.runtime_extension(environment) is None
    assert attempts == (["127.0.0.1:9"] if registers else [])


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_with_an_extension_tracing_starts_after_the_first_response() -> None:
    from aws_lambda_powertools.tracing import tracer as tracer_module

    extension = lambda_extension.LambdaExtension(lambda_extension.ExtensionsApi("127.0.0.1:9"))
    calls: list[str] = []

    def function(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event["n"])
        return {"statusCode": 200}

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
        patch.setattr(tracer_module, "is_cold_start", True)
        handler = instrumented(function, extension)
        assert handler({"n": "first"}, LambdaContext())["statusCode"] == 200
        (warm_up,) = extension.after_first_invocation
        warm_up()  # what the extension runs after the first response
        # The first traced call is not the container's cold start.
        assert tracer_module.is_cold_start is False
        assert handler({"n": "second"}, LambdaContext())["statusCode"] == 200
    assert calls == ["first", "second"]
