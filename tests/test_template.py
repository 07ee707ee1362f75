"""template.yaml: cfn-lint, the SAM transform, and that it wires what the handlers expect."""

from __future__ import annotations

import copy
import importlib
import json
import subprocess
from typing import Any

import pytest
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from support import ROOT

TEMPLATE = ROOT / "template.yaml"
ROUTE_GROUPS = {
    "ChatFunction": ("berry_handlers.chat.handler", {("POST", "/v1/chat/completions")}),
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
        {("GET", f"/admin/{p}") for p in ("model-weights", "backend-health", "system-stats")},
    ),
    "SmartAIFunction": (
        "berry_handlers.smart_ai.handler",
        {("GET", "/smart-ai/weights"), ("GET", "/smart-ai/models/{proxy+}")},
    ),
}
WRITERS = {"ChatFunction", "ChatStreamFunction", "ProbeFunction"}


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
    # What `sam package` does: the local CodeUri becomes the uploaded artifact's S3 URI.
    packaged["Globals"]["Function"]["CodeUri"] = "s3://berry-artifacts/berry.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        return transform(packaged, {}, NoManagedPolicies())


def test_cfn_lint_passes() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/cfn-lint"), str(TEMPLATE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_function_per_route_group_with_only_its_routes(source, transformed) -> None:
    resources = source["Resources"]
    for name, (handler, routes) in ROUTE_GROUPS.items():
        function = resources[name]["Properties"]
        assert function["Handler"] == handler
        declared = {
            (event["Properties"]["Method"].upper(), event["Properties"]["Path"])
            for event in function["Events"].values()
        }
        assert declared == routes, name
    # After the transform every route reaches exactly the function of its group.
    body = next(
        r["Properties"]["Body"]
        for r in transformed["Resources"].values()
        if r["Type"] == "AWS::ApiGateway::RestApi"
    )
    owners: dict[tuple[str, str], str] = {}
    for path, methods in body["paths"].items():
        for method, spec in methods.items():
            uri = json.dumps(spec["x-amazon-apigateway-integration"]["uri"])
            owner = next(n for n in ROUTE_GROUPS if f"{n}.Arn" in uri)
            owners[(method.upper(), path)] = owner
    assert owners == {route: n for n, (_, routes) in ROUTE_GROUPS.items() for route in routes}


@pytest.mark.parametrize(
    "handler",
    [h for h, _ in ROUTE_GROUPS.values()] + ["berry_handlers.probe.handler"],
)
def test_every_handler_in_the_template_exists(handler: str) -> None:
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


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
        source["Resources"]["WriteStatePolicy"]["Properties"]["PolicyDocument"]["Statement"][0][
            "Action"
        ]
    )
    assert "dynamodb:UpdateItem" in write_actions
    for name in [*ROUTE_GROUPS, "ChatStreamFunction", "ProbeFunction"]:
        role = resources[f"{name}Role"]["Properties"]
        attached = json.dumps(role["ManagedPolicyArns"])
        assert "ReadStatePolicy" in attached
        assert ("WriteStatePolicy" in attached) == (name in WRITERS), name
        assert "dynamodb:*" not in json.dumps(role)


def test_probe_runs_on_a_schedule(transformed) -> None:
    rules = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
    assert len(rules) == 1
    assert rules[0]["Properties"]["ScheduleExpression"] == {"Ref": "ProbeSchedule"}


def test_streaming_chat_runs_under_lambda_web_adapter(source, transformed) -> None:
    function = source["Resources"]["ChatStreamFunction"]["Properties"]
    env = function["Environment"]["Variables"]
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert "LambdaAdapterLayer" in json.dumps(function["Layers"])
    url = transformed["Resources"]["ChatStreamFunctionUrl"]["Properties"]
    assert url["InvokeMode"] == "RESPONSE_STREAM"
    script = ROOT / "src" / function["Handler"]
    assert script.stat().st_mode & 0o111, "run_stream.sh must be executable"
    assert "berry_handlers.chat:app" in script.read_text()


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


def test_outputs_give_the_client_base_urls(source) -> None:
    outputs = source["Outputs"]
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].endswith("/${Stage}/v1")
    assert "ChatStreamFunctionUrl.FunctionUrl" in outputs["StreamingUrl"]["Value"]["Fn::Sub"]
