"""Run any ASGI app under uvicorn on its own thread and event loop, on a loopback port.

One runner for every in-process fake server (the demo upstream, the provider fakes, test
servers), plus ``Recorder``: what a fake saw, including whether its client hung up early,
so tests can prove that a cancelled attempt really closed its connection.

What the fakes share sits here too: ``FakeApp`` (lifespan, requests held by a "hang" mode)
and ``FakeServer`` (the app on a ``ThreadedServer``, released hanging requests on stop), and
the ASGI helpers they answer with.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Self, TypeVar

import orjson
import uvicorn

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ThreadedServer:
    """An ASGI app under uvicorn in a daemon thread; ``start()`` returns once it listens."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, **config: Any):
        self.app = app
        self.host = host
        self.port = port  # the real bound port after start()
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and without it every response waits ~40 ms for a delayed ACK.
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.host else socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        options: dict[str, Any] = {
            "log_level": "warning",
            "lifespan": "off",
            "loop": "asyncio",
            "access_log": False,
            "timeout_graceful_shutdown": 2,
            **self.config,
        }
        server = self._server = uvicorn.Server(uvicorn.Config(self.app, **options))

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        self._thread = threading.Thread(
            target=asyncio.run, args=(serve(),), daemon=True, name=f"asgi-{self.port}"
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"server failed to start on {self.host}:{self.port}")
            time.sleep(0.005)
        return self

    def call_soon(self, function: Callable[[], object]) -> None:
        """Run ``function`` on the server's loop (thread-safe); a no-op once it stopped."""
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self.loop.call_soon_threadsafe(function)

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = self.loop = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class Seen:
    """One request as a fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    # The path exactly as it came over the wire (percent-encoding intact).
    raw_path: bytes = b""
    # Set when the response was fully sent, or when the client went away first.
    completed: bool = False
    client_gone: bool = False

    def wait_completed(self, timeout: float = 5.0) -> bool:
        """Whether the response was fully sent, waiting for the server's thread to record it
        (a client can read the last byte before the fake's coroutine resumes)."""
        deadline = time.monotonic() + timeout
        while not self.completed and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.completed


@dataclass
class Recorder:
    """Everything a fake saw, in arrival order (appended on the server's loop)."""

    requests: list[Seen] = field(default_factory=list)

    def record(self, scope: Scope, body: bytes, parsed: Any) -> Seen:
        seen = Seen(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
            json=parsed,
            raw_path=scope.get("raw_path") or scope["path"].encode(),
        )
        self.requests.append(seen)
        return seen

    @property
    def last(self) -> Seen:
        return self.requests[-1]

    @property
    def gone(self) -> int:
        """Requests whose client hung up before the response was complete."""
        return sum(1 for r in self.requests if r.client_gone)

    def clear(self) -> None:
        self.requests.clear()


async def read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client disconnected while sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


class Arrival(NamedTuple):
    """A request a fake has read and recorded."""

    seen: Seen  # its record: ``json`` is None when the body is empty or not JSON
    malformed: bool  # a body that is not JSON at all (``null`` is JSON)
    gone: bool  # the client hung up while sending the body


async def read_request(scope: Scope, receive: Receive, recorder: Recorder) -> Arrival:
    """Read the whole body, parse it as JSON when there is one, and record the request."""
    body, gone = await read_body(receive)
    parsed: Any = None
    malformed = False
    if body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            malformed = True
    return Arrival(recorder.record(scope, body, parsed), malformed, gone)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case) of a request."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def drop_connection(send: Send, receive: Receive) -> None:
    """Close the TCP connection abruptly, without finishing the response (a cut, not a clean
    end). Plain ASGI cannot say that: under uvicorn, ``send`` is bound to the request cycle,
    whose owner holds the transport."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "close"):
        raise ConnectionAbortedError("deliberate connection drop")
    transport.close()  # flushes what was already written, then FIN
    # Returning before uvicorn sees connection_lost would make it log "ASGI callable returned
    # without starting response" and try to write a 500.
    await wait_for_disconnect(receive)


def _start(
    status: int, body: bytes, content_type: str, headers: list[tuple[bytes, bytes]] | None
) -> Message:
    """The start of a response whose length is announced: ``body``'s."""
    start_headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    return {"type": "http.response.start", "status": status, "headers": start_headers}


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(_start(status, body, content_type, headers))
    await send({"type": "http.response.body", "body": body})


