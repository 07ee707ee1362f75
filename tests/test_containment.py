"""Containment: hostile upstreams and clients cost nothing, leak nothing and hold nothing.

Each test puts a deliberately misbehaving server on loopback (``Misbehaving``: huge bodies,
endless or dripping streams, redirects, error bodies that echo the request) or a client that
leaves early, and checks what Berry did from the other side: what the upstream saw (did its
peer hang up, which host got the redirect), what the client got, and this process's RSS.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from fakes.server import Recorder, ThreadedServer, read_body
from support import USER_TOKEN, Berry, berry_serve, build_config, provider_key, write_config

HTTP = httpx.Client(timeout=30)
MESSAGES = [{"role": "user", "content": "hi"}]
CHUNK = b"x" * 65536
CUSTOM_SECRET = "custom-header-secret-42-abcdef"


@dataclass
class Misbehaviour:
    mode: str = "huge"
    size: int = 200 * 1024 * 1024
    interval: float = 0.1
    location: str = ""
    status: int = 307
    bytes_sent: int = 0
    events_sent: int = 0
    peer_gone: bool = False
    requests: Recorder = field(default_factory=Recorder)


class Misbehaving:
    """A raw ASGI upstream that misbehaves on purpose and records what it saw."""

    def __init__(self, **behaviour: Any) -> None:
        self.b = Misbehaviour(**behaviour)
        self.server = ThreadedServer(self)

    @property
    def base_url(self) -> str:
        return self.server.root_url + "/v1"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, _ = await read_body(receive)
        self.b.requests.record(scope, body, orjson.loads(body) if body else None)
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await getattr(self, f"_{self.b.mode}")(send)
        finally:
            watcher.cancel()

    async def _watch(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.b.peer_gone = True

    async def _start(self, send: Any, status: int, content_type: bytes, extra=()) -> None:
        headers = [(b"content-type", content_type), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _huge(self, send: Any) -> None:
        """200 OK, JSON, chunked and far larger than any cap (or endless)."""
        await self._start(send, 200, b"application/json")
        while self.b.bytes_sent < self.b.size and not self.b.peer_gone:
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            self.b.bytes_sent += len(CHUNK)
            await asyncio.sleep(0)  # uvicorn's send returns at once once the peer is gone
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, send: Any, forever: bool = True) -> None:
        await self._start(send, 200, b"text/event-stream")
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        while not self.b.peer_gone:
            delta = {"content": "tick "} if self.b.events_sent else {"role": "assistant"}
            event = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            data = b"data: " + orjson.dumps(event) + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
            self.b.events_sent += 1
            self.b.bytes_sent += len(data)
            if self.b.interval:
                await asyncio.sleep(self.b.interval)
            else:
                await asyncio.sleep(0)

    async def _drip(self, send: Any) -> None:
        await self._stream(send)

    async def _redirect(self, send: Any) -> None:
        await self._start(
            send, self.b.status, b"application/json", [(b"location", self.b.location.encode())]
        )
        await send({"type": "http.response.body", "body": b"{}"})

    async def _echo_400(self, send: Any) -> None:
        """A 400 whose body quotes the request's headers, as some proxies' errors do."""
        headers = self.b.requests.last.headers
        body = orjson.dumps({"error": {"message": f"bad request; you sent {headers}"}})
        await self._start(send, 400, b"application/json")
        await send({"type": "http.response.body", "body": body})

    async def _ok(self, send: Any) -> None:
        body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
        await self._start(send, 200, b"application/json")
        await send({"type": "http.response.body", "body": body})

    def __enter__(self) -> Misbehaving:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.b.peer_gone = True
        self.server.stop()


@pytest.fixture
def misbehaving():
    started: list[Misbehaving] = []

    def make(**behaviour: Any) -> Misbehaving:
        upstream = Misbehaving(**behaviour).__enter__()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.__exit__()


def berry_for(start_berry: Any, upstreams: dict[str, Any], **settings: Any) -> Berry:
    # The first upstream is the preferred tier: always tried first; the others fail over.
    backends = [{"provider": pid, "priority": min(i, 1)} for i, pid in enumerate(upstreams)]
    config = build_config(
        upstreams,
        models={"test-model": backends},
        settings=settings,
        smart_ai={"exploration_ratio": 0.0},
    )
    return start_berry(config)


def post(berry: Berry, stream: bool = False, **extra: Any) -> httpx.Response:
    body = {"model": "test-model", "messages": MESSAGES, "stream": stream, **extra}
    return HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- upstream bodies ---------------------------------------------------------------------


def test_a_huge_answer_is_a_502_never_held_whole_and_memory_comes_back(
    misbehaving, make_upstream, tmp_path
) -> None:
    """`berry serve` in its own process, so its RSS is Berry's alone."""
    huge = misbehaving(mode="huge")
    good = make_upstream(name="good")
    config = build_config(
        {"huge": huge, "good": good}, settings={"circuit_breaker_failure_threshold": 100}
    )
    with berry_serve(write_config(config, tmp_path / "config.toml")) as berry:
        url = f"{berry.url}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {USER_TOKEN}"}

        def ask(backend: str) -> httpx.Response:
            body = {"model": "test-model", "messages": MESSAGES, "backend": backend}
            return HTTP.post(url, content=orjson.dumps(body), headers=auth)

        for _ in range(50):  # warm up on a normal backend: imports and pools are not leaks
            assert ask("good").status_code == 200
        baseline = berry.rss_mib()
        peak = baseline
        for _ in range(6):
            huge.b.bytes_sent, huge.b.peer_gone = 0, False
            response = ask("huge")
            peak = max(peak, berry.rss_mib())
            assert response.status_code == 502
            assert "answer larger than the body limit" in response.json()["error"]["message"]
            # Berry stopped reading at its 32 MiB cap and hung up: most of 200 MB never came.
            wait_for(lambda: huge.b.peer_gone, 5, "Berry to hang up on the huge answer")
            assert huge.b.bytes_sent < 100 * 1024 * 1024
        for _ in range(20):
            assert ask("good").status_code == 200
        # Never a whole copy: at most about the cap at a time; and it is given back.
        assert peak - baseline < 80, (baseline, peak)
        assert berry.rss_mib() - baseline < 16, (baseline, berry.rss_mib())


