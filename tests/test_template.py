"""template.yaml: cfn-lint, the SAM transform, and that it wires what the handlers expect:
routes, the catch-all, streaming, timeouts, concurrency and throttles, the build, the Web
Adapter, permissions."""

from __future__ import annotations

import copy
import importlib
import json
import re
import subprocess
from typing import Any

import pytest
from fastapi.routing import APIRoute
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from berry_handlers.serverless import LAMBDA_BODY_LIMIT_BYTES
from support import ROOT

TEMPLATE = ROOT / "template.yaml"
ROUTE_GROUPS = {
    "ChatFunction": ("berry_handlers.chat.handler", {("POST", "/v1/chat/completions")}),
    "ChatStreamFunction": ("run_stream.sh", {("POST", "/stream/v1/chat/completions")}),
    "ModelsFunction": (
        "berry_handlers.models.handler",
        {("GET", "/v1/models"), ("GET", "/models")},
    ),
    "HealthFunction": (
        "berry_handlers.health.handler",
        {("GET", p) for p in ("/", "/health", "/v1/health", "/metrics", "/prometheus")},
    ),
    "AdminFunction": (
        "berry_handlers.admin.handler",
        {
            ("GET", f"/admin/{p}")
            for p in (
                "model-weights",
                "backend-health",
                "system-stats",
                "usage",
                "rate-limit-usage",
            )
        },
    ),
    "SmartAIFunction": (
        "berry_handlers.smart_ai.handler",
        {("GET", "/smart-ai/weights"), ("GET", "/smart-ai/models/{proxy+}")},
    ),
}
FUNCTIONS = [*ROUTE_GROUPS, "FallbackFunction", "ProbeFunction"]
WRITERS = {"ChatFunction", "ChatStreamFunction", "ProbeFunction"}
API_GATEWAY_LIMIT_SECONDS = 29
LAMBDA_LIMIT_SECONDS = 900
ACCOUNT_CONCURRENCY = 1000  # an account's default quota; 100 must stay unreserved


