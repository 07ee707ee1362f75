"""The `berry` console script as a real subprocess: `check-config`, where `serve` listens, its
access log, and `make demo` (local/run-demo.sh) with its usual ports taken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from berry_handlers.server import parse_bind_address
from support import free_port

ROOT = Path(__file__).resolve().parents[1]
_VENV_BERRY = ROOT / ".venv" / "bin" / "berry"
BERRY = str(_VENV_BERRY if _VENV_BERRY.exists() else Path(sys.executable).parent / "berry")
EXAMPLE = ROOT / "local" / "config.example.toml"

API_KEY = "sk-live-SECRET-cli-provider-key-42"
TOKEN = "berry-SECRET-cli-user-token-0042"

GOOD = f"""
[providers.openai]
name = "OpenAI"
base_url = "https://api.openai.com"
api_key = "${{BERRY_CLI_TEST_KEY:-{API_KEY}}}"
models = ["gpt-4o", "gpt-4o-mini"]

[providers.azure]
name = "Azure"
base_url = "https://azure.example.com/v1"
api_key = "sk-azure-key"
models = ["gpt-4o"]

[models.gpt4o]
name = "gpt-4o"

[[models.gpt4o.backends]]
provider = "openai"
model = "gpt-4o"

[[models.gpt4o.backends]]
provider = "azure"
model = "gpt-4o"

[models.mini]
name = "gpt-4o-mini"
strategy = "round_robin"

[[models.mini.backends]]
provider = "openai"
model = "gpt-4o-mini"

[users.alice]
name = "Alice"
token = "{TOKEN}"

[users.bob]
name = "Bob"
token = "berry-bob-token-0123456789"
allowed_models = ["gpt-4o"]

[users.carol]
name = "Carol"
token = "berry-carol-token-0123456789"
enabled = false
"""

BAD = f"""
[settings]
max_retrys = 3

[providers.openai]
name = "OpenAI"
base_url = "https://api.openai.com/v1"
api_key = "{API_KEY}"
models = ["gpt-4o"]
headers = {{ Authorization = "Bearer {API_KEY}" }}

[models.gpt4o]
name = "gpt-4o"

[[models.gpt4o.backends]]
provider = "openai"
model = "gpt-4o"
weight = 0

