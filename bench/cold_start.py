"""Cold start from the `sam build` artifacts: Berry's functions side by side with a naive
FastAPI + Mangum hello-world built the same way.

    .venv/bin/python bench/cold_start.py [--runs 9] [--functions chat,models] [--build-dir DIR]

Both are built with `sam build`: template.yaml through src/Makefile (pinned requirements,
bytecode compiled at build time), the hello-world (app.py; requirements.txt: fastapi,
mangum) through SAM's default Python builder, which ships no bytecode. Each sample is a
fresh interpreter that sees only the artifact (Berry: plus its AWS SDK layer) and the
standard library, and writes nothing (`python -I -S -B`; the artifacts' files are compared
before and after): it imports the handler and invokes it once, as Lambda's runtime would,
then once more (warm). Berry's functions keep their state in DynamoDB Local and the chat
function calls a demo upstream; a stub of the Extensions API lets Berry register its
internal extension, as on Lambda. Samples alternate between the targets so that the
machine's noise falls on all of them alike; the medians are printed, with each function's
unpacked size.

Needs aws-sam-cli (`make sam-cli`), python3.11 on PATH (SAM's builder for the hello-world),
Java and npm for DynamoDB Local.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from demo_upstream import DemoUpstream  # noqa: E402
from dynamodb_local import DynamoDBLocal, berry_env  # noqa: E402
from lambda_events import rest_event, schedule_event  # noqa: E402

SAM = Path(os.environ.get("SAM", ROOT / ".cache/sam-venv/bin/sam"))
TOKEN = "bench-admin-token-0123456789"
CONFIG = """
[providers.demo]
name = "Demo"
base_url = "{url}"
api_key = "demo"
models = ["demo-model"]
[models.demo]
name = "demo-model"
[[models.demo.backends]]
provider = "demo"
model = "demo-model"
[users.admin]
name = "Admin"
token = "{token}"
"""

HELLO_APP = """from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"message": "hello world"}


handler = Mangum(app, lifespan="off")
"""
HELLO_TEMPLATE = """AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  HelloFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: app/
      Handler: app.handler
      Runtime: python3.11
      Architectures: [x86_64]
"""


@dataclass(frozen=True)
class Target:
    name: str
    function: str  # the logical id in its template
    handler: str
    method: str | None  # None: a scheduled event
    path: str = "/"
    body: Any = None
    env: dict[str, str] = field(default_factory=dict)


CHAT_BODY = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}
HELLO = Target("naive hello-world", "HelloFunction", "app.handler", "GET", "/hello")
BERRY = {
    "chat": Target(
        "chat",
        "ChatFunction",
        "berry_handlers.chat.handler",
        "POST",
        "/v1/chat/completions",
        CHAT_BODY,
        {"BERRY_TIME_LIMIT_SECONDS": "25"},
    ),
    "models": Target(
        "models", "ModelsFunction", "berry_handlers.models.handler", "GET", "/v1/models"
    ),
    "health": Target("health", "HealthFunction", "berry_handlers.health.handler", "GET", "/health"),
    "admin": Target(
        "admin", "AdminFunction", "berry_handlers.admin.handler", "GET", "/admin/system-stats"
    ),
    "smart_ai": Target(
        "smart_ai", "SmartAIFunction", "berry_handlers.smart_ai.handler", "GET", "/smart-ai/weights"
    ),
    "fallback": Target(
        "fallback",
        "FallbackFunction",
        "berry_handlers.fallback.handler",
        "GET",
        "/no/such/path",
        env={"BERRY_STATE_STORE": "memory"},
    ),
    "probe": Target("probe", "ProbeFunction", "berry_handlers.probe.handler", None),
}

# One sample: import the handler and invoke it twice, as Lambda's runtime would.
CHILD = r"""
import time
started, started_cpu = time.perf_counter(), time.process_time()
import importlib, io, json, sys, contextlib
paths, handler, event = json.loads(sys.argv[1])
sys.path[:0] = paths
module_name, _, attribute = handler.rpartition(".")
function = getattr(importlib.import_module(module_name), attribute)
imported = time.perf_counter()

class Context:
    function_name = "bench"; function_version = "$LATEST"; memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    log_group_name = "/aws/lambda/bench"; log_stream_name = "bench"
    def __init__(self, request_id): self.aws_request_id = request_id
    def get_remaining_time_in_millis(self): return 25000

with contextlib.redirect_stdout(io.StringIO()):  # EMF metric lines
    first = function(event, Context("first"))
    invoked, invoked_cpu = time.perf_counter(), time.process_time()
    function(event, Context("second"))
    warm = time.perf_counter()
status = first.get("statusCode", 200) if isinstance(first, dict) else 200
print(json.dumps({"import_ms": (imported - started) * 1000, "first_ms": (invoked - imported) * 1000,
                  "warm_ms": (warm - invoked) * 1000, "status": status, "modules": len(sys.modules),
                  "cpu_ms": (invoked_cpu - started_cpu) * 1000}))
"""


def target_event(target: Target) -> dict[str, Any]:
    """An API Gateway REST (payload 1.0) proxy event, or EventBridge's scheduled event."""
    if target.method is None:
        return schedule_event()
    return rest_event(target.method, target.path, target.body, token=TOKEN)


def sam_build(template: Path, build_dir: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(SAM), "build", "--template", str(template), "--build-dir", str(build_dir)],
        cwd=template.parent,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sam build {template} failed:\n{result.stdout}\n{result.stderr}")