class NoManagedPolicies:
    """The transform asks IAM for AWS-managed policy ARNs; this template names none."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return yaml_parse(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def transformed(source: dict[str, Any]) -> dict[str, Any]:
    packaged = copy.deepcopy(source)
    # What `sam package` does: local code becomes the uploaded artifacts' S3 URIs.
    packaged["Globals"]["Function"]["CodeUri"] = "s3://berry-artifacts/berry.zip"
    packaged["Resources"]["AwsSdkLayer"]["Properties"]["ContentUri"] = "s3://berry-artifacts/sdk"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        return transform(packaged, {}, NoManagedPolicies())


@pytest.fixture(scope="module")
def api_body(transformed: dict[str, Any]) -> dict[str, Any]:
    return next(
        r["Properties"]["Body"]
        for r in transformed["Resources"].values()
        if r["Type"] == "AWS::ApiGateway::RestApi"
    )


def properties(source: dict[str, Any], name: str) -> dict[str, Any]:
    return source["Resources"][name]["Properties"]


def environment(source: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        **source["Globals"]["Function"]["Environment"]["Variables"],
        **properties(source, name).get("Environment", {}).get("Variables", {}),
    }


def integrations(api_body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path, methods in api_body["paths"].items():
        for method, spec in methods.items():
            verb = "ANY" if method == "x-amazon-apigateway-any-method" else method.upper()
            found[(verb, path)] = spec["x-amazon-apigateway-integration"]
    return found


def owner(integration: dict[str, Any]) -> str:
    uri = json.dumps(integration["uri"])
    return next(name for name in FUNCTIONS if f"{name}.Arn" in uri)


def test_cfn_lint_passes() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/cfn-lint"), str(TEMPLATE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_function_per_route_group_with_only_its_routes(source, api_body) -> None:
    for name, (handler, routes) in ROUTE_GROUPS.items():
        function = properties(source, name)
        assert function["Handler"] == handler
        declared = {
            (event["Properties"]["Method"].upper(), event["Properties"]["Path"])
            for event in function["Events"].values()
        }
        assert declared == routes, name
    # After the transform every route reaches exactly the function of its group.
    served = {
        route: owner(integration)
        for route, integration in integrations(api_body).items()
        if route[0] != "ANY"
    }
    assert served == {route: n for n, (_, routes) in ROUTE_GROUPS.items() for route in routes}


def test_the_template_routes_exactly_the_routers_routes() -> None:
    """A route added to a router without the template (or the reverse) would 404 on AWS."""
    from berry_handlers import admin, chat, health, models, smart_ai

    routers = {
        (method, route.path.replace("{model:path}/weights", "{proxy+}"))
        for module in (admin, chat, health, models, smart_ai)
        for route in module.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    template = {route for n, (_, routes) in ROUTE_GROUPS.items() for route in routes}
    streaming = {("POST", "/stream/v1/chat/completions")}
    assert routers == template - streaming


def test_every_path_and_method_reaches_a_berry_function(source, api_body) -> None:
    """No request meets API Gateway's own 403 "Missing Authentication Token": every
    resource, including the intermediate ones, has an ANY for the catch-all function."""
    found = integrations(api_body)
    resources = {"/"}
    for path in api_body["paths"]:
        parts = path.strip("/").split("/")
        resources |= {"/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    for resource in resources:
        assert owner(found[("ANY", resource)]) == "FallbackFunction", resource
    assert owner(found[("ANY", "/{proxy+}")]) == "FallbackFunction"
    assert properties(source, "FallbackFunction")["Handler"] == "berry_handlers.fallback.handler"
    # It needs the config (CORS origins), never the shared state.
    assert environment(source, "FallbackFunction")["BERRY_STATE_STORE"] == "memory"


@pytest.mark.parametrize(
    "handler",
    [h for h, _ in ROUTE_GROUPS.values() if h.startswith("berry_handlers.")]
    + ["berry_handlers.probe.handler", "berry_handlers.fallback.handler"],
)
def test_every_handler_in_the_template_exists(handler: str) -> None:
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_streaming_goes_through_api_gateway_response_streaming(source, transformed, api_body):
    """The Function URL is gone: the stream route is API Gateway's (throttled, same
    catch-all), streamed with InvokeWithResponseStream for up to Lambda's 15 minutes."""
    stream = integrations(api_body)[("POST", "/stream/v1/chat/completions")]
    assert stream["responseTransferMode"] == "STREAM"
    assert "/2021-11-15/functions/" in json.dumps(stream["uri"])
    assert json.dumps(stream["uri"]).endswith('/response-streaming-invocations"}')
    assert stream["timeoutInMillis"] == LAMBDA_LIMIT_SECONDS * 1000
    buffered = integrations(api_body)[("POST", "/v1/chat/completions")]
    assert "responseTransferMode" not in buffered
    types = {r["Type"] for r in transformed["Resources"].values()}
    assert "AWS::Lambda::Url" not in types
    assert "FunctionUrlConfig" not in properties(source, "ChatStreamFunction")
    outputs = source["Outputs"]
    assert outputs["StreamingUrl"]["Value"]["Fn::Sub"].endswith("/${Stage}/stream/v1")
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].endswith("/${Stage}/v1")


def test_streaming_chat_runs_under_a_current_lambda_web_adapter(source) -> None:
    function = properties(source, "ChatStreamFunction")
    env = environment(source, "ChatStreamFunction")
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert env["AWS_LWA_REMOVE_BASE_PATH"] == "/stream"
    assert env["AWS_LWA_READINESS_CHECK_PROTOCOL"] == "tcp"
    # Removed in Lambda Web Adapter 1.0; non-prefixed names are deprecated.
    assert "AWS_LWA_READINESS_CHECK_MIN_UNHEALTHY_STATUS" not in env
    assert all(
        name.startswith(("AWS_", "BERRY_", "POWERTOOLS_", "CONFIG_", "LOG_")) for name in env
    )
    script = ROOT / "src" / function["Handler"]
    assert script.stat().st_mode & 0o111, "run_stream.sh must be executable"
    text = script.read_text()
    assert "berry_handlers.chat:app" in text and "/opt/python" in text


def test_web_adapter_layer_exists_in_the_partition_it_names(source) -> None:
    (layer,) = [
        layer for layer in properties(source, "ChatStreamFunction")["Layers"] if "Fn::If" in layer
    ]
    text = json.dumps(layer)
    # v1.1.0 everywhere; the standard partition by name, never ${AWS::Partition}, which would
    # name layers that do not exist (the publisher's account lives in one partition).
    assert "${AWS::Partition}" not in text
    assert re.findall(r"LambdaAdapterLayerX86:(\d+)", text) == ["30", "30", "30"]
    assert "arn:aws:lambda:${AWS::Region}:753240598075:layer" in text
    assert "arn:aws-cn:lambda:cn-north-1:041581134020:layer" in text
    assert "arn:aws-cn:lambda:cn-northwest-1:069767869989:layer" in text
    assert source["Parameters"]["LambdaWebAdapterLayerArn"]["Default"] == ""
    rule = source["Rules"]["WebAdapterLayerExists"]
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Contains": [["aws", "aws-cn"], {"Ref": "AWS::Partition"}]
    }