def test_a_huge_answer_fails_over_to_a_good_backend(
    misbehaving, make_upstream, start_berry
) -> None:
    huge = misbehaving(mode="huge", size=10 * 1024 * 1024)
    good = make_upstream(name="good")
    berry = berry_for(
        start_berry, {"huge": huge, "good": good}, max_response_body_bytes=1024 * 1024
    )
    response = post(berry)
    assert response.status_code == 200
    assert response.headers["x-berry-backend"] == "good:up-model"
    assert berry.state("huge:up-model").last_error == "server"


# -- streams -------------------------------------------------------------------------------


def test_a_stream_that_never_ends_is_cut_at_the_longest_duration(misbehaving, start_berry) -> None:
    endless = misbehaving(mode="stream", interval=0.05)
    berry = berry_for(start_berry, {"endless": endless}, max_stream_duration_seconds=1.0)
    started = time.perf_counter()
    response = post(berry, stream=True)
    seconds = time.perf_counter() - started
    assert response.status_code == 200
    last = response.text.strip().split("\n\n")[-1]
    assert last.startswith("data: ")
    error = orjson.loads(last.removeprefix("data: "))["error"]
    assert error["code"] == "stream_too_long"
    assert "data: [DONE]" not in response.text
    assert 0.9 < seconds < 3
    wait_for(lambda: endless.b.peer_gone, 3, "the upstream stream to be closed")