[users.alice]
name = "Alice"
token = "{TOKEN} with spaces"
"""

BAD_PROBLEMS = [
    "settings.max_retrys: unknown key",
    "providers.openai.headers: header 'Authorization' is set by Berry and cannot be overridden",
    "models.gpt4o.backends[0].weight: Input should be greater than 0",
    "users.alice.token: String should match pattern '^[\\x21-\\x7e]+$'",
]


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "BERRY_CLI_TEST_KEY")
    }
    environ.update(env)
    return subprocess.run(
        [BERRY, "check-config", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(GOOD, encoding="utf-8")
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD, encoding="utf-8")
    return path


def test_good_file_exits_0_with_summary_and_warning(good: Path, tmp_path: Path) -> None:
    result = run(str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{good}: OK - 2 providers, 2 models, 3 users\n"
    assert result.stderr == (
        "warning: models.mini.strategy: 'round_robin' is routed with smart_ai "
        "(Berry's only strategy)\n"
    )
    assert API_KEY not in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_bad_file_exits_1_with_every_problem_and_no_secret(bad: Path, tmp_path: Path) -> None:
    result = run(str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"{bad}: 4 problem(s)"
    assert sorted(line.strip() for line in lines[1:]) == sorted(BAD_PROBLEMS)
    assert all(line.startswith("  ") for line in lines[1:])
    assert "SECRET" not in result.stderr
    assert API_KEY not in result.stderr
    assert TOKEN not in result.stderr


def test_unset_variable_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text(GOOD.replace(f":-{API_KEY}", ""), encoding="utf-8")
    result = run(str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: 1 problem(s)",
        "  providers.openai.api_key: environment variable BERRY_CLI_TEST_KEY is not set",
    ]
    ok = run(str(path), cwd=tmp_path, BERRY_CLI_TEST_KEY="sk-from-env")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"{path}: OK - 2 providers, 2 models, 3 users\n"
    assert "sk-from-env" not in ok.stdout + ok.stderr


def test_config_path_env_is_the_fallback(good: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run(cwd=elsewhere, CONFIG_PATH=str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{good}: OK - 2 providers, 2 models, 3 users\n"


def test_explicit_path_wins_over_config_path(good: Path, bad: Path, tmp_path: Path) -> None:
    result = run(str(good), cwd=tmp_path, CONFIG_PATH=str(bad))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: OK")


def test_cwd_config_toml_is_the_last_fallback(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD, encoding="utf-8")
    result = run(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config.toml: OK - 2 providers, 2 models, 3 users\n"


def test_missing_file_exits_1(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)  # no argument, no CONFIG_PATH, no ./config.toml
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "config.toml: 1 problem(s)",
        "  cannot read the file: No such file or directory",
    ]


def test_example_config_is_ok(tmp_path: Path) -> None:
    result = run(str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{EXAMPLE}: OK - 2 providers, 3 models, 2 users\n"
    assert result.stderr == ""


# -- berry serve: where it listens ----------------------------------------------------------

GUIDE_TOKEN = "berry-admin-token-12345"  # Berry API's usage guide; the example config has it
GUIDE_PORT = 3000


def minimal_config(path: Path) -> Path:
    """A config whose one backend is never called: these tests only ask /v1/health."""
    path.write_text(GOOD.replace(f"${{BERRY_CLI_TEST_KEY:-{API_KEY}}}", API_KEY), encoding="utf-8")
    return path


def hold_port(port: int) -> socket.socket | None:
    """Listen on ``port`` so that nobody else can; None when somebody already does."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