def build_berry(build_dir: Path, config: Path) -> Path:
    """template.yaml built with the given config; returns the build directory."""
    sam_build(
        ROOT / "template.yaml", build_dir, {"BERRY_CONFIG": str(config), "PYTHON": sys.executable}
    )
    return build_dir


def build_hello(folder: Path) -> Path:
    """The naive hello-world, pinned to the FastAPI and Mangum that Berry ships."""
    pins = dict(
        line.split("==")
        for line in (ROOT / "src/requirements/chat.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    app = folder / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "app.py").write_text(HELLO_APP)
    (app / "requirements.txt").write_text(f"fastapi=={pins['fastapi']}\nmangum=={pins['mangum']}\n")
    (folder / "template.yaml").write_text(HELLO_TEMPLATE)
    sam_build(folder / "template.yaml", folder / "build", {})
    return folder / "build"


def unpacked_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def snapshot(folders: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file with its size and modification time: a write would change it."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for folder in folders
        for path in folder.rglob("*")
    }


class _ExtensionsApiStub(BaseHTTPRequestHandler):
    """Registration succeeds; the next event never comes (a sample ends before it would)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"functionName": "bench", "functionVersion": "$LATEST", "handler": "bench"}'
        self.send_response(200)
        self.send_header("Lambda-Extension-Identifier", "bench-extension")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        threading.Event().wait(3600)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@contextmanager
def extensions_api_stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ExtensionsApiStub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def sample(paths: list[Path], target: Target, env: dict[str, str]) -> dict[str, float]:
    """One cold start in a fresh process that sees only ``paths`` and the standard library."""
    argument = json.dumps([[str(p) for p in paths], target.handler, target_event(target)])
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", CHILD, argument],
        env={**env, **target.env, "_HANDLER": target.handler},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{target.name} failed:\n{result.stderr[-3000:]}")
    measured: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    if measured["status"] >= 500 or (target is not BERRY["fallback"] and measured["status"] >= 400):
        raise RuntimeError(f"{target.name} answered {measured['status']}")
    return measured


def lambda_environment(function: str, runtime_api: str, task_root: Path) -> dict[str, str]:
    """What Lambda sets (the part the handlers read), without this machine's environment."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "LAMBDA_TASK_ROOT": str(task_root),
        "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f;Sampled=1",
        "CONFIG_PATH": str(task_root / "config.toml"),
        "POWERTOOLS_SERVICE_NAME": "berry",
        "POWERTOOLS_METRICS_NAMESPACE": "Berry",
        "LOG_LEVEL": "WARNING",
    }


@dataclass
class Result:
    target: Target
    samples: list[dict[str, float]]
    size: int

    def median(self, key: str) -> float:
        return statistics.median(s[key] for s in self.samples)

    def total(self) -> float:
        return statistics.median(s["import_ms"] + s["first_ms"] for s in self.samples)


def run(runs: int, functions: list[str], build_dir: Path | None) -> list[Result]:
    upstream = DemoUpstream().start()
    database = DynamoDBLocal().start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folder = build_dir or Path(scratch)
            config = folder / "config.toml"
            folder.mkdir(parents=True, exist_ok=True)
            config.write_text(CONFIG.format(url=upstream.base_url, token=TOKEN))
            berry = build_berry(folder / "berry", config)
            hello = build_hello(folder / "hello")
            layer = berry / "AwsSdkLayer" / "python"
            targets = [(HELLO, [hello / HELLO.function])] + [
                (BERRY[name], [berry / BERRY[name].function, layer]) for name in functions
            ]
            before = snapshot([hello, berry])
            results = {target.name: Result(target, [], 0) for target, _ in targets}
            with extensions_api_stub() as runtime_api:
                for index in range(runs + 1):  # the first round warms caches: not counted
                    for target, paths in targets:
                        env = lambda_environment(target.function, runtime_api, paths[0])
                        if target is not HELLO:
                            env.update(berry_env(database.endpoint, "berry-bench"))
                            env["BERRY_STATE_STORE"] = "dynamodb"
                        measured = sample(paths, target, env)
                        if index:
                            results[target.name].samples.append(measured)
            if snapshot([hello, berry]) != before:
                raise RuntimeError("a sample wrote into a build artifact")
            for target, paths in targets:
                results[target.name].size = sum(unpacked_bytes(p) for p in paths)
            return list(results.values())
    finally:
        upstream.stop()
        database.stop()


def table(results: list[Result]) -> str:
    hello = results[0]
    lines = [
        "| function | import ms | first invocation ms | import + first ms | vs hello-world "
        "| CPU ms (import + first) | warm ms | unpacked MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.target.name} | {result.median('import_ms'):.0f} "
            f"| {result.median('first_ms'):.0f} | {result.total():.0f} "
            f"| {result.total() / hello.total():.2f}x | {result.median('cpu_ms'):.0f} "
            f"| {result.median('warm_ms'):.1f} "
            f"| {result.size / 1e6:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9, help="samples per function (median)")
    parser.add_argument(
        "--functions", default="chat", help=f"comma-separated, or 'all': {', '.join(BERRY)}"
    )
    parser.add_argument("--build-dir", type=Path, help="keep the builds here (default: a temp dir)")
    args = parser.parse_args()
    functions = list(BERRY) if args.functions == "all" else args.functions.split(",")
    unknown = set(functions) - set(BERRY)
    if unknown:
        parser.error(f"unknown function(s): {', '.join(sorted(unknown))}")
    results = run(args.runs, functions, args.build_dir)
    print(f"median of {args.runs} fresh processes each; sizes include the AWS SDK layer")
    print(table(results))


if __name__ == "__main__":
    main()