def test_a_stream_that_goes_silent_ends_after_the_provider_timeout(
    misbehaving, start_berry
) -> None:
    drip = misbehaving(mode="drip", interval=2.0)  # an event every 2 s
    berry = berry_for(start_berry, {"drip": drip})
    provider = berry.gateway.config.providers["drip"]
    assert provider.timeout_seconds == 30
    berry.stop()
    config = berry.gateway.config
    providers = {"drip": provider.model_copy(update={"timeout_seconds": 0.7})}
    berry = start_berry(config.model_copy(update={"providers": providers}))
    started = time.perf_counter()
    response = post(berry, stream=True)
    assert response.status_code == 200
    error = orjson.loads(response.text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert error["error"]["code"] == "stream_interrupted"
    assert "went silent" in error["error"]["message"]
    assert time.perf_counter() - started < 2
    assert berry.state("drip:up-model").last_error == "timeout"


def test_a_slow_reader_that_leaves_stops_the_upstream(misbehaving, start_berry) -> None:
    """A fast upstream stream, a client that reads a little, slowly, then hangs up."""
    fast = misbehaving(mode="stream", interval=0)
    berry = berry_for(start_berry, {"fast": fast})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {USER_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    body = orjson.dumps({"model": "test-model", "messages": MESSAGES, "stream": True})
    with socket.create_connection(("127.0.0.1", berry.port)) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(request.replace("{length}", str(len(body))).encode() + body)
        for _ in range(5):
            assert client.recv(1024)
            time.sleep(0.2)
        client.shutdown(socket.SHUT_RDWR)
    wait_for(lambda: fast.b.peer_gone, 3, "Berry to close the upstream stream")
    sent = fast.b.bytes_sent
    time.sleep(0.5)
    assert fast.b.bytes_sent == sent  # nothing more is pulled after the client left
    assert sent < 64 * 1024 * 1024


# -- clients that leave --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_client_that_leaves_before_the_answer_cancels_the_upstream_call(
    make_upstream, start_berry, stream
) -> None:
    hang = make_upstream(name="hang", mode="hang")
    berry = start_berry(build_config({"hang": hang}))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{berry.base_url}/chat/completions",
            content=orjson.dumps({"model": "test-model", "messages": MESSAGES, "stream": stream}),
            headers={"Authorization": f"Bearer {USER_TOKEN}"},
            timeout=0.5,
        )
    left = time.monotonic()
    wait_for(lambda: hang.stats()["disconnects"] == 1, 3, "the upstream call to be cancelled")
    assert time.monotonic() - left < 1.5
    # Not the backend's fault: nothing is held against it.
    assert berry.state("hang:up-model").failures == 0
    wait_for(lambda: "499" in HTTP.get(f"{berry.url}/prometheus").text, 3, "the 499 count")


# -- redirects and leaked secrets ----------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_never_followed(misbehaving, make_upstream, start_berry, status) -> None:
    elsewhere = misbehaving(mode="ok")
    redirecting = misbehaving(
        mode="redirect", status=status, location=elsewhere.base_url + "/chat/completions"
    )
    good = make_upstream(name="good")
    berry = berry_for(start_berry, {"redirecting": redirecting, "good": good})
    response = post(berry)
    assert response.status_code == 200
    assert response.headers["x-berry-backend"] == "good:up-model"
    assert elsewhere.b.requests.requests == []  # neither the prompt nor the key went there
    assert berry.state("redirecting:up-model").last_error == "server"


def test_keys_are_scrubbed_from_passed_through_error_bodies(misbehaving, start_berry) -> None:
    echo = misbehaving(mode="echo_400")
    config = build_config({"echo": echo})
    provider = config.providers["echo"].model_copy(update={"headers": {"X-Api-Key": CUSTOM_SECRET}})
    berry = start_berry(config.model_copy(update={"providers": {"echo": provider}}))
    response = post(berry)
    assert response.status_code == 400
    seen = echo.b.requests.last.headers
    assert provider_key("echo") in seen["authorization"]  # the upstream did get them...
    assert seen["x-api-key"] == CUSTOM_SECRET
    assert provider_key("echo") not in response.text  # ...the client never does
    assert CUSTOM_SECRET not in response.text
    assert "[redacted]" in response.text


def test_a_huge_model_name_is_not_echoed_whole(berry: Berry) -> None:
    response = post(berry, model="m" * 100_000)
    assert response.status_code == 404
    assert len(response.content) < 1000
    assert response.headers["x-berry-attempts"] == "0"
