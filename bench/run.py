"""Berry's benchmark: what a gateway adds to every request, side by side, in one run.

Starts nginx as a fast fake upstream that speaks OpenAI, Anthropic and Bedrock (fixed
answers, see fake_upstream.py), then Berry (one worker, memory store) on the pass-through
path, Berry with the DynamoDB store against DynamoDB Local, Berry on the translated paths
(Anthropic Messages, Bedrock Converse), optionally an older Berry from a git commit, and
LiteLLM's proxy (one worker, its own venv) on the pass-through and the Anthropic path, all in
front of the same nginx, and drives each with wrk from a separate process. A second table
measures tail latency with a stalling backend, hedging off and on (tail.py).

    .venv/bin/python bench/run.py                        # full run (~20 minutes)
    .venv/bin/python bench/run.py --compare-ref d5d49a4  # plus the pass-through of that commit
    .venv/bin/python bench/run.py --smoke --compare-ref d5d49a4   # every row, a few s each
    .venv/bin/python bench/run.py --soak 300             # plus a 5-minute memory soak of Berry

It installs what it needs when missing: nginx and wrk from Debian's packages (as root) and
LiteLLM (`litellm[proxy]`) into bench/.venv-litellm. Results go to stdout and (not with
--smoke) bench/results.md. Loopback only; every load is bounded in time. --smoke exits 1
when any target answered an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tail
from canned import ANTHROPIC_MODEL, BEDROCK_MODEL
from client import TOKEN, chat_body, check
from fake_upstream import write_nginx_config
from processes import start, stop
from reference import serve_command, worktree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from dynamodb_local import DynamoDBLocal, free_port  # noqa: E402

BENCH = ROOT / "bench"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
LITELLM_VENV = BENCH / ".venv-litellm"
BERRY_SERVE = [str(ROOT / ".venv" / "bin" / "berry"), "serve", "--no-probes"]
CONNECTIONS = 32

# Only what every Berry since the benchmark began accepts: the --compare-ref run reads it too.
PASS_THROUGH_CONF = """
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

# The Bedrock key is a dummy Bedrock API key (sent as a bearer token): no AWS credentials
# are needed, and nginx checks none.
TRANSLATED_CONF = """
[settings]
request_timeout_seconds = 30
[providers.anthropic]
name = "nginx as Anthropic"
base_url = "http://127.0.0.1:{port}"
api_key = "bench-anthropic-key"
backend_type = "claude"
models = ["{anthropic_model}"]
[providers.anthropic-stream]
name = "nginx as Anthropic, stream"
base_url = "http://127.0.0.1:{port}/stream"
api_key = "bench-anthropic-key"
backend_type = "claude"
models = ["{anthropic_model}"]
[providers.bedrock]
name = "nginx as Bedrock"
base_url = "http://127.0.0.1:{port}"
api_key = "bench-bedrock-api-key"
backend_type = "bedrock"
models = ["{bedrock_model}"]
[models.claude]
name = "claude"
[[models.claude.backends]]
provider = "anthropic"
model = "{anthropic_model}"
[models.claude-stream]
name = "claude-stream"
[[models.claude-stream.backends]]
provider = "anthropic-stream"
model = "{anthropic_model}"
[models.bedrock]
name = "bedrock"
[[models.bedrock.backends]]
provider = "bedrock"
model = "{bedrock_model}"
[users.bench]
name = "bench"
token = "{token}"
"""

# LiteLLM's anthropic/ provider posts to {api_base}/v1/messages (AnthropicConfig.
# get_complete_url appends /v1/messages unless api_base already ends with it).
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
  - model_name: claude
    litellm_params:
      model: anthropic/{anthropic_model}
      api_base: http://127.0.0.1:{port}
      api_key: bench-anthropic-key
  - model_name: claude-stream
    litellm_params:
      model: anthropic/{anthropic_model}
      api_base: http://127.0.0.1:{port}/stream
      api_key: bench-anthropic-key
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

# Row names the summary lines look up.
NGINX = "nginx direct"
BERRY = "Berry (memory)"
DYNAMO = "Berry (DynamoDB Local)"
LITELLM = "LiteLLM proxy"
BERRY_ANTHROPIC = "Berry → Anthropic (translated)"
LITELLM_ANTHROPIC = "LiteLLM proxy → Anthropic (translated)"
BERRY_BEDROCK = "Berry → Bedrock (translated)"
# Issue 11's targets for the translated path, in the same run.
TRANSLATED_SHARE_TARGET = 0.6
TRANSLATED_VS_LITELLM_TARGET = 20


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


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"wrk printed no {pattern!r}: {text[-500:]}")
    return match.group(1)


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
    result = {"rps": float(_found(r"Requests/sec:\s+([\d.]+)", output))}
    for percentile in ("50", "99"):
        result[f"p{percentile}"] = _ms(_found(rf"\s{percentile}%\s+(\S+)", output))
    first_error = re.search(r"first error: (.*)", output)
    if first_error:
        print(f"{url}: {first_error.group(1)[:300]}", file=sys.stderr)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    if socket_errors:
        result["errors"] += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return result


