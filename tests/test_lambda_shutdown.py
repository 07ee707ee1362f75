"""No lost statistics on Lambda: the chat function flushes after each response and at
shutdown, through its internal extension, and the streaming function when uvicorn stops.

The runtime here is a small emulation of Lambda's python3.11 runtime in a subprocess,
driven by a fake of Lambda's Runtime and Extensions APIs on loopback that keeps their
documented contract: an invocation starts only once the runtime and every extension have
asked for their next event (the environment was "frozen"), and then reaches all of them.
Like the real python3.8-3.11 runtimes, the emulation waits for the next event in native
code that never returns to the interpreter, so a Python signal handler cannot run while the
environment is idle: the flush at SIGTERM must not depend on one. State goes to DynamoDB
Local.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamodb import shared_requests
from fakes.server import ThreadedServer, read_body, send_bytes
from lambda_events import rest_event
from support import ROOT, USER_TOKEN, DemoUpstream, free_port

BACKEND = "up:up-model"
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "count me"}]}

# The runtime: import the handler (Init: the extension registers), then serve invocations.
RUNTIME = r"""
import ctypes, http.client, importlib, json, os, signal, sys, threading, time

api = os.environ["AWS_LAMBDA_RUNTIME_API"]
module_name, _, attribute = os.environ["_HANDLER"].rpartition(".")
handler = getattr(importlib.import_module(module_name), attribute)
# The real runtime's wait for the next event is native code that restarts its read after a
# signal: the interpreter gets no chance to run a Python-level handler until an event comes.
signal.siginterrupt(signal.SIGTERM, False)
libc = ctypes.CDLL(None, use_errno=True)


def call(method, path, body=None):
    connection = http.client.HTTPConnection(api)
    connection.request(method, "/2018-06-01/runtime/" + path, body)
    response = connection.getresponse()
    return response.read(), {k.lower(): v for k, v in response.getheaders()}


def next_invocation():
    read_end, write_end = os.pipe()
    answer = []
    def fetch():
        answer.append(call("GET", "invocation/next"))
        os.write(write_end, b"!")
    threading.Thread(target=fetch, daemon=True).start()
    byte = ctypes.create_string_buffer(1)
    while libc.read(read_end, byte, 1) != 1:
        pass
    os.close(read_end)
    os.close(write_end)
    return answer[0]


class Context:
    function_name = "berry-chat"; function_version = "$LATEST"; memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:berry-chat"
    log_group_name = "/aws/lambda/berry-chat"; log_stream_name = "2026/11/30/[$LATEST]test"
    def __init__(self, request_id, deadline_ms):
        self.aws_request_id = request_id
        self._deadline = deadline_ms / 1000
    def get_remaining_time_in_millis(self):
        return int((self._deadline - time.time()) * 1000)


while True:
    body, headers = next_invocation()
    request_id = headers["lambda-runtime-aws-request-id"]
    os.environ["_X_AMZN_TRACE_ID"] = headers.get("lambda-runtime-trace-id", "")
    context = Context(request_id, int(headers["lambda-runtime-deadline-ms"]))
    result = handler(json.loads(body), context)
    call("POST", f"invocation/{request_id}/response", json.dumps(result).encode())