@contextmanager
def serving(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`berry serve` as given (no address added), stopped and reaped afterwards."""
    environ = {k: v for k, v in os.environ.items() if k not in ("BIND_ADDRESS", "CONFIG_PATH")}
    process = subprocess.Popen(
        [BERRY, "serve", "--config", str(config), "--no-probes", *args],
        env={**environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def answers(url: str, process: subprocess.Popen[str], timeout: float = 30) -> bool:
    """Whether ``url``/v1/health answers before the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
        except httpx.TransportError:
            if process.poll() is not None:
                return False
            time.sleep(0.05)
    return False


def test_bind_address_is_host_colon_port() -> None:
    assert parse_bind_address("127.0.0.1:3000") == ("127.0.0.1", 3000)
    assert parse_bind_address(" 0.0.0.0:8080 ") == ("0.0.0.0", 8080)
    assert parse_bind_address("localhost:1") == ("localhost", 1)
    assert parse_bind_address("[::1]:3000") == ("::1", 3000)
    for bad in ("3000", "127.0.0.1", "127.0.0.1:", ":3000", "host:http", "host:70000"):
        with pytest.raises(ValueError, match="BIND_ADDRESS must be host:port"):
            parse_bind_address(bad)


def test_serve_listens_on_127_0_0_1_3000_by_default(tmp_path: Path) -> None:
    config = minimal_config(tmp_path / "config.toml")
    with serving(config) as process:
        if answers(f"http://127.0.0.1:{GUIDE_PORT}", process):
            process.terminate()
            output = process.communicate(timeout=20)[0]
            assert f"on http://127.0.0.1:{GUIDE_PORT}" in output
            return
        # Port 3000 was taken by someone else (another test, a demo): the default still shows.
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 1, output
    assert f"cannot start: Berry could not listen on 127.0.0.1:{GUIDE_PORT}" in output


def test_bind_address_is_honoured_and_host_and_port_flags_win(tmp_path: Path) -> None:
    config = minimal_config(tmp_path / "config.toml")
    env_port, flag_port = free_port(), free_port()
    with serving(config, env={"BIND_ADDRESS": f"127.0.0.1:{env_port}"}) as process:
        assert answers(f"http://127.0.0.1:{env_port}", process)
    with serving(
        config, "--port", str(flag_port), env={"BIND_ADDRESS": f"127.0.0.2:{env_port}"}
    ) as process:
        # --port wins over the port, the host still comes from BIND_ADDRESS.
        assert answers(f"http://127.0.0.2:{flag_port}", process)
    with serving(
        config, "--host", "127.0.0.1", env={"BIND_ADDRESS": f"127.0.0.2:{env_port}"}
    ) as process:
        assert answers(f"http://127.0.0.1:{env_port}", process)


def test_a_bad_bind_address_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    config = minimal_config(tmp_path / "config.toml")
    with serving(config, env={"BIND_ADDRESS": "localhost"}) as process:
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 1
    assert output.strip() == (
        "cannot start: BIND_ADDRESS must be host:port (e.g. 127.0.0.1:3000), not 'localhost'"
    )


def test_a_taken_port_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    config = minimal_config(tmp_path / "config.toml")
    holder = hold_port(port := free_port())
    assert holder is not None
    with holder, serving(config, "--port", str(port)) as process:
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 1
    assert f"cannot start: Berry could not listen on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


# -- berry serve --access-log ---------------------------------------------------------------


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_access_log_redacts_query_string_values(tmp_path: Path, parser: str) -> None:
    config = minimal_config(tmp_path / "config.toml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    secret = "sk-SECRET-in-a-query-string-0042"
    with serving(config, "--port", str(port), "--http", parser, "--access-log") as process:
        assert answers(url, process)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        httpx.get(f"{url}/v1/models?key={secret}&limit=5", headers=headers, timeout=10)
        httpx.get(f"{url}/health?{secret}", timeout=10)
        httpx.get(f"{url}/metrics", timeout=10)
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert secret not in output
    assert '"GET /v1/models?key=[redacted]&limit=[redacted] HTTP/1.1" 200' in output
    assert '"GET /health?[redacted] HTTP/1.1" 200' in output
    assert '"GET /metrics HTTP/1.1" 200' in output


# -- make demo (local/run-demo.sh) ----------------------------------------------------------

DEMO = ROOT / "local" / "run-demo.sh"


@contextmanager
def demo(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """local/run-demo.sh in its own process group, which is stopped whatever happens."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BIND_ADDRESS", "PORT", "DEMO_A_PORT", "DEMO_B_PORT", "CONFIG_PATH")
    }
    venv = ROOT / ".venv" / "bin"
    process = subprocess.Popen(
        [str(DEMO)],
        env={**environ, "PYTHON": str(venv / "python"), "BERRY": BERRY, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # what Ctrl-C or `kill` would do
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def read_lines_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """The script's output lines up to the one starting with ``marker`` (bounded in time)."""
    assert process.stdout is not None
    lines: list[str] = []
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.strip().startswith(marker):
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"no {marker!r} line in:\n" + "\n".join(lines))


def test_demo_works_with_its_usual_ports_taken() -> None:
    held = [hold_port(port) for port in (9001, 9002, GUIDE_PORT)]  # None: taken already
    try:
        with demo({}) as process:
            lines = read_lines_until(process, "Ctrl-C stops", timeout=60)
            where = {
                line.split()[0]: line.split()[1]
                for line in lines
                if line.startswith("  ") and len(line.split()) > 1
            }
            berry_url = where["Berry"]
            assert berry_url != f"http://127.0.0.1:{GUIDE_PORT}"  # 3000 is taken
            for name in ("demo-a", "demo-b"):
                assert where[name].removesuffix("/v1").rsplit(":", 1)[1] not in ("9001", "9002")
            assert any("port 3000 was not used" in line for line in lines)
            # Berry API's usage-guide example, unchanged but for the port.
            client = OpenAI(base_url=f"{berry_url}/v1", api_key=GUIDE_TOKEN, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4", messages=[{"role": "user", "content": "Hello"}]
            )
            reply = raw.parse()
            assert reply.choices[0].message.content in (
                "Hello from demo upstream (demo-a)",
                "Hello from demo upstream (demo-b)",
            )
            assert raw.headers["x-berry-backend"] in ("demo-a:gpt-4", "demo-b:gpt-4")
            assert httpx.get(f"{berry_url}/", timeout=10).status_code == 200
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
            for name in ("Berry", "demo-a", "demo-b"):  # everything the demo started stopped
                with pytest.raises(httpx.ConnectError):
                    httpx.get(where[name].removesuffix("/v1") + "/", timeout=2)
    finally:
        for sock in held:
            if sock is not None:
                sock.close()


def test_demo_stops_with_a_clear_message_when_an_upstream_cannot_start() -> None:
    holder = hold_port(taken := free_port())
    assert holder is not None
    berry_port = free_port()
    with holder, demo({"DEMO_B_PORT": str(taken), "PORT": str(berry_port)}) as process:
        try:
            output = process.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            pytest.fail("the demo kept running with a dead upstream")
    assert process.returncode == 1
    assert f"demo: demo upstream demo-b did not start on port {taken} (see above)." in output
    assert "Berry serving" not in output  # Berry was never started
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{berry_port}/v1/health", timeout=2)


# -- berry usage ---------------------------------------------------------------------------


def test_usage_table_format() -> None:
    from berry_handlers.cli import format_usage

    report = {
        "from": "2026-11-29",
        "to": "2026-11-30",
        "users": {
            "alice": {
                "requests": 2,
                "prompt_tokens": 30,
                "completion_tokens": 10,
                "cached_tokens": 5,
                "cost_usd": 0.00042,
                "models": {
                    "gpt4o": {
                        "requests": 2,
                        "prompt_tokens": 30,
                        "completion_tokens": 10,
                        "cached_tokens": 5,
                        "cost_usd": 0.00042,
                    }
                },
            }
        },
    }
    assert format_usage(report).splitlines() == [
        "usage 2026-11-29 to 2026-11-30 (UTC)",
        "user   model  requests  prompt  completion  cached  cost USD",
        "alice  gpt4o         2      30          10       5  0.000420",
        "alice  (all)         2      30          10       5  0.000420",
    ]


def test_usage_with_the_memory_store_says_it_sees_nothing(good: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BERRY), "usage", "--config", str(good)],
        env={**os.environ, "BERRY_STATE_STORE": "memory"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "memory store keeps usage per process" in result.stderr
    assert result.stdout.startswith("usage ")
    assert TOKEN not in result.stdout + result.stderr


def test_usage_refuses_an_unknown_user(good: Path) -> None:
    result = subprocess.run(
        [str(BERRY), "usage", "--config", str(good), "--user", "mallory"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "unknown user 'mallory'" in result.stderr


BEDROCK_CONFIG = """
[providers.br]
name = "Bedrock"
base_url = "http://127.0.0.1:9999"
api_key = ""
backend_type = "bedrock"
models = ["anthropic.claude-3-5-sonnet-20240620-v1:0"]

[models.c]
name = "c"

[[models.c.backends]]
provider = "br"
model = "anthropic.claude-3-5-sonnet-20240620-v1:0"

[users.a]
name = "A"
token = "a-token-of-twenty-chars"
"""


def test_a_bedrock_provider_without_a_region_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "bedrock.toml"
    path.write_text(BEDROCK_CONFIG)
    environ = {k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    without = subprocess.run(
        [BERRY, "check-config", str(path)], env=environ, capture_output=True, text=True, check=False
    )
    assert without.returncode == 0
    assert "warning: providers.br: no AWS region" in without.stderr
    with_region = subprocess.run(
        [BERRY, "check-config", str(path)],
        env={**environ, "AWS_REGION": "eu-west-1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert with_region.returncode == 0 and "warning" not in with_region.stderr