@dataclass
class _Load:
    """One target's wrk scripts and URLs, and the figures of each round."""

    target: Target
    plain_url: str
    stream_url: str
    plain_script: Path
    stream_script: Path
    rounds: list[dict[str, float]] = field(default_factory=list)


def _prepare(target: Target, folder: Path) -> _Load:
    """Scripts written, answers checked, connections and caches warmed up."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", target.name)
    scripts = []
    for kind, model, is_stream in (
        ("plain", target.model, False),
        ("stream", target.stream_model, True),
    ):
        script = folder / f"{slug}-{kind}.lua"
        script.write_text(WRK_SCRIPT.format(body=chat_body(model, is_stream), token=TOKEN))
        scripts.append(script)
    load = _Load(
        target,
        f"{target.url}/chat/completions",
        f"{target.stream_url}/chat/completions",
        plain_script=scripts[0],
        stream_script=scripts[1],
    )
    check(load.plain_url, target.model, stream=False)
    check(load.stream_url, target.stream_model, stream=True)
    wrk(load.plain_url, load.plain_script, CONNECTIONS, 2)
    return load


def measure(
    targets: list[Target], folder: Path, seconds: int, rounds: int
) -> dict[str, dict[str, float | None]]:
    """Every target's figures, ``seconds`` each, cut into ``rounds`` slices: in each round the
    targets take turns (starting one further along each time), so a busy spell of the shared
    machine falls on all of them alike instead of on whichever ran then. A figure is the
    median over the rounds."""
    loads = [_prepare(target, folder) for target in targets]
    slice_seconds = max(1, round(seconds / rounds))
    for index in range(rounds):
        shift = index % len(loads)
        for load in loads[shift:] + loads[:shift]:
            plain = wrk(load.plain_url, load.plain_script, CONNECTIONS, slice_seconds)
            stream = wrk(load.stream_url, load.stream_script, CONNECTIONS, slice_seconds)
            single = wrk(load.plain_url, load.plain_script, 1, slice_seconds)
            load.rounds.append(
                {
                    "rps": plain["rps"],
                    "stream_rps": stream["rps"],
                    "p50": single["p50"],
                    "p99": single["p99"],
                    "errors": plain["errors"] + stream["errors"] + single["errors"],
                }
            )
    results: dict[str, dict[str, float | None]] = {}
    for load in loads:
        figures: dict[str, float | None] = {
            key: statistics.median(r[key] for r in load.rounds)
            for key in ("rps", "stream_rps", "p50", "p99")
        }
        figures["errors"] = sum(r["errors"] for r in load.rounds)
        figures["peak_mib"] = peak_rss_mib(load.target.process)
        results[load.target.name] = figures
    return results


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument(
        "--rounds", type=int, default=5, help="slices each measurement is cut into (medians)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds per measurement, no LiteLLM"
    )
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-dynamodb", action="store_true")
    parser.add_argument("--no-tail", action="store_true", help="skip the tail-latency table")
    parser.add_argument("--only-tail", action="store_true", help="only the tail-latency table")
    parser.add_argument(
        "--compare-ref",
        metavar="REF",
        help="also measure the pass-through of Berry at this git commit (e.g. d5d49a4)",
    )
    parser.add_argument(
        "--tail-duration", type=int, default=180, help="seconds per tail-latency figure"
    )
    parser.add_argument(
        "--tail-hedging",
        action="append",
        metavar="KEY=VALUE",
        help="add a tail row with hedging on and this [settings.hedging] override (a TOML "
        "value, e.g. delay_quantile=0.9); repeatable, all in one row",
    )
    parser.add_argument("--soak", type=int, default=0, help="seconds of memory soak (300)")
    return parser.parse_args()


def reference_name(ref: str | None) -> str | None:
    return f"Berry ({ref})" if ref else None


def start_litellm(
    folder: Path, nginx_port: int, processes: list[subprocess.Popen[bytes]]
) -> tuple[str, subprocess.Popen[bytes]]:
    """LiteLLM's proxy (one worker, master key set) in front of nginx; its base URL."""
    litellm_config = folder / "litellm.yaml"
    litellm_config.write_text(LITELLM_CONF.format(port=nginx_port, anthropic_model=ANTHROPIC_MODEL))
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
    return f"http://127.0.0.1:{port}/v1", process


