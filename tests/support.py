"""Real servers on loopback for the tests: Berry's app under uvicorn in a thread, configs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "local"))

from berry_handlers.local import create_app  # noqa: E402
from berry_shared.config import Config, parse_config  # noqa: E402
from berry_shared.gateway import Gateway  # noqa: E402
from demo_upstream import DemoUpstream  # noqa: E402
from dynamodb_local import free_port  # noqa: E402
from fakes.server import ThreadedServer  # noqa: E402

ADMIN_TOKEN = "test-admin-token-0123456789"
USER_TOKEN = "test-user-token-0123456789"
PROVIDER_KEY_PREFIX = "sk-upstream-secret-"


def provider_key(name: str) -> str:
    """Each provider's API key: a recognisable secret that must never leak."""
    return f"{PROVIDER_KEY_PREFIX}{name}-7f3a9c"


def closed_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused."""
    return free_port()


class BerryProcess:
    """`berry serve` as a real subprocess on a free port; its output goes to a file."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, *args: str, probes: bool = False
    ) -> None:
        base_env = {
            k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")
        }
        command = [
            str(ROOT / ".venv/bin/berry"),
            "serve",
            "--config",
            str(config),
            *([] if probes else ["--no-probes"]),
            *args,
        ]
        # A free port can be taken by someone else (another test worker) before berry serve
        # binds it: then it exits, and the answer came from the other server. So the process
        # must be alive and the answer Berry's, or it starts again on another port.
        for _ in range(5):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log_path = config.with_suffix(f".{self.port}.log")
            self._log = self.log_path.open("wb")
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                env={**base_env, **(env or {})},
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._started():
                return
            self.stop()
        raise AssertionError(f"berry serve did not start:\n{self.output()}")

    def _started(self) -> bool:
        deadline = time.monotonic() + 30
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{self.url}/v1/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            return self.process.poll() is None and "service_running" in answer.text
        return False

    def rss_mib(self) -> float:
        """The server process's resident memory."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


@dataclass
class LambdaContext:
    """What the Lambda runtime hands a handler (the fields powertools reads)."""

    function_name: str = "berry-chat"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:berry-chat"
    memory_limit_in_mb: int = 512
    aws_request_id: str = ""
    log_group_name: str = "/aws/lambda/berry-chat"
    log_stream_name: str = "2026/11/30/[$LATEST]test"

    def __post_init__(self) -> None:
        self.aws_request_id = self.aws_request_id or str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def write_config(config: Config, path: Path) -> Path:
    """``config`` as a config.toml file, for ``berry serve`` subprocesses."""
    path.write_text(tomli_w.dumps(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return path


@contextmanager
def berry_serve(
    config: Path, env: dict[str, str] | None = None, *args: str, probes: bool = False
) -> Iterator[BerryProcess]:
    berry = BerryProcess(config, env, *args, probes=probes)
    try:
        yield berry
    finally:
        berry.stop()


class ServerThread(ThreadedServer):
    """Any ASGI app, with its lifespan, under uvicorn on its own thread and loop."""

    def __init__(self, app: Any, **config: Any) -> None:
        super().__init__(app, **{"lifespan": "on", **config})

    @property
    def url(self) -> str:
        return self.root_url


class Berry(ServerThread):
    """A running Berry with direct access to its gateway (state, metrics) for assertions."""

    def __init__(self, config: Config) -> None:
        self.gateway = Gateway(config)
        super().__init__(create_app(self.gateway))

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def state(self, backend_key: str) -> Any:
        return self.gateway.store.state(backend_key)


def build_config(
    upstreams: dict[str, DemoUpstream],
    models: dict[str, list[dict[str, Any]]] | None = None,
    settings: dict[str, Any] | None = None,
    users: dict[str, dict[str, Any]] | None = None,
    smart_ai: dict[str, Any] | None = None,
) -> Config:
    """A config with one provider per upstream (id = the dict key).

    ``models`` maps a public model name to its backends (``{"provider": id, ...}``); the
    default is one model, "test-model", served by every upstream with weight 1.
    """
    providers = {
        pid: {
            "name": f"Provider {pid}",
            "base_url": upstream.base_url,
            "api_key": provider_key(pid),
            "models": ["up-model", "other-model", "third-model"],
        }
        for pid, upstream in upstreams.items()
    }
    if models is None:
        models = {"test-model": [{"provider": pid} for pid in upstreams]}
    model_section = {
        name.replace(".", "-"): {
            "name": name,
            "backends": [{"model": "up-model", **backend} for backend in backends],
        }
        for name, backends in models.items()
    }
    settings_section: dict[str, Any] = {
        "request_timeout_seconds": 10,
        "circuit_breaker_timeout_seconds": 60,
        **(settings or {}),
    }
    if smart_ai:
        settings_section["smart_ai"] = smart_ai
    users_section = users or {
        "admin": {"name": "Admin", "token": ADMIN_TOKEN},
        "user": {"name": "User", "token": USER_TOKEN, "allowed_models": list(model_section)},
    }
    return parse_config(
        {
            "settings": settings_section,
            "providers": providers,
            "models": model_section,
            "users": users_section,
        }
    )
