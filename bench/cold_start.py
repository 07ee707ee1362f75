"""Cold start of each Lambda handler module: import time and first invocation, in fresh
Python processes (as a new Lambda container would), against a demo upstream and, with
``--dynamodb``, DynamoDB Local.

    .venv/bin/python bench/cold_start.py [--runs 5] [--dynamodb]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from demo_upstream import DemoUpstream  # noqa: E402

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

# module -> (method, path, body) of the first request
ROUTES = {
    "chat": (
        "POST",
        "/v1/chat/completions",
        {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]},
    ),
    "models": ("GET", "/v1/models", None),
    "health": ("GET", "/health", None),
    "admin": ("GET", "/admin/system-stats", None),
    "smart_ai": ("GET", "/smart-ai/weights", None),
    "probe": (None, None, None),
}

CHILD = r"""
import json, sys, time
started = time.perf_counter()
import importlib
module = importlib.import_module("berry_handlers." + sys.argv[1])
imported = time.perf_counter()
method, path, body = json.loads(sys.argv[2])

class Context:
    function_name = "bench"; function_version = "$LATEST"; memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    aws_request_id = "bench"; log_group_name = "bench"; log_stream_name = "bench"
    def get_remaining_time_in_millis(self): return 30000

def event():
    if method is None:
        return {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": {"authorization": "Bearer " + sys.argv[3],
                        "content-type": "application/json", "host": "bench"},
            "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                               "sourceIp": "127.0.0.1"}, "requestId": "r", "stage": "$default"},
            "body": json.dumps(body) if body is not None else None, "isBase64Encoded": False}

import io, contextlib
with contextlib.redirect_stdout(io.StringIO()):  # EMF lines
    first = module.handler(event(), Context())
    invoked = time.perf_counter()
    module.handler(event(), Context())
    warm = time.perf_counter()
status = first.get("statusCode", 200) if isinstance(first, dict) else 200
print(json.dumps({"import_ms": (imported - started) * 1000,
                  "first_ms": (invoked - imported) * 1000,
                  "warm_ms": (warm - invoked) * 1000, "status": status}))
"""


def measure(module: str, env: dict[str, str], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        output = (
            subprocess.run(
                [sys.executable, "-c", CHILD, module, json.dumps(ROUTES[module]), TOKEN],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        samples.append(json.loads(output))
    assert all(s["status"] < 400 for s in samples), samples
    return {
        k: statistics.median(s[k] for s in samples) for k in ("import_ms", "first_ms", "warm_ms")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dynamodb", action="store_true", help="state in DynamoDB Local")
    args = parser.parse_args()
    upstream = DemoUpstream().start()
    database = None
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text(CONFIG.format(url=upstream.base_url, token=TOKEN))
        env = {**os.environ, "CONFIG_PATH": str(config), "BERRY_STATE_STORE": "memory"}
        if args.dynamodb:
            from dynamodb_local import DynamoDBLocal

            database = DynamoDBLocal().start()
            env.update(database.env("berry-bench"))
        try:
            print(f"{'handler':10} {'import ms':>10} {'first call ms':>14} {'warm call ms':>13}")
            for module in ROUTES:
                result = measure(module, env, args.runs)
                print(
                    f"{module:10} {result['import_ms']:10.0f} {result['first_ms']:14.0f} "
                    f"{result['warm_ms']:13.1f}"
                )
        finally:
            upstream.stop()
            if database is not None:
                database.stop()


if __name__ == "__main__":
    main()
