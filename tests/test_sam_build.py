"""What `sam build` makes of template.yaml, checked on the artifacts themselves: sizes,
bytecode, each function's contents, the refusal to build without a config, every function
imported and invoked from its artifact alone (fresh process, nothing written), the
streaming artifact under uvicorn, the flush at shutdown with the shipped code, and the
cold-start benchmark side by side with the naive hello-world.

Slow (two `sam build` runs, a minute or two): `make test-sam` runs it (BERRY_TEST_SAM=1).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dynamodb import shared_requests
from support import ROOT, USER_TOKEN, DemoUpstream, free_port

sys.path.insert(0, str(ROOT / "bench"))

import cold_start

pytestmark = pytest.mark.skipif(
    os.environ.get("BERRY_TEST_SAM") != "1", reason="needs `sam build` (slow): make test-sam"
)

FUNCTIONS = [target.function for target in cold_start.BERRY.values()]
STREAM = "ChatStreamFunction"
API_FUNCTIONS = ["ModelsFunction", "HealthFunction", "AdminFunction", "SmartAIFunction"]
LIMIT_BYTES = 50_000_000  # every non-streaming function, its layer included


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> tuple[list[cold_start.Result], Path]:
    """One build of everything, measured once per function (the benchmark's own run)."""
    folder = tmp_path_factory.mktemp("sam")
    results = cold_start.run(1, list(cold_start.BERRY), folder)
    return results, folder


@pytest.fixture(scope="module")
def build(benchmark) -> Path:
    return benchmark[1] / "berry"


def files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def top_level(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_the_benchmark_compares_every_function_with_the_hello_world(benchmark) -> None:
    results, _ = benchmark
    table = cold_start.table(results)
    assert table.splitlines()[2].startswith("| naive hello-world |")
    for name in cold_start.BERRY:
        assert f"| {name} |" in table
    assert all(result.samples for result in results)


def test_every_function_but_the_streaming_one_fits_in_50_mb(build: Path) -> None:
    layer = sum(path.stat().st_size for path in files(build / "AwsSdkLayer"))
    for function in [*FUNCTIONS, STREAM]:
        size = layer + sum(path.stat().st_size for path in files(build / function))
        if function != STREAM:
            assert size <= LIMIT_BYTES, (function, size)


def test_bytecode_is_shipped_and_trusted_as_it_is(build: Path) -> None:
    for folder in [*(build / f for f in FUNCTIONS), build / STREAM, build / "AwsSdkLayer"]:
        sources = [p for p in files(folder) if p.suffix == ".py"]
        assert sources, folder
        for source in sources:
            compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"
            assert compiled.exists(), source
            # PEP 552 flags: hash-based and unchecked; mtimes in a zip need not match.
            assert int.from_bytes(compiled.read_bytes()[4:8], "little") == 0b01, compiled


def test_each_function_carries_only_what_it_imports(build: Path) -> None:
    for function in FUNCTIONS:
        names = top_level(build / function)
        assert {"berry_handlers", "berry_shared", "config.toml"} <= names, function
        assert "httpx" not in names, function
        assert "botocore" not in names and "boto3" not in names  # the layer's
        assert ("uvicorn" in names) is False, function
        assert ("fastapi" in names) == (function != "ProbeFunction"), function
    for function in [*API_FUNCTIONS, "FallbackFunction"]:
        assert "aiohttp" not in top_level(build / function), function
    stream = top_level(build / STREAM)
    assert {"uvicorn", "aiohttp", "run_stream.sh"} <= stream
    assert not {"uvloop", "httptools", "watchfiles", "websockets", "httpx"} & stream
    assert os.access(build / STREAM / "run_stream.sh", os.X_OK)
    assert {"boto3", "botocore"} <= top_level(build / "AwsSdkLayer" / "python")


def test_the_sdk_layer_keeps_only_the_services_berry_calls(build: Path) -> None:
    data = build / "AwsSdkLayer" / "python" / "botocore" / "data"
    services = {path.name for path in data.iterdir() if path.is_dir()}
    assert services == {"dynamodb", "secretsmanager", "ssm", "sts", "bedrock-runtime", "xray"}
    endpoints = json.loads((data / "endpoints.json").read_text())
    for partition in endpoints["partitions"]:
        assert set(partition["services"]) <= services


def test_a_build_without_a_config_fails_and_says_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(cold_start.SAM),
            "build",
            "ChatFunction",
            "--template",
            str(ROOT / "template.yaml"),
            "--build-dir",
            str(tmp_path / "build"),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "SAM_CLI_TELEMETRY": "0",
            "PYTHON": sys.executable,
            "BERRY_CONFIG": str(tmp_path / "missing.toml"),
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "Berry's config is missing" in result.stdout + result.stderr


@pytest.fixture
def upstream() -> Iterator[DemoUpstream]:
    server = DemoUpstream().start()
    yield server
    server.stop()


def test_the_streaming_artifact_streams_under_uvicorn(
    build: Path, upstream: DemoUpstream, dynamodb_local, tmp_path: Path
) -> None:
    """What run_stream.sh starts, from the artifact and the layer alone."""
    config = tmp_path / "config.toml"
    config.write_text(cold_start.CONFIG.format(url=upstream.base_url, token=USER_TOKEN))
    port = free_port()
    paths = [str(build / STREAM), str(build / "AwsSdkLayer" / "python")]
    launcher = (
        f"import runpy, sys; sys.path[:0] = {paths!r}; "
        "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            "-B",
            "-c",
            launcher,
            "berry_handlers.chat:app",
            "--port",
            str(port),
            "--loop",
            "asyncio",
            "--http",
            "h11",
            "--log-level",
            "warning",
        ],
        env={
            "PATH": os.environ["PATH"],
            "CONFIG_PATH": str(config),
            "BERRY_TIME_LIMIT_SECONDS": "890",
            **dynamodb_local.env("berry-sam-stream"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        body = {
            "model": "demo-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {USER_TOKEN}"},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 2
    finally:
        process.terminate()
        process.wait(15)


def test_the_shipped_chat_function_flushes_at_shutdown(
    build: Path, upstream: DemoUpstream, dynamodb_local, tmp_path: Path
) -> None:
    """The flush-at-shutdown test (test_lambda_shutdown.py) on the built artifact."""
    import test_lambda_shutdown as shutdown

    paths = [build / "ChatFunction", build / "AwsSdkLayer" / "python"]
    environment = shutdown.start_environment(tmp_path, upstream, dynamodb_local.endpoint, paths)
    try:
        for _ in range(3):
            assert environment.fake.invoke(shutdown.chat_event())["statusCode"] == 200
        environment.fake.wait_frozen()
        assert shutdown.shut_down(environment) == 0, environment.output()
        assert shared_requests(environment.endpoint, environment.table, shutdown.BACKEND) == 3
    finally:
        if environment.process.poll() is None:
            environment.process.kill()
            environment.process.wait()
        environment.fake.stop()
