"""Tail latency with a stalling backend: what hedging does to p99 and p99.9.

Two demo upstreams (local/demo_upstream.py) serve one model with equal weights. Both answer
after a log-normal delay, median 300 ms and sigma 0.4 (p95 0.58 s, p99 0.76 s): the spread of
a fast model's short answers, and a p95 above hedging's 0.5 s floor, so the floor does not
decide the delay by itself. One of them also stalls 3 s on 5% of its requests. wrk keeps 8
connections busy (closed loop) through Berry:

* the fast backend alone (a model with only that backend): the p99 to compare with;
* both backends, hedging off: about 2.5% of requests wait out a stall;
* both backends, hedging on with the default settings;
* with ``--tail-hedging KEY=VALUE``, also hedging on with those overrides, to see beside the
  defaults what a setting gains and costs (more hedges).

Each Berry gets a warm-up first: until a backend has ``min_samples`` latencies the hedge
delay is ``max_delay_seconds`` (10 s), which is not the steady state being measured.

How long: p99.9 is the value 1 request in 1,000 exceeds, so it exists from ~1,000 requests on
but then rests on a single answer; ~10 above it (10,000 requests, 7 minutes per figure at the
~24 req/s 8 connections give) would make it repeatable to a few percent. The default 180 s per
figure gives ~4,000 requests: the p99.9 rests on the ~4 slowest answers (a rough figure, shown
with its request count), the p99 on ~40.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from client import TOKEN, check
from processes import start, stop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from dynamodb_local import free_port  # noqa: E402

LUA = Path(__file__).resolve().parent / "tail.lua"
CONNECTIONS = 8
LATENCY_MS = 300
LATENCY_SIGMA = 0.4
STALL_RATE = 0.05
STALL_MS = 3000
TARGET_RATIO = 1.5

BERRY_CONF = """
[settings]
request_timeout_seconds = 30
[settings.hedging]
enabled = {enabled}
{hedging}
[providers.fast]
name = "fast"
base_url = "http://127.0.0.1:{fast}/v1"
api_key = "bench"
models = ["demo-model"]
[providers.stalling]
name = "stalling"
base_url = "http://127.0.0.1:{stalling}/v1"
api_key = "bench"
models = ["demo-model"]
[models.tail]
name = "tail"
[[models.tail.backends]]
provider = "fast"
model = "demo-model"
weight = 1
[[models.tail.backends]]
provider = "stalling"
model = "demo-model"
weight = 1
[models.tail-fast]
name = "tail-fast"
[[models.tail-fast.backends]]
provider = "fast"
model = "demo-model"
[users.bench]
name = "bench"
token = "{token}"
"""


@dataclass(frozen=True)
class TailFigure:
    name: str
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    requests: int
    errors: int
    # Share of requests that started a hedge, and of upstream attempts the stalling backend
    # got (SmartAI moves weight away from a slower backend); None where not meaningful.
    hedged: float | None = None
    stalling_share: float | None = None


def run(
    folder: Path,
    berry: list[str],
    seconds: int,
    warmup: int,
    overrides: dict[str, str],
) -> list[TailFigure]:
    """Every figure of the table, measured one after the other."""
    figures: list[TailFigure] = []
    with _demo_upstreams() as (fast, stalling):
        with _berry(folder, berry, fast, stalling, "off", enabled=False) as url:
            figures.append(_measure(url, "tail-fast", "fast backend alone", seconds, warmup))
            figures.append(_measure(url, "tail", "two backends, hedging off", seconds, warmup))
        with _berry(folder, berry, fast, stalling, "on", enabled=True) as url:
            figures.append(
                _measure(url, "tail", "two backends, hedging on (defaults)", seconds, warmup)
            )
        if overrides:
            label = ", ".join(f"{key} = {value}" for key, value in overrides.items())
            with _berry(folder, berry, fast, stalling, "tuned", True, overrides) as url:
                figures.append(
                    _measure(url, "tail", f"two backends, hedging on ({label})", seconds, warmup)
                )
    return figures


@contextmanager
def _demo_upstreams() -> Iterator[tuple[int, int]]:
    """(fast port, stalling port): two demo upstream processes, stopped afterwards."""
    demo = [sys.executable, str(ROOT / "local" / "demo_upstream.py")]
    latency = ["--latency-ms", str(LATENCY_MS), "--latency-sigma", str(LATENCY_SIGMA)]
    stall = ["--stall-rate", str(STALL_RATE), "--stall-ms", str(STALL_MS)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        fast, stalling = free_port(), free_port()
        processes.append(start([*demo, "--port", str(fast), "--name", "fast", *latency], fast))
        processes.append(
            start(
                [*demo, "--port", str(stalling), "--name", "stalling", *latency, *stall],
                stalling,
            )
        )
        yield fast, stalling
    finally:
        stop(processes)


@contextmanager
def _berry(
    folder: Path,
    berry: list[str],
    fast: int,
    stalling: int,
    label: str,
    enabled: bool,
    overrides: dict[str, str] | None = None,
) -> Iterator[str]:
    """A Berry of its own per hedging variant (no latency samples carried over); yields its
    root URL."""
    config = folder / f"tail-{label}.toml"
    hedging = "\n".join(f"{key} = {value}" for key, value in (overrides or {}).items())
    config.write_text(
        BERRY_CONF.format(
            enabled=str(enabled).lower(),
            hedging=hedging,
            fast=fast,
            stalling=stalling,
            token=TOKEN,
        )
    )
    port = free_port()
    process = start(
        [*berry, "--config", str(config), "--port", str(port)],
        port,
        {"BERRY_STATE_STORE": "memory"},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([process])


def _measure(root: str, model: str, name: str, seconds: int, warmup: int) -> TailFigure:
    url = f"{root}/v1/chat/completions"
    check(url, model, stream=False)
    _wrk(url, model, warmup)
    before = _metrics(root)
    result = _wrk(url, model, seconds)
    after = _metrics(root)
    hedged = after.hedged(model) - before.hedged(model)
    attempts = {
        backend: after.attempts(backend) - before.attempts(backend)
        for backend in ("fast:demo-model", "stalling:demo-model")
    }
    total_attempts = sum(attempts.values())
    two_backends = model == "tail"
    return TailFigure(
        name=name,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        p999_ms=result["p999_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        requests=result["requests"],
        errors=result["errors"],
        hedged=hedged / result["requests"] if two_backends and result["requests"] else None,
        stalling_share=(
            attempts["stalling:demo-model"] / total_attempts
            if two_backends and total_attempts
            else None
        ),
    )


def _wrk(url: str, model: str, seconds: int) -> dict[str, int]:
    output = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            url,
            "--",
            model,
            TOKEN,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = re.search(r"^tail (.*)$", output, re.MULTILINE)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {output[-500:]}")
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line.group(1))}


@dataclass(frozen=True)
class _Metrics:
    samples: dict[tuple[str, str], float]  # (metric name, label text) -> value

    def hedged(self, model: str) -> float:
        return self.samples.get(("berry_api_hedged_requests_total", f'model="{model}"'), 0.0)

    def attempts(self, backend: str) -> float:
        key = ("berry_api_backend_request_count_total", f'backend="{backend}"')
        return self.samples.get(key, 0.0)


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)


def _metrics(root: str) -> _Metrics:
    with urllib.request.urlopen(f"{root}/prometheus", timeout=10) as response:
        text = response.read().decode()
    return _Metrics({(m[1], m[2]): float(m[3]) for m in _SAMPLE.finditer(text)})


def render(figures: list[TailFigure], seconds: int, warmup: int) -> list[str]:
    lines = [
        f"Tail latency with a stalling backend: two demo upstreams, log-normal latency (median "
        f"{LATENCY_MS} ms, sigma {LATENCY_SIGMA}), one stalling {STALL_MS / 1000:g} s on "
        f"{STALL_RATE:.0%} of requests; {CONNECTIONS} connections, non-stream, {seconds} s per "
        f"figure after {warmup} s of warm-up, ms.",
        "",
        "| setup | requests | p50 | p99 | p99.9 | max | hedged | stalling backend's share "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        hedged = f"{f.hedged:.1%}" if f.hedged is not None else "-"
        share = f"{f.stalling_share:.0%}" if f.stalling_share is not None else "-"
        lines.append(
            f"| {f.name} | {f.requests:,} | {f.p50_ms:.0f} | {f.p99_ms:.0f} | {f.p999_ms:.0f} "
            f"| {f.max_ms:.0f} | {hedged} | {share} | {f.errors} |"
        )
    lines.append("")
    if min(f.requests for f in figures) < 1000:
        lines.append(
            "Fewer than 1,000 requests in a figure: its p99.9 is its maximum, and the verdicts "
            "below are no evidence either way."
        )
    fast = next((f for f in figures if f.name == "fast backend alone"), None)
    for f in figures:
        if fast is None or "hedging on" not in f.name or not fast.p99_ms:
            continue
        ratio = f.p99_ms / fast.p99_ms
        verdict = "met" if ratio < TARGET_RATIO else "NOT met"
        lines.append(
            f"p99 {f.name.removeprefix('two backends, ')} / fast backend's own p99: "
            f"{ratio:.2f}x (target below {TARGET_RATIO}x: {verdict})."
        )
    return lines
