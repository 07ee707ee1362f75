"""Hostile clients against `berry serve` (a real subprocess), under both of uvicorn's parsers.

- request headers past ``max_request_header_bytes``: 431 (or a closed connection) at once,
  with no memory growth and no delay for anyone else;
- a client that does not send its request whole within ``client_read_timeout_seconds`` is
  cut off, yet a long answer to a request that did arrive is never cut;
- an aborted upload is a quiet 499, never a 500 with a traceback;
- SIGTERM during an endless stream ends it with Berry's SSE error event and a terminated body.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import ADMIN_TOKEN, USER_TOKEN, BerryProcess, DemoUpstream

PARSERS = ["h11", "httptools"]
CHAT = "/v1/chat/completions"
CHAT_BODY = orjson.dumps(
    {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}
)
HEADER_LIMIT = 64 * 1024  # the default of [settings] max_request_header_bytes
MiB = 1024 * 1024


def write_config(path: Path, upstream: DemoUpstream, **settings: Any) -> Path:
    lines = ["[settings]", *(f"{key} = {value!r}" for key, value in settings.items())]
    lines += [
        "[providers.up]",
        'name = "Upstream"',
        f'base_url = "{upstream.base_url}"',
        'api_key = "sk-upstream-key-0123456789"',
        'models = ["up-model"]',
        "[models.m]",
        'name = "test-model"',
        "[[models.m.backends]]",
        'provider = "up"',
        'model = "up-model"',
        "[users.admin]",
        'name = "Admin"',
        f'token = "{ADMIN_TOKEN}"',
        "[users.user]",
        'name = "User"',
        f'token = "{USER_TOKEN}"',
        'allowed_models = ["m"]',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def serve(
    make_upstream: Callable[..., DemoUpstream], tmp_path: Path
) -> Iterator[Callable[..., BerryProcess]]:
    """``serve(parser, *args, **settings)``: `berry serve --http <parser>` before a demo
    upstream, with ``settings`` in its config."""
    started: list[BerryProcess] = []

    def start(parser: str, *args: str, **settings: Any) -> BerryProcess:
        upstream = make_upstream(name="up")
        config = write_config(tmp_path / f"config-{len(started)}.toml", upstream, **settings)
        berry = BerryProcess(config, None, "--http", parser, *args)
        started.append(berry)
        return berry

    yield start
    for berry in started:
        berry.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(berry: BerryProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", berry.port), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sent before it closed (a reset counts as closed)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def chat_ok(berry: BerryProcess, client: httpx.Client) -> None:
    response = client.post(
        f"{berry.url}{CHAT}", content=CHAT_BODY, headers={"Authorization": f"Bearer {USER_TOKEN}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


def http_statuses(berry: BerryProcess) -> dict[str, float]:
    text = httpx.get(f"{berry.url}/prometheus", timeout=10).text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "berry_api_http_requests_total" and sample.labels.get("endpoint") == CHAT
    }


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- header size ----------------------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
def test_headers_just_under_the_cap_pass_and_just_over_get_431(serve, parser: str) -> None:
    berry = serve(parser)
    with httpx.Client(timeout=10) as client:
        # The cap counts the request line and every header line: leave room for them.
        under = client.get(f"{berry.url}/v1/health", headers={"x-pad": "a" * (HEADER_LIMIT - 400)})
        assert under.status_code == 200
        over = client.get(f"{berry.url}/v1/health", headers={"x-pad": "a" * (HEADER_LIMIT + 10)})
        assert over.status_code == 431
        assert over.headers["connection"] == "close"
        assert over.json()["error"]["code"] == "request_headers_too_large"
        # Many requests on one keep-alive connection: the cap is per request, not per connection.
        for _ in range(40):
            pad = {"x-pad": "b" * 4000}
            assert client.get(f"{berry.url}/v1/health", headers=pad).status_code == 200
    assert "Traceback" not in berry.output()


@pytest.mark.parametrize("parser", PARSERS)
def test_a_16_mb_header_is_refused_at_once(serve, parser: str) -> None:
    berry = serve(parser)
    sock = connect(berry)
    sent = 0
    with sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nhost: berry\r\nx-huge: ")
        try:
            while sent < 16 * MiB:
                sock.sendall(b"h" * MiB)
                sent += MiB
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: the "closed connection" outcome
        answer = read_until_closed(sock)
    assert status_of(answer) in (431, None), answer[:200]
    if answer:
        assert b"request_headers_too_large" in answer
    with httpx.Client(timeout=10) as client:
        chat_ok(berry, client)


@pytest.mark.parametrize("parser", PARSERS)
def test_dribbled_huge_headers_cost_no_memory_and_no_delay(serve, parser: str) -> None:
    berry = serve(parser)
    with httpx.Client(timeout=10) as client:
        for _ in range(20):  # warm up: imports, pools and caches that a first request fills
            chat_ok(berry, client)
        baseline = rss_bytes(berry.process.pid)
        outcomes: list[str] = []
        sending = threading.Semaphore(0)

        def dribble() -> None:
            # Up to 8 MiB of one header, 64 KiB at a time, never finished.
            with connect(berry) as sock:
                try:
                    sock.sendall(b"GET / HTTP/1.1\r\nhost: berry\r\nx-dribble: ")
                    sending.release()
                    for _ in range(128):
                        sock.sendall(b"d" * (64 * 1024))
                        time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                answer = read_until_closed(sock)
                outcomes.append(str(status_of(answer)))

        threads = [threading.Thread(target=dribble) for _ in range(10)]
        for thread in threads:
            thread.start()
        # Everyone else is served meanwhile (the client's 10 s timeout is the bound).
        for _ in threads:  # every connection is open and sending
            assert sending.acquire(timeout=10)
        served = 0
        while any(t.is_alive() for t in threads) or not served:
            chat_ok(berry, client)
            assert client.get(f"{berry.url}/health").status_code == 200
            served += 1
        for thread in threads:
            thread.join(30)
        grown = rss_bytes(berry.process.pid) - baseline
    assert len(outcomes) == 10 and set(outcomes) <= {"431", "None"}, outcomes
    # Unguarded, this held 10 x 8 MiB of header, and more in parser copies.
    assert grown < 20 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


# -- slow clients ---------------------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
def test_slow_clients_are_cut_off_after_the_read_timeout(serve, parser: str) -> None:
    berry = serve(parser, client_read_timeout_seconds=1.0)

    def dribbled_headers() -> tuple[bytes, float]:
        with connect(berry) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nhost: berry\r\n")
            try:
                for i in range(100):  # a header line every 0.1 s: 10 s, if nobody stops it
                    sock.sendall(b"x-slow-%d: 1\r\n" % i)
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return read_until_closed(sock), time.monotonic() - started

    def silent() -> tuple[bytes, float]:
        with connect(berry) as sock:  # connects and never sends a byte
            started = time.monotonic()
            return read_until_closed(sock), time.monotonic() - started

    def unfinished_body() -> tuple[bytes, float]:
        with connect(berry) as sock:  # headers in time, then a body that never finishes
            started = time.monotonic()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: berry\r\n"
                b"authorization: Bearer " + USER_TOKEN.encode() + b"\r\n"
                b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
            )
            return read_until_closed(sock), time.monotonic() - started

    with ThreadPoolExecutor(3) as pool:
        clients = [pool.submit(f) for f in (dribbled_headers, silent, unfinished_body)]
        (headers, headers_took), (nothing, silent_took), (body, body_took) = [
            c.result(timeout=20) for c in clients
        ]
    for answer, took in ((headers, headers_took), (nothing, silent_took)):
        assert status_of(answer) == 408, answer[:200]
        assert b"request_timeout" in answer
        assert 0.8 < took < 5
    assert body == b""  # the app was reading the body: it sees the client leave
    assert 0.8 < body_took < 5
    wait_for(lambda: http_statuses(berry).get("499") == 1, 5, "the cut upload counted as 499")
    with httpx.Client(timeout=10) as client:
        chat_ok(berry, client)
    assert "Traceback" not in berry.output()


@pytest.mark.parametrize("parser", PARSERS)
def test_a_long_answer_to_a_request_that_arrived_is_never_cut(
    make_upstream, tmp_path, parser: str
) -> None:
    upstream = make_upstream(name="slow-stream", stream_chunks=10, chunk_delay_ms=100)
    config = write_config(tmp_path / "config.toml", upstream, client_read_timeout_seconds=0.5)
    berry = BerryProcess(config, None, "--http", parser)
    try:
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=20) as client:
            for _ in range(2):  # twice on one connection: the keep-alive one too
                response = client.post(
                    f"{berry.url}{CHAT}",
                    json={**body, "stream": True},
                    headers={"Authorization": f"Bearer {USER_TOKEN}"},
                )
                assert response.status_code == 200
                assert response.text.rstrip().endswith("data: [DONE]")  # ~1 s, past the timeout
        # A stray CRLF after the request (old clients send one) while the answer streams.
        payload = orjson.dumps({**body, "stream": True})
        with connect(berry) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: berry\r\n"
                b"authorization: Bearer " + USER_TOKEN.encode() + b"\r\n"
                b"content-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(payload) + payload
            )
            time.sleep(0.1)
            sock.sendall(b"\r\n")
            received = b""
            while not received.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
                received += chunk
        assert status_of(received) == 200
        assert b"data: [DONE]" in received and received.endswith(b"0\r\n\r\n")
    finally:
        berry.stop()


# -- aborted uploads ------------------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
def test_an_aborted_upload_is_a_quiet_499(serve, parser: str) -> None:
    berry = serve(parser, "--log-level", "debug")
    for _ in range(3):
        with connect(berry) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: berry\r\n"
                b"authorization: Bearer " + USER_TOKEN.encode() + b"\r\n"
                b"content-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(CHAT_BODY) + CHAT_BODY[: len(CHAT_BODY) // 2]
            )
            time.sleep(0.1)  # let Berry start reading the body, then hang up mid-upload
    wait_for(lambda: http_statuses(berry).get("499") == 3, 5, "three aborted uploads as 499")
    with httpx.Client(timeout=10) as client:
        chat_ok(berry, client)
    statuses = http_statuses(berry)
    assert statuses == {"499": 3, "200": 1}, statuses
    berry.stop()
    log = berry.output()
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert log.count("client left during its upload") == 3


# -- shutdown -------------------------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
def test_sigterm_ends_an_endless_stream_with_an_error_event_and_exits_0(
    make_upstream, tmp_path, parser: str
) -> None:
    endless = make_upstream(name="endless", stream_chunks=1_000_000, chunk_delay_ms=20)
    config = write_config(tmp_path / "config.toml", endless)
    berry = BerryProcess(config, None, "--http", parser, "--graceful-timeout", "3")
    events: list[str] = []
    outcome: dict[str, Any] = {}
    streaming = threading.Event()

    def read_stream() -> None:
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
        try:
            with (
                httpx.Client(timeout=20) as client,
                client.stream(
                    "POST",
                    f"{berry.url}{CHAT}",
                    json={**body, "stream": True},
                    headers={"Authorization": f"Bearer {USER_TOKEN}"},
                ) as response,
            ):
                outcome["status"] = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                        streaming.set()
            outcome["complete"] = True  # httpx raises on an unterminated chunked body
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)

    reader = threading.Thread(target=read_stream)
    try:
        reader.start()
        assert streaming.wait(10), "the stream never started"
        berry.process.send_signal(signal.SIGTERM)
        reader.join(15)
        returncode = berry.process.wait(15)
    finally:
        berry.stop()
    assert outcome.get("complete"), outcome
    assert outcome["status"] == 200
    last = orjson.loads(events[-1])
    assert last["error"]["code"] == "server_shutting_down", events[-3:]
    assert "[DONE]" not in events
    assert returncode == 0
    assert "Traceback" not in berry.output()