def start_reference(
    source: Path, config: Path, processes: list[subprocess.Popen[bytes]]
) -> tuple[str, subprocess.Popen[bytes]]:
    """Berry from the ``source`` tree of an older commit; its base URL."""
    port = free_port()
    command, env = serve_command(VENV_PYTHON, source, config, port)
    process = start(command, port, env, cwd=source)
    processes.append(process)
    return f"http://127.0.0.1:{port}/v1", process


def main() -> None:
    args = parse_args()
    seconds, rounds = (2, 1) if args.smoke else (args.duration, args.rounds)
    tail_seconds, tail_warmup = (4, 3) if args.smoke else (args.tail_duration, 15)
    overrides = dict(item.split("=", 1) for item in args.tail_hedging or [])
    want_litellm = not (args.smoke or args.no_litellm or args.only_tail)
    ensure_tools(want_litellm)
    results: dict[str, dict[str, float | None]] = {}
    soak_samples: list[tuple[int, float]] = []
    tail_figures: list[tail.TailFigure] = []
    with tempfile.TemporaryDirectory(prefix="berry-bench-") as tmp:
        folder = Path(tmp)
        if not args.only_tail:
            results, soak_samples = measure_gateways(args, folder, seconds, rounds, want_litellm)
        # After the gateways have stopped: the tail table's processes get the cores.
        if not args.no_tail:
            tail_figures = tail.run(folder, BERRY_SERVE, tail_seconds, tail_warmup, overrides)
    parts = []
    if results:
        parts.append(
            render(results, seconds, rounds, soak_samples, reference_name(args.compare_ref))
        )
    if tail_figures:
        parts.append("\n".join(tail.render(tail_figures, tail_seconds, tail_warmup)) + "\n")
    report = "\n".join(parts)
    print(report)
    if not (args.smoke or args.only_tail):
        (BENCH / "results.md").write_text(report)
    elif any(r["errors"] for r in results.values()) or any(f.errors for f in tail_figures):
        sys.exit("some target answered errors (see the errors column)")