async def send_half_then_drop(
    send: Send,
    receive: Receive,
    body: bytes,
    content_type: str = "application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A truncated 200: announce the whole body's length, send half of it, then drop the
    connection (what a server that dies mid-response leaves the client with)."""
    await send(_start(200, body, content_type, headers))
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    await drop_connection(send, receive)


class StreamSender:
    """Send a chunked response piece by piece, noticing when the client has gone away.

    ``send`` raises nothing when the peer is gone under uvicorn, so a background task listens
    for ``http.disconnect`` and ``gone`` tells the fake to stop producing.
    """

    def __init__(self, send: Send, receive: Receive, seen: Seen) -> None:
        self._send = send
        self._seen = seen
        self._watch = asyncio.ensure_future(self._watch_disconnect(receive))

    async def _watch_disconnect(self, receive: Receive) -> None:
        await wait_for_disconnect(receive)
        if not self._seen.completed:
            self._seen.client_gone = True

    @property
    def gone(self) -> bool:
        return self._seen.client_gone

    async def start(
        self, status: int, content_type: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        all_headers = [(b"content-type", content_type.encode("latin-1")), *headers]
        await self._send({"type": "http.response.start", "status": status, "headers": all_headers})

    async def chunk(self, data: bytes) -> bool:
        """Send one piece; False if the client is gone (stop producing)."""
        if self.gone:
            return False
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        return not self.gone

    async def end(self) -> None:
        if not self.gone:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            self._seen.completed = True
        self._watch.cancel()

    async def close(self) -> None:
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch


async def sleep_ms(ms: float) -> None:
    if ms > 0:  # not even sleep(0): a loop iteration per request shows in benchmarks
        await asyncio.sleep(ms / 1000)


async def client_left_within(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds`` unless the client disconnects first; True if it did. No wait at all
    for 0 (benchmarks)."""
    if seconds <= 0:
        return False
    try:
        await asyncio.wait_for(wait_for_disconnect(receive), seconds)
    except TimeoutError:
        return False
    return True


async def wait_or_gone(receive: Receive, seen: Seen, seconds: float) -> bool:
    """Sleep ``seconds`` unless the client disconnects first; True (and recorded) if it did."""
    if await client_left_within(receive, seconds):
        seen.client_gone = True
        return True
    return False


class HangingRequests:
    """The requests a fake keeps unanswered (its "hang" mode) until their client leaves or
    the server stops. Stopping must release them: uvicorn's graceful shutdown would otherwise
    wait for them until its timeout."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        """How many requests hang right now."""
        return len(self._waiters)

    def release(self) -> None:
        """End every hanging request; must run on the server's loop (``call_soon``)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def hold(self, send: Send, receive: Receive) -> bool:
        """Hang without blocking the loop until the client leaves (True) or ``release()``:
        then the connection is dropped (False), so that shutdown need not wait for it."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            client_gone = gone.done()
        finally:
            self._waiters.discard(waiter)
            waiter.cancel()
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
        if not client_gone:
            await drop_connection(send, receive)
        return client_gone


class FakeApp(abc.ABC):
    """A fake's raw ASGI app: ``handle`` gets the HTTP requests; the lifespan protocol is
    answered (for servers run with lifespan="on") and "hang" requests are held here."""

    def __init__(self) -> None:
        self.hanging = HangingRequests()

    def release_hanging(self) -> None:
        """End every hanging request; must run on the server's loop."""
        self.hanging.release()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    @abc.abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request."""


AppT = TypeVar("AppT", bound=FakeApp)


class FakeServer(Generic[AppT]):
    """A fake's app on its own thread and loopback port: ``with Fake() as fake: ...``."""

    def __init__(self, app: AppT, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.app = app
        self.server = ThreadedServer(app, host=host, port=port, **config)

    @property
    def root_url(self) -> str:
        return self.server.root_url

    def start(self, timeout: float = 10.0) -> Self:
        self.server.start(timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        # Hanging requests would otherwise hold uvicorn's graceful shutdown until its timeout.
        self.server.call_soon(self.app.release_hanging)
        self.server.stop(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def restore_defaults(behaviour: DataclassInstance, defaults: DataclassInstance) -> None:
    """Give ``behaviour`` every value of ``defaults`` in place: the running app holds that very
    object, so it answers with them from its next request on."""
    for spec in fields(defaults):
        setattr(behaviour, spec.name, getattr(defaults, spec.name))