"""


@dataclass
class Invocation:
    request_id: str
    event: dict[str, Any]
    response: dict[str, Any] | None = None
    answered: threading.Event = field(default_factory=threading.Event)


class FakeLambda:
    """Lambda's Runtime API and Extensions API for one execution environment."""

    def __init__(self) -> None:
        self.timeline: list[tuple[str, str, float]] = []  # (what, request id, monotonic)
        self.registrations: list[tuple[str, list[str]]] = []
        self.invocations: dict[str, Invocation] = {}
        self._queue: list[Invocation] = []
        # Who waits for the next event (None: released, the environment is going away).
        self._runtime: asyncio.Future[Invocation | None] | None = None
        self._extensions: dict[str, asyncio.Future[Invocation | None] | None] = {}
        self._initialized = False
        self._last = ""
        self.server = ThreadedServer(self.app, interface="asgi3")

    def start(self) -> FakeLambda:
        self.server.start()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.call_soon(self._release)
        self.server.stop()

    def _release(self) -> None:
        for waiting in [self._runtime, *self._extensions.values()]:
            if waiting is not None and not waiting.done():
                waiting.set_result(None)

    # -- the test's side (any thread) ---------------------------------------------------

    def invoke(self, event: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        invocation = Invocation(str(uuid.uuid4()), event)
        self.invocations[invocation.request_id] = invocation
        self.server.call_soon(lambda: self._enqueue(invocation))
        assert invocation.answered.wait(timeout), "no response"
        assert invocation.response is not None
        return invocation.response

    def frozen(self) -> bool:
        """The runtime and every extension wait for their next event: nothing runs."""
        return (
            self._initialized
            and not self._queue
            and self._runtime is not None
            and all(waiting is not None for waiting in self._extensions.values())
        )

    def wait_frozen(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.frozen():
            assert time.monotonic() < deadline, "the environment never went idle"
            time.sleep(0.01)

    def when(self, what: str, request_id: str) -> float:
        return next(t for w, r, t in self.timeline if w == what and r == request_id)

    # -- the server's side (its event loop) ---------------------------------------------

    def _note(self, what: str, request_id: str = "") -> None:
        self.timeline.append((what, request_id, time.monotonic()))

    def _enqueue(self, invocation: Invocation) -> None:
        self._queue.append(invocation)
        self._dispatch()

    def _dispatch(self) -> None:
        waiting = list(self._extensions.values())
        if not (self._queue and self._runtime and all(w is not None for w in waiting)):
            return
        invocation = self._queue.pop(0)
        self._last = invocation.request_id
        self._note("invoke", invocation.request_id)
        self._runtime.set_result(invocation)
        self._runtime = None
        for identifier, future in self._extensions.items():
            assert future is not None
            future.set_result(invocation)
            self._extensions[identifier] = None

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, _ = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        loop = asyncio.get_running_loop()
        if path == "/2020-01-01/extension/register" and method == "POST":
            events = json.loads(body)["events"]
            # Registration belongs to Init; internal extensions may not ask for SHUTDOWN.
            if self._initialized or "SHUTDOWN" in events:
                await send_bytes(send, 400, b'{"errorType": "Extension.InvalidRegistration"}')
                return
            identifier = str(uuid.uuid4())
            self.registrations.append((headers["lambda-extension-name"], events))
            self._extensions[identifier] = None
            answer = b'{"functionName": "berry-chat", "functionVersion": "$LATEST"}'
            extra = [(b"lambda-extension-identifier", identifier.encode())]
            await send_bytes(send, 200, answer, headers=extra)
        elif path == "/2020-01-01/extension/event/next" and method == "GET":
            identifier = headers["lambda-extension-identifier"]
            self._note("extension next", self._last)
            future: asyncio.Future[Invocation | None] = loop.create_future()
            self._extensions[identifier] = future
            self._dispatch()
            invocation = await future
            if invocation is None:
                await send_bytes(send, 410, b"{}")
                return
            event = {
                "eventType": "INVOKE",
                "deadlineMs": int((time.time() + 25) * 1000),
                "requestId": invocation.request_id,
                "invokedFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:berry-chat",
                "tracing": {"type": "X-Amzn-Trace-Id", "value": "Root=1-00000000-000000000000"},
            }
            await send_bytes(send, 200, json.dumps(event).encode())
        elif path == "/2018-06-01/runtime/invocation/next" and method == "GET":
            self._initialized = True  # the runtime's first next ends Init
            self._note("runtime next", self._last)
            runtime: asyncio.Future[Invocation | None] = loop.create_future()
            self._runtime = runtime
            self._dispatch()
            invocation = await runtime
            if invocation is None:
                await send_bytes(send, 410, b"{}")
                return
            extra = [
                (b"lambda-runtime-aws-request-id", invocation.request_id.encode()),
                (b"lambda-runtime-deadline-ms", str(int((time.time() + 25) * 1000)).encode()),
                (b"lambda-runtime-trace-id", b"Root=1-00000000-000000000000;Sampled=0"),
            ]
            await send_bytes(send, 200, json.dumps(invocation.event).encode(), headers=extra)
        elif path.endswith("/response") and method == "POST":
            request_id = path.split("/")[-2]
            self._note("response", request_id)
            invocation = self.invocations[request_id]
            invocation.response = json.loads(body)
            invocation.answered.set()
            await send_bytes(send, 202, b"{}")
        else:
            await send_bytes(send, 404, b"{}")


def chat_event() -> dict[str, Any]:
    """An API Gateway REST proxy event for one chat request."""
    return rest_event("POST", "/v1/chat/completions", CHAT, token=USER_TOKEN)


def write_config(folder: Path, upstream: DemoUpstream) -> Path:
    config = folder / "config.toml"
    config.write_text(f"""
[providers.up]
name = "Upstream"
base_url = "{upstream.base_url}"
api_key = "sk-test-key-0123456789"
models = ["up-model"]
[models.m]
name = "test-model"
[[models.m.backends]]
provider = "up"
model = "up-model"
[users.user]
name = "User"
token = "{USER_TOKEN}"
allowed_models = ["m"]
""")
    return config


@dataclass
class Environment:
    """One Lambda execution environment running the chat handler."""

    fake: FakeLambda
    process: subprocess.Popen[bytes]
    endpoint: str
    table: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def upstream() -> Iterator[DemoUpstream]:
    server = DemoUpstream().start()
    yield server
    server.stop()


def start_environment(
    tmp_path: Path, upstream: DemoUpstream, endpoint: str, paths: list[Path] | None = None
) -> Environment:
    """The runtime on the project's code, or on ``paths`` alone (a built artifact: a fresh
    interpreter that sees nothing else and writes nothing, as on Lambda)."""
    table = f"berry-shutdown-{uuid.uuid4().hex[:8]}"
    fake = FakeLambda().start()
    log = tmp_path / "runtime.log"
    env = {
        "PATH": os.environ["PATH"],
        "AWS_LAMBDA_RUNTIME_API": fake.address,
        "_HANDLER": "berry_handlers.chat.handler",
        "AWS_LAMBDA_FUNCTION_NAME": "berry-chat",
        "AWS_REGION": "us-east-1",
        "CONFIG_PATH": str(write_config(tmp_path, upstream)),
        "BERRY_TIME_LIMIT_SECONDS": "25",
        "POWERTOOLS_SERVICE_NAME": "berry",
        "DYNAMODB_ENDPOINT": endpoint,
        "BERRY_STATE_STORE": "dynamodb",
        "BERRY_STATE_TABLE": table,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = [sys.executable, "-c", RUNTIME]
    if paths is not None:
        prefix = f"import sys; sys.path[:0] = {[str(p) for p in paths]!r}\n"
        command = [sys.executable, "-I", "-S", "-B", "-c", prefix + RUNTIME]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    return Environment(fake, process, endpoint, table, log)


def shut_down(environment: Environment) -> int:
    """What Lambda does to an idle environment it reclaims: SIGTERM, SIGKILL 500 ms later
    (more here: the test waits for the flush, it does not time it)."""
    environment.process.send_signal(signal.SIGTERM)
    try:
        return environment.process.wait(10)
    except subprocess.TimeoutExpired:
        environment.process.kill()
        environment.process.wait()
        raise AssertionError(f"the runtime ignored SIGTERM:\n{environment.output()}") from None


@pytest.fixture
def environment(tmp_path, upstream, dynamodb_local) -> Iterator[Environment]:
    env = start_environment(tmp_path, upstream, dynamodb_local.endpoint)
    yield env
    if env.process.poll() is None:
        env.process.kill()
        env.process.wait()
    env.fake.stop()


def test_every_request_is_counted_after_shutdown(environment: Environment) -> None:
    fake = environment.fake
    answered = 0
    for _ in range(5):
        response = fake.invoke(chat_event())
        assert response["statusCode"] == 200, environment.output()
        answered += 1
    assert fake.registrations == [("berry", ["INVOKE"])]
    # The deltas of the last second are still in the frozen container (a flush happens at
    # most once a second); make sure some are, so that only the shutdown can save them.
    for _ in range(5):
        fake.wait_frozen()
        if shared_requests(environment.endpoint, environment.table, BACKEND) < answered:
            break
        assert fake.invoke(chat_event())["statusCode"] == 200
        answered += 1
    assert shared_requests(environment.endpoint, environment.table, BACKEND) < answered
    assert shut_down(environment) == 0, environment.output()
    assert shared_requests(environment.endpoint, environment.table, BACKEND) == answered
    assert "Traceback" not in environment.output()


def test_what_is_due_is_flushed_after_the_response_before_the_freeze(
    environment: Environment, upstream: DemoUpstream
) -> None:
    fake = environment.fake
    assert fake.invoke(chat_event())["statusCode"] == 200  # cold start: gateway and store
    fake.wait_frozen()
    upstream.behaviour.mode = "fail"  # a failure is due at once (other instances need it)
    assert fake.invoke(chat_event())["statusCode"] >= 500
    fake.wait_frozen()
    # Nothing runs in a frozen container: both requests were flushed before the freeze, and
    # Lambda had each response before the extension let the environment freeze.
    assert shared_requests(environment.endpoint, environment.table, BACKEND) == 2
    for request_id in fake.invocations:
        assert fake.when("response", request_id) < fake.when("extension next", request_id)
    assert shut_down(environment) == 0


def test_a_slow_flush_does_not_delay_the_response(tmp_path, upstream, restartable_dynamodb):
    """DynamoDB stalls (its JVM is stopped) when a flush is due (a failure's): the response
    still comes at once; the flush waits out its timeouts after it, before the freeze."""
    env = start_environment(tmp_path, upstream, restartable_dynamodb.endpoint)
    pid = restartable_dynamodb.pid
    assert pid is not None
    try:
        fake = env.fake
        assert fake.invoke(chat_event())["statusCode"] == 200
        fake.wait_frozen()
        upstream.behaviour.mode = "fail"
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert fake.invoke(chat_event())["statusCode"] >= 500
            answered = time.monotonic() - started
            fake.wait_frozen(timeout=60)
            stalled = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        # The store's DynamoDB timeouts (1 s to connect, 2 s to read) run after the answer.
        assert stalled > 1.0 and answered < stalled - 0.9, (answered, stalled)
        assert shut_down(env) == 0
    finally:
        if env.process.poll() is None:
            env.process.kill()
            env.process.wait()
        env.fake.stop()


def test_the_streaming_function_flushes_when_uvicorn_stops(
    tmp_path, upstream, dynamodb_local
) -> None:
    """run_stream.sh as Lambda Web Adapter starts it; SIGTERM is Lambda's shutdown."""
    table = f"berry-stream-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "AWS_LWA_PORT": str(port),
        "CONFIG_PATH": str(write_config(tmp_path, upstream)),
        "BERRY_TIME_LIMIT_SECONDS": "890",
        **dynamodb_local.env(table),
    }
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(ROOT / "src/run_stream.sh")], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:  # the adapter's TCP readiness check
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        headers = {"Authorization": f"Bearer {USER_TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(4):
                stream = {**CHAT, "stream": True}
                answer = client.post("/v1/chat/completions", json=stream, headers=headers)
                assert answer.status_code == 200 and "data: [DONE]" in answer.text
        process.send_signal(signal.SIGTERM)
        # uvicorn stops gracefully, then re-raises the signal to its default handler.
        assert process.wait(15) in (0, -signal.SIGTERM), log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert shared_requests(dynamodb_local.endpoint, table, BACKEND) == 4
