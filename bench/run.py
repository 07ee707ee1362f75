"""Berry's benchmark: what a gateway adds to every request, side by side, in one run.

Starts nginx as a fast fake upstream, then Berry (one worker, memory store), Berry with the
DynamoDB store against DynamoDB Local, and LiteLLM's proxy (one worker, its own venv), all in
front of the same nginx, and drives each with wrk from a separate process:

    .venv/bin/python bench/run.py                 # full run (~3 minutes), table to stdout
    .venv/bin/python bench/run.py --smoke         # a few seconds per target, no LiteLLM
    .venv/bin/python bench/run.py --soak 300      # plus a 5-minute memory soak of Berry

It installs what it needs when missing: nginx and wrk from Debian's packages (as root) and
LiteLLM (`litellm[proxy]`) into bench/.venv-litellm. Results go to stdout and
bench/results.md. Loopback only; every load is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from dynamodb_local import DynamoDBLocal, free_port  # noqa: E402

BENCH = ROOT / "bench"
LITELLM_VENV = BENCH / ".venv-litellm"
# Also the LiteLLM master key: both gateways authenticate every request.
TOKEN = "sk-bench-0123456789abcdef0123"
CONNECTIONS = 32

COMPLETION = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    '"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Hello from nginx"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}'
)
CHUNK = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"bench-model","choices":[{"index":0,"delta":{"content":"%s"},'
    '"finish_reason":%s}]}\\n\\n'
)
STREAM = CHUNK % ("Hello", "null") + CHUNK % (" from nginx", '"stop"') + "data: [DONE]\\n\\n"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 '{completion}';
    }}
    location = /stream/v1/chat/completions {{
      default_type text/event-stream;
      return 200 '{stream}';
    }}
  }}
}}
"""

BERRY_CONF = """
[settings]
request_timeout_seconds = 30
[providers.nginx]
name = "nginx"
base_url = "http://127.0.0.1:{port}/v1"
api_key = "bench"
models = ["bench-model"]
[providers.nginx-stream]
name = "nginx stream"
base_url = "http://127.0.0.1:{port}/stream/v1"
api_key = "bench"
models = ["bench-model"]
[models.bench]
name = "bench-model"
[[models.bench.backends]]
provider = "nginx"
model = "bench-model"
[models.bench-stream]
name = "bench-stream"
[[models.bench-stream.backends]]
provider = "nginx-stream"
model = "bench-model"
[users.bench]
name = "bench"
token = "{token}"
"""

LITELLM_CONF = """
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{port}/v1
      api_key: bench
  - model_name: bench-stream
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{port}/stream/v1
      api_key: bench
litellm_settings:
  drop_params: true
  set_verbose: false
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
reported = false
response = function(status, headers, body)
  if status ~= 200 and not reported then
    reported = true
    print("first error: " .. status .. " " .. body)
  end
end
"""


def chat_body(model: str, stream: bool) -> str:
    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    return json.dumps({"model": model, "stream": stream, "messages": messages})


def check(url: str, body: str) -> None:
    """One request before the load: a target that answers errors is not measured."""
    request = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} answered {exc.code}: {exc.read()[:300]!r}") from None


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def ensure_tools(want_litellm: bool) -> None:
    missing = [
        tool
        for tool in ("nginx", "wrk")
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists())
    ]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"missing {missing}: apt-get install nginx-light wrk (as root)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if want_litellm and not (LITELLM_VENV / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True
        )


@dataclass
class Target:
    name: str
    url: str  # base URL up to /v1
    stream_url: str
    process: subprocess.Popen[bytes] | None = None
    model: str = "bench-model"
    stream_model: str = "bench-stream"