def measure_gateways(
    args: argparse.Namespace, folder: Path, seconds: int, rounds: int, want_litellm: bool
) -> tuple[dict[str, dict[str, float | None]], list[tuple[int, float]]]:
    """The main table's figures (and the soak's samples); every process stopped on return."""
    processes: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as cleanup:
        reference = (
            cleanup.enter_context(worktree(ROOT, args.compare_ref, folder))
            if args.compare_ref
            else None
        )
        database = None if args.no_dynamodb else cleanup.enter_context(DynamoDBLocal())
        cleanup.callback(stop, processes)
        nginx_port = free_port()
        nginx_conf = write_nginx_config(folder, nginx_port)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        processes.append(start([nginx, "-c", str(nginx_conf)], nginx_port))
        direct = f"http://127.0.0.1:{nginx_port}"
        config = folder / "berry.toml"
        config.write_text(PASS_THROUGH_CONF.format(port=nginx_port, token=TOKEN))
        translated_config = folder / "berry-translated.toml"
        translated_config.write_text(
            TRANSLATED_CONF.format(
                port=nginx_port,
                token=TOKEN,
                anthropic_model=ANTHROPIC_MODEL,
                bedrock_model=BEDROCK_MODEL,
            )
        )

        def serve(config: Path, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
            port = free_port()
            command = [*BERRY_SERVE, "--config", str(config), "--port", str(port)]
            process = start(command, port, env)
            processes.append(process)
            return f"http://127.0.0.1:{port}/v1", process

        memory = {"BERRY_STATE_STORE": "memory"}
        base, process = serve(config, memory)
        targets = [
            Target(NGINX, f"{direct}/v1", f"{direct}/stream/v1", stream_model="bench-model"),
            Target(BERRY, base, base, process),
        ]
        if reference is not None:
            base, process = start_reference(reference, config, processes)
            targets.append(Target(f"Berry ({args.compare_ref})", base, base, process))
        if database is not None:
            base, process = serve(config, database.env("berry-bench"))
            targets.append(Target(DYNAMO, base, base, process))
        litellm = start_litellm(folder, nginx_port, processes) if want_litellm else None
        if litellm is not None:
            targets.append(Target(LITELLM, litellm[0], litellm[0], litellm[1]))
        base, process = serve(translated_config, memory)
        targets.append(Target(BERRY_ANTHROPIC, base, base, process, "claude", "claude-stream"))
        if litellm is not None:
            targets.append(
                Target(
                    LITELLM_ANTHROPIC, litellm[0], litellm[0], litellm[1], "claude", "claude-stream"
                )
            )
        targets.append(Target(BERRY_BEDROCK, base, base, process, "bedrock", "bedrock"))
        results = measure(targets, folder, seconds, rounds)
        soak_samples = soak(targets[1], folder, args.soak) if args.soak else []
    return results, soak_samples


def render(
    results: dict[str, dict[str, float | None]],
    seconds: int,
    rounds: int,
    soak_samples: list[tuple[int, float]],
    reference: str | None,
) -> str:
    direct = results[NGINX]
    lines = [
        f"Machine: {machine()}. wrk from a separate process, {seconds} s per figure in "
        f"{rounds} round{'s' if rounds != 1 else ''}, the targets taking turns (each figure "
        "the median of its rounds); "
        f"throughput at {CONNECTIONS} connections, latency at 1 connection.",
        "",
        "| target | req/s plain | req/s stream | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| peak RSS MiB | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        is_gateway = name != NGINX
        added_p50 = f"{_n(r['p50']) - _n(direct['p50']):.3f}" if is_gateway else "-"
        added_p99 = f"{_n(r['p99']) - _n(direct['p99']):.3f}" if is_gateway else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(
            f"| {name} | {_n(r['rps']):,.0f} | {_n(r['stream_rps']):,.0f} | {_n(r['p50']):.3f} | "
            f"{_n(r['p99']):.3f} | {added_p50} | {added_p99} | {peak} | {_n(r['errors']):.0f} |"
        )
    lines.append("")
    lines.extend(summary(results, reference))
    if soak_samples:
        warm = [rss for t, rss in soak_samples if t >= 30]
        lines.append(
            f"Soak ({soak_samples[-1][0] + 10} s at {CONNECTIONS} connections): RSS after "
            f"warm-up {warm[0]:.1f} MiB, at the end {warm[-1]:.1f} MiB, max {max(warm):.1f} MiB."
            if warm
            else "Soak too short to judge."
        )
    return "\n".join(lines) + "\n"


def _n(value: float | None) -> float:
    return value if value is not None else 0.0


def _ratio(results: dict[str, dict[str, float | None]], a: str, b: str, key: str) -> float | None:
    if a not in results or b not in results or not results[b][key]:
        return None
    return _n(results[a][key]) / _n(results[b][key])


def summary(results: dict[str, dict[str, float | None]], reference: str | None) -> list[str]:
    """The ratios the issues ask about, each with its target where there is one."""
    lines: list[str] = []

    def both(a: str, b: str) -> tuple[float, float] | None:
        plain, stream = _ratio(results, a, b, "rps"), _ratio(results, a, b, "stream_rps")
        return (plain, stream) if plain is not None and stream is not None else None

    def verdict(values: tuple[float, float], target: float) -> str:
        return "met" if min(values) >= target else "NOT met"

    if (r := both(BERRY, LITELLM)) is not None:
        lines.append(f"Berry / LiteLLM throughput: {r[0]:.1f}x (stream {r[1]:.1f}x).")
    if (r := both(DYNAMO, BERRY)) is not None:
        lines.append(f"DynamoDB store / memory store throughput: {r[0]:.0%} (stream {r[1]:.0%}).")
    if reference and (r := both(BERRY, reference)) is not None:
        lines.append(
            f"Pass-through, this tree / {reference}: {r[0]:.0%} of its throughput "
            f"(stream {r[1]:.0%})."
        )
    if (r := both(BERRY_ANTHROPIC, BERRY)) is not None:
        lines.append(
            f"Translated (Anthropic) / pass-through throughput: {r[0]:.0%} (stream {r[1]:.0%}); "
            f"target at least {TRANSLATED_SHARE_TARGET:.0%}: "
            f"{verdict(r, TRANSLATED_SHARE_TARGET)}."
        )
    if (r := both(BERRY_ANTHROPIC, LITELLM_ANTHROPIC)) is not None:
        lines.append(
            f"Berry / LiteLLM throughput, translated to Anthropic: {r[0]:.1f}x "
            f"(stream {r[1]:.1f}x); target at least {TRANSLATED_VS_LITELLM_TARGET}x: "
            f"{verdict(r, TRANSLATED_VS_LITELLM_TARGET)}."
        )
    if (r := both(BERRY_BEDROCK, BERRY)) is not None:
        lines.append(
            f"Translated (Bedrock) / pass-through throughput: {r[0]:.0%} (stream {r[1]:.0%})."
        )
    return lines


if __name__ == "__main__":
    main()