def test_timeouts_fit_the_path_each_function_serves(source, api_body) -> None:
    chat_limit = float(environment(source, "ChatFunction")["BERRY_TIME_LIMIT_SECONDS"])
    chat_timeout = properties(source, "ChatFunction")["Timeout"]
    # Berry's own 504 comes before API Gateway's, and Lambda does not kill it before that.
    assert chat_limit + 2 <= chat_timeout < API_GATEWAY_LIMIT_SECONDS
    assert "timeoutInMillis" not in integrations(api_body)[("POST", "/v1/chat/completions")]
    stream_limit = float(environment(source, "ChatStreamFunction")["BERRY_TIME_LIMIT_SECONDS"])
    stream_timeout = properties(source, "ChatStreamFunction")["Timeout"]
    assert stream_limit + 5 <= stream_timeout == LAMBDA_LIMIT_SECONDS
    # The numbers `berry check-config` warns about (berry_shared.config.Config.warnings).
    assert (chat_limit, stream_limit) == (25, 890)
    for name in FUNCTIONS:
        if name not in ("ChatFunction", "ChatStreamFunction"):
            assert "BERRY_TIME_LIMIT_SECONDS" not in environment(source, name), name


def test_the_config_is_bundled_and_secrets_are_not(source) -> None:
    env = source["Globals"]["Function"]["Environment"]["Variables"]
    assert env["CONFIG_PATH"] == "/var/task/config.toml"
    assert "ConfigFile" not in source["Parameters"]
    assert LAMBDA_BODY_LIMIT_BYTES < 6 * 1024 * 1024


def test_reserved_concurrency_and_throttles_derive_from_parameters(source, transformed) -> None:
    parameters = source["Parameters"]

    def default(name: str) -> float:
        return float(parameters[name]["Default"])

    reserved = {}
    for name in FUNCTIONS:
        setting = properties(source, name)["ReservedConcurrentExecutions"]
        condition, value, unreserved = setting["Fn::If"]
        assert (condition, unreserved) == ("Reserve", {"Ref": "AWS::NoValue"}), name
        reserved[name] = value if isinstance(value, int) else default(value["Ref"])
    assert reserved["ProbeFunction"] == 1  # rounds must not overlap
    assert sum(reserved.values()) <= ACCOUNT_CONCURRENCY - 100
    assert parameters["ReserveConcurrency"]["AllowedValues"] == ["true", "false"]

    stage = next(
        r["Properties"]
        for r in transformed["Resources"].values()
        if r["Type"] == "AWS::ApiGateway::Stage"
    )
    settings = {(s["ResourcePath"], s["HttpMethod"]): s for s in stage["MethodSettings"]}
    # Throughput a route may take = its concurrency / seconds per request; burst = concurrency.
    for (path, method), (concurrency, rate, seconds) in {
        ("/~1v1~1chat~1completions", "POST"): (
            "ChatReservedConcurrency",
            "ChatRequestsPerSecond",
            10,
        ),
        ("/~1stream~1v1~1chat~1completions", "POST"): (
            "StreamReservedConcurrency",
            "StreamRequestsPerSecond",
            25,
        ),
        ("/*", "*"): ("ReadReservedConcurrency", "ReadRequestsPerSecond", 0.1),
    }.items():
        setting = settings[(path, method)]
        assert setting["ThrottlingBurstLimit"] == {"Ref": concurrency}
        assert setting["ThrottlingRateLimit"] == {"Ref": rate}
        assert default(rate) * seconds <= default(concurrency)
    for path, _ in settings:  # each names a real resource (~1 encodes "/")
        assert path == "/*" or path.replace("~1", "/")[1:] in transformed_paths(transformed)


def transformed_paths(transformed: dict[str, Any]) -> set[str]:
    body = next(
        r["Properties"]["Body"]
        for r in transformed["Resources"].values()
        if r["Type"] == "AWS::ApiGateway::RestApi"
    )
    return set(body["paths"])


def test_api_gateways_own_answers_are_openai_shaped(api_body) -> None:
    responses = api_body["x-amazon-apigateway-gateway-responses"]
    assert {
        "DEFAULT_4XX",
        "DEFAULT_5XX",
        "THROTTLED",
        "REQUEST_TOO_LARGE",
        "INTEGRATION_TIMEOUT",
        "MISSING_AUTHENTICATION_TOKEN",
    } <= set(responses)
    for kind, response in responses.items():
        template = response["responseTemplates"]["application/json"]
        # What API Gateway substitutes: messageString is a quoted JSON string.
        body = json.loads(
            template.replace(
                "$context.error.messageString", '"Missing Authentication Token"'
            ).replace("$context.error.responseType", "DEFAULT_4XX")
        )
        assert set(body) == {"error"}, kind
        assert set(body["error"]) == {"message", "type", "param", "code"}, kind
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["statusCode"] == "404"
    throttled = responses["THROTTLED"]
    assert throttled["responseParameters"]["gatewayresponse.header.Retry-After"] == "'1'"
    assert "rate_limit" in throttled["responseTemplates"]["application/json"]