def peak_rss_mib(process: subprocess.Popen[bytes] | None) -> float | None:
    if process is None:
        return None
    status = Path(f"/proc/{process.pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    threads = min(2, connections)
    output = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for percentile in ("50", "99"):
        result[f"p{percentile}"] = _ms(re.search(rf"\s{percentile}%\s+(\S+)", output).group(1))
    first_error = re.search(r"first error: (.*)", output)
    if first_error:
        print(f"{url}: {first_error.group(1)[:300]}", file=sys.stderr)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    if socket_errors:
        result["errors"] += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return result


def measure(target: Target, folder: Path, seconds: int) -> dict[str, float | None]:
    scripts = {}
    for kind, model, stream in (
        ("plain", target.model, False),
        ("stream", target.stream_model, True),
    ):
        script = folder / f"{target.name.replace(' ', '_')}-{kind}.lua"
        script.write_text(WRK_SCRIPT.format(body=chat_body(model, stream), token=TOKEN))
        scripts[kind] = script
    plain_url = f"{target.url}/chat/completions"
    stream_url = f"{target.stream_url}/chat/completions"
    for url, model, stream in (
        (plain_url, target.model, False),
        (stream_url, target.stream_model, True),
    ):
        check(url, chat_body(model, stream))
    wrk(plain_url, scripts["plain"], CONNECTIONS, 2)  # warm up connections and caches
    plain = wrk(plain_url, scripts["plain"], CONNECTIONS, seconds)
    stream = wrk(stream_url, scripts["stream"], CONNECTIONS, seconds)
    single = wrk(plain_url, scripts["plain"], 1, seconds)
    return {
        "rps": plain["rps"],
        "stream_rps": stream["rps"],
        "p50": single["p50"],
        "p99": single["p99"],
        "errors": plain["errors"] + stream["errors"] + single["errors"],
        "peak_mib": peak_rss_mib(target.process),
    }


def start(
    command: list[str], port: int, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process, timeout)
    return process


def soak(target: Target, folder: Path, seconds: int) -> list[tuple[int, float]]:
    """Constant load for ``seconds``; RSS of the gateway every 10 s."""
    assert target.process is not None
    script = folder / "soak.lua"
    script.write_text(WRK_SCRIPT.format(body=chat_body(target.model, False), token=TOKEN))
    load = subprocess.Popen(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "-s",
            str(script),
            f"{target.url}/chat/completions",
        ],
        stdout=subprocess.DEVNULL,
    )
    samples = []
    started = time.monotonic()
    while load.poll() is None:
        samples.append((int(time.monotonic() - started), rss_mib(target.process.pid)))
        time.sleep(10)
    return samples


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--smoke", action="store_true", help="2 s per measurement, no LiteLLM")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-dynamodb", action="store_true")
    parser.add_argument("--soak", type=int, default=0, help="seconds of memory soak (300)")
    args = parser.parse_args()
    seconds = 2 if args.smoke else args.duration
    want_litellm = not (args.smoke or args.no_litellm)
    ensure_tools(want_litellm)
    processes: list[subprocess.Popen[bytes]] = []
    database = None
    with tempfile.TemporaryDirectory(prefix="berry-bench-") as tmp:
        folder = Path(tmp)
        try:
            nginx_port = free_port()
            (folder / "nginx.conf").write_text(
                NGINX_CONF.format(dir=folder, port=nginx_port, completion=COMPLETION, stream=STREAM)
            )
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            processes.append(start([nginx, "-c", str(folder / "nginx.conf")], nginx_port))
            direct = f"http://127.0.0.1:{nginx_port}"
            targets = [
                Target(
                    "nginx direct",
                    f"{direct}/v1",
                    f"{direct}/stream/v1",
                    model="bench-model",
                    stream_model="bench-model",
                )
            ]
            config = folder / "berry.toml"
            config.write_text(BERRY_CONF.format(port=nginx_port, token=TOKEN))
            berry = [
                str(ROOT / ".venv" / "bin" / "berry"),
                "serve",
                "--config",
                str(config),
                "--no-probes",
            ]
            port = free_port()
            process = start([*berry, "--port", str(port)], port, {"BERRY_STATE_STORE": "memory"})
            processes.append(process)
            base = f"http://127.0.0.1:{port}/v1"
            targets.append(Target("Berry (memory)", base, base, process))
            if not args.no_dynamodb:
                database = DynamoDBLocal().start()
                port = free_port()
                process = start([*berry, "--port", str(port)], port, database.env("berry-bench"))
                processes.append(process)
                base = f"http://127.0.0.1:{port}/v1"
                targets.append(Target("Berry (DynamoDB Local)", base, base, process))
            if want_litellm:
                litellm_config = folder / "litellm.yaml"
                litellm_config.write_text(LITELLM_CONF.format(port=nginx_port))
                port = free_port()
                process = start(
                    [
                        str(LITELLM_VENV / "bin" / "litellm"),
                        "--config",
                        str(litellm_config),
                        "--port",
                        str(port),
                        "--num_workers",
                        "1",
                    ],
                    port,
                    {
                        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                        "LITELLM_LOG": "ERROR",
                        "LITELLM_TELEMETRY": "False",
                        "LITELLM_MASTER_KEY": TOKEN,
                    },
                    timeout=180,
                )
                processes.append(process)
                base = f"http://127.0.0.1:{port}/v1"
                targets.append(Target("LiteLLM proxy", base, base, process))
            results = {t.name: measure(t, folder, seconds) for t in targets}
            soak_samples = soak(targets[1], folder, args.soak) if args.soak else []
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
            if database is not None:
                database.stop()
    report = render(results, seconds, soak_samples)
    print(report)
    if not args.smoke:
        (BENCH / "results.md").write_text(report)


def render(
    results: dict[str, dict[str, float | None]], seconds: int, soak_samples: list[tuple[int, float]]
) -> str:
    direct = results["nginx direct"]
    lines = [
        f"Machine: {machine()}. wrk from a separate process, {seconds} s per figure; "
        f"throughput at {CONNECTIONS} connections, latency at 1 connection.",
        "",
        "| target | req/s plain | req/s stream | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| peak RSS MiB | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        is_gateway = name != "nginx direct"
        added_p50 = f"{r['p50'] - direct['p50']:.3f}" if is_gateway else "-"
        added_p99 = f"{r['p99'] - direct['p99']:.3f}" if is_gateway else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(
            f"| {name} | {r['rps']:,.0f} | {r['stream_rps']:,.0f} | {r['p50']:.3f} | "
            f"{r['p99']:.3f} | {added_p50} | {added_p99} | {peak} | {r['errors']:.0f} |"
        )
    berry = results.get("Berry (memory)")
    litellm = results.get("LiteLLM proxy")
    dynamo = results.get("Berry (DynamoDB Local)")
    lines.append("")
    if berry and litellm:
        lines.append(f"Berry / LiteLLM throughput: {berry['rps'] / litellm['rps']:.1f}x.")
    if berry and dynamo:
        lines.append(
            f"DynamoDB store / memory store throughput: {dynamo['rps'] / berry['rps'] * 100:.0f}%."
        )
    if soak_samples:
        warm = [rss for t, rss in soak_samples if t >= 30]
        lines.append(
            f"Soak ({soak_samples[-1][0] + 10} s at {CONNECTIONS} connections): RSS after "
            f"warm-up {warm[0]:.1f} MiB, at the end {warm[-1]:.1f} MiB, max {max(warm):.1f} MiB."
            if warm
            else "Soak too short to judge."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