def test_every_function_is_built_by_the_makefile(source) -> None:
    built = [
        name
        for name, resource in source["Resources"].items()
        if resource["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    ]
    assert sorted(built) == sorted([*FUNCTIONS, "AwsSdkLayer"])
    for name in built:
        assert source["Resources"][name]["Metadata"]["BuildMethod"] == "makefile", name
        # What `sam build` runs (dry run: make only checks that the target exists).
        dry_run = subprocess.run(
            ["make", "-n", "-C", str(ROOT / "src"), f"build-{name}", "ARTIFACTS_DIR=/nonexistent"],
            capture_output=True,
            text=True,
        )
        assert dry_run.returncode == 0, dry_run.stderr
    assert source["Globals"]["Function"]["Layers"] == [{"Ref": "AwsSdkLayer"}]
    layer = properties(source, "AwsSdkLayer")
    assert layer["CompatibleRuntimes"] == [source["Globals"]["Function"]["Runtime"]]


def test_state_table_has_ttl_and_the_keys_the_store_uses(source) -> None:
    table = source["Resources"]["StateTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]
    env = source["Globals"]["Function"]["Environment"]["Variables"]
    assert env["BERRY_STATE_STORE"] == "dynamodb"
    assert env["BERRY_STATE_TABLE"] == {"Ref": "StateTable"}


def test_least_privilege(source, transformed) -> None:
    resources = transformed["Resources"]
    write_actions = set(
        properties(source, "WriteStatePolicy")["PolicyDocument"]["Statement"][0]["Action"]
    )
    assert "dynamodb:UpdateItem" in write_actions
    bedrock = properties(source, "BedrockPolicy")["PolicyDocument"]["Statement"][0]
    assert bedrock["Action"] == ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
    assert bedrock["Resource"] == {"Ref": "BedrockModelArns"}
    assert source["Resources"]["BedrockPolicy"]["Condition"] == "HasBedrockModels"
    assert source["Parameters"]["BedrockModelArns"]["Default"] == ""
    for name in FUNCTIONS:
        role = resources[f"{name}Role"]["Properties"]
        attached = json.dumps(role["ManagedPolicyArns"])
        assert "ReadStatePolicy" in attached
        assert ("WriteStatePolicy" in attached) == (name in WRITERS), name
        assert ("BedrockPolicy" in attached) == (name in WRITERS), name
        assert "dynamodb:*" not in json.dumps(role)


def test_probe_runs_on_a_schedule(transformed) -> None:
    rules = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
    assert len(rules) == 1
    assert rules[0]["Properties"]["ScheduleExpression"] == {"Ref": "ProbeSchedule"}


def test_no_secret_in_plain_text(source) -> None:
    assert "sk-" not in TEMPLATE.read_text()
    environments = [source["Globals"]["Function"]["Environment"]["Variables"]] + [
        r["Properties"].get("Environment", {}).get("Variables", {})
        for r in source["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    ]
    for variables in environments:
        for name in variables:
            # Secrets arrive at run time from Secrets Manager / SSM, named by these two only.
            if any(word in name for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
                assert name == "BERRY_SECRETS_ID", name
    parameters = source["Parameters"]
    assert parameters["SecretsId"]["Default"] == "" and parameters["SsmPath"]["Default"] == ""


def test_the_flush_extension_is_for_the_python_runtime_only(source) -> None:
    """The internal extension registers where ``_HANDLER`` names a Berry handler; under the
    Web Adapter the handler is a script and uvicorn flushes on its own shutdown."""
    assert properties(source, "ChatFunction")["Handler"].startswith("berry_handlers.")
    assert not properties(source, "ChatStreamFunction")["Handler"].startswith("berry_handlers.")


def test_the_fleet_size_reaches_the_store(source: dict[str, Any]) -> None:
    """The DynamoDB store spreads its counters over FleetSize / 2 shards."""
    assert source["Parameters"]["FleetSize"]["Default"] == 100
    variables = source["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["BERRY_STATE_FLEET_SIZE"] == {"Ref": "FleetSize"}
