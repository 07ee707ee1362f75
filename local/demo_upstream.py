"""A small, fast, OpenAI-compatible FAKE upstream for the Berry gateway.

Used three ways:

* quick start / manual testing: ``python local/demo_upstream.py --port 9001``;
* the gateway's tests: ``with DemoUpstream(Behaviour(mode="fail")) as up: ...`` runs an
  in-process uvicorn server on an ephemeral loopback port (no subprocess), and N of them
  stand in for N independent providers;
* benchmarks: raw ASGI + orjson so that the fake is never the bottleneck.

Its behaviour (latency, failures, broken responses) is a mutable ``Behaviour`` that tests
change either directly (``up.behaviour.mode = "hang"``) or over HTTP
(``POST /_demo/behaviour``), and ``GET /_demo/stats`` reports what the gateway forwarded.

Abrupt-close modes ("close", "cut_stream") need to drop the TCP connection, which plain
ASGI cannot express. Under uvicorn we close the connection's transport directly (FIN, no
further bytes). Under another server the fallback is raising before/while responding,
which the server turns into a 500 or a dropped connection as it sees fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time
import uuid
from typing import Any

import orjson
import uvicorn

from fakes.server import (
    FakeApp,
    FakeServer,
    Receive,
    Scope,
    Send,
    client_left_within,
    drop_connection,
    header,
    read_body,
    send_bytes,
    send_half_then_drop,
    sleep_ms,
)
from fakes.text import split_text

MODES = ("ok", "fail", "hang", "cut_stream", "invalid_json", "wrong_content_type", "close")
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODELS_PATHS = ("/v1/models", "/models")

# OpenAI-style (type, code) per status, so clients' error mapping sees realistic bodies.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclasses.dataclass
class Behaviour:
    """Live knobs of a demo upstream; read on every request, so changes apply at once."""

    name: str = "demo"
    latency_ms: float = 0
    # > 0: latency varies, log-normally around latency_ms (its median) with this sigma.
    latency_sigma: float = 0
    # This share of requests stalls stall_ms before answering (a sometimes-slow backend).
    stall_rate: float = 0.0
    stall_ms: float = 0
    # > 0: every stall_every-th chat request stalls instead (deterministic, for tests).
    stall_every: int = 0
    first_byte_delay_ms: float = 0
    chunk_delay_ms: float = 0
    stream_chunks: int = 5
    failure_rate: float = 0.0
    failure_status: int = 500
    retry_after: int | None = None
    mode: str = "ok"
    model_names: list[str] | None = None
    expected_api_key: str | None = None


def _coerce_field(key: str, value: Any) -> Any:
    """Validate one JSON value for a Behaviour field (raises ValueError/TypeError)."""
    if key in (
        "latency_ms",
        "latency_sigma",
        "stall_rate",
        "stall_ms",
        "first_byte_delay_ms",
        "chunk_delay_ms",
        "failure_rate",
    ):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{key} must be a number")
        return float(value)
    if key in ("stream_chunks", "failure_status", "stall_every") or (
        key == "retry_after" and value is not None
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an integer")
        return value
    if key == "mode" and value not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if key == "model_names" and not (
        value is None or (isinstance(value, list) and all(isinstance(m, str) for m in value))
    ):
        raise TypeError("model_names must be a list of strings or null")
    if key in ("name", "mode") and not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    if key == "expected_api_key" and value is not None and not isinstance(value, str):
        raise TypeError("expected_api_key must be a string or null")
    return value


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "api_error", None)
    )
    return {
        "error": {"message": message, "type": kind, "param": None, "code": code or default_code}
    }


def _text_of(content: Any) -> str:
    # Content may be a string or a list of parts ({"type": "text", "text": ...}).
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _count_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _split(text: str, n: int) -> list[str]:
    """Exactly n non-empty pieces: the text is padded with dots so that each carries some."""
    n = max(n, 1)
    return split_text(text.ljust(n, "."), n)


class DemoApp(FakeApp):
    """The raw ASGI application. ``create_app`` is the public way to build one."""

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.requests = 0
        # Requests whose client hung up while the upstream was still working on them.
        self.disconnects = 0
        self.in_flight = 0
        self.last_request: dict[str, Any] | None = None

    def stats(self) -> dict[str, Any]:
        stats = {
            "requests": self.requests,
            "disconnects": self.disconnects,
            "last_request": self.last_request,
            "in_flight": self.in_flight,
        }
        # A deep copy: safe to hand to another thread.
        copy: dict[str, Any] = orjson.loads(orjson.dumps(stats))
        return copy

    def reset_stats(self) -> None:
        self.requests = 0
        self.disconnects = 0
        self.last_request = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path in CHAT_PATHS and method == "POST":
            await self._chat(scope, receive, send)
        elif path in MODELS_PATHS and method == "GET":
            if not self._authorized(scope):
                await _send_json(send, 401, error_body(401, "Incorrect API key provided."))
                return
            names = self.behaviour.model_names or ["demo-model"]
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "demo"} for n in names]
            await _send_json(send, 200, {"object": "list", "data": data})
        elif path == "/_demo/stats" and method == "GET":
            await _send_json(send, 200, self.stats())
        elif path == "/_demo/behaviour" and method in ("GET", "POST"):
            await self._update_behaviour(
                (await read_body(receive))[0] if method == "POST" else b"{}", send
            )
        elif path == "/_demo/reset-stats" and method == "POST":
            self.reset_stats()
            await _send_json(send, 200, self.stats())
        else:
            await _send_json(
                send, 404, error_body(404, f"Unknown route: {method} {path}", "not_found")
            )

    def _authorized(self, scope: Scope) -> bool:
        key = self.behaviour.expected_api_key
        return key is None or header(scope, b"authorization") == f"Bearer {key}"

    async def _update_behaviour(self, raw: bytes, send: Send) -> None:
        try:
            updates = orjson.loads(raw)
            if not isinstance(updates, dict):
                raise TypeError("body must be a JSON object")
            fields = {f.name for f in dataclasses.fields(Behaviour)}
            unknown = sorted(set(updates) - fields)
            if unknown:
                raise ValueError(f"unknown behaviour field(s): {', '.join(unknown)}")
            checked = {k: _coerce_field(k, v) for k, v in updates.items()}
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            await _send_json(send, 400, error_body(400, str(exc)))
            return
        for key, value in checked.items():  # apply only once everything validated
            setattr(self.behaviour, key, value)
        await _send_json(send, 200, dataclasses.asdict(self.behaviour))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw, _ = await read_body(receive)
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests += 1
        self.last_request = {
            "headers": {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            },
            "body": body,
            "path": scope["path"],
        }
        self.in_flight += 1
        try:
            await self._answer_chat(body, scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer_chat(self, body: Any, scope: Scope, receive: Receive, send: Send) -> None:
        b = self.behaviour
        if b.mode == "hang":
            if await self.hanging.hold(send, receive):
                self.disconnects += 1
            return
        if await client_left_within(receive, self._delay_ms() / 1000):
            self.disconnects += 1
            return
        if b.mode == "close":
            await drop_connection(send, receive)
            return
        if not self._authorized(scope):
            await _send_json(send, 401, error_body(401, "Incorrect API key provided."))
            return
        if not isinstance(body, dict):
            await _send_json(send, 400, error_body(400, "Request body is not a valid JSON object."))
            return
        model = body.get("model")
        if b.model_names is not None and model not in b.model_names:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            await _send_json(send, 404, error_body(404, msg, "model_not_found"))
            return
        if b.mode == "fail" or (b.failure_rate > 0 and random.random() < b.failure_rate):
            extra = (
                [(b"retry-after", str(b.retry_after).encode())] if b.retry_after is not None else []
            )
            msg = f"Demo upstream ({b.name}) failure"
            await _send_json(send, b.failure_status, error_body(b.failure_status, msg), extra)
            return
        if b.mode == "invalid_json":
            await send_bytes(send, 200, b"{not json")
            return
        if b.mode == "wrong_content_type":
            await send_bytes(send, 200, b"<html>oops</html>", "text/html; charset=utf-8")
            return
        if body.get("stream") is True:
            await self._stream(body, send, receive)
        else:
            await self._complete(body, send, receive)

    def _delay_ms(self) -> float:
        b = self.behaviour
        delay = b.latency_ms
        if b.latency_sigma > 0 and delay > 0:
            delay = random.lognormvariate(math.log(delay), b.latency_sigma)
        if b.stall_every > 0:
            if self.requests % b.stall_every == 0:
                delay += b.stall_ms
        elif b.stall_rate > 0 and random.random() < b.stall_rate:
            delay += b.stall_ms
        return delay

    def _reply(self, body: dict[str, Any]) -> tuple[str, str, int, dict[str, int]]:
        text = f"Hello from demo upstream ({self.behaviour.name})"
        prompt = _count_prompt_tokens(body)
        completion = len(text.split())
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return f"chatcmpl-demo-{uuid.uuid4().hex}", text, int(time.time()), usage

    async def _complete(self, body: dict[str, Any], send: Send, receive: Receive) -> None:
        cid, text, created, usage = self._reply(body)
        payload = orjson.dumps(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
        )
        if self.behaviour.mode != "cut_stream":
            await send_bytes(send, 200, payload)
            return
        await send_half_then_drop(send, receive, payload)

    async def _stream(self, body: dict[str, Any], send: Send, receive: Receive) -> None:
        b = self.behaviour
        cid, text, created, usage = self._reply(body)
        envelope = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
        }
        sse_headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await _start(send, 200, sse_headers)
        await sleep_ms(b.first_byte_delay_ms)
        pieces = _split(text, b.stream_chunks)
        for i, piece in enumerate(pieces):
            if i:
                await sleep_ms(b.chunk_delay_ms)
            if b.mode == "cut_stream" and i == 2:
                await drop_connection(send, receive)
                return
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            finish = "stop" if i == len(pieces) - 1 else None
            choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
            # One ASGI message per event so that each reaches the client as it is produced.
            await _body(send, _sse({**envelope, "choices": choices}), more=True)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            await _body(send, _sse({**envelope, "choices": [], "usage": usage}), more=True)
        if b.mode == "cut_stream":  # fewer than 3 chunks configured: still never send [DONE]
            await drop_connection(send, receive)
            return
        await _body(send, b"data: [DONE]\n\n")


def create_app(behaviour: Behaviour) -> DemoApp:
    """Build the ASGI app; ``behaviour`` is used live (mutate it to change responses)."""
    return DemoApp(behaviour)


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _body(send: Send, payload: bytes, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": payload, "more_body": more})


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _send_json(
    send: Send, status: int, obj: Any, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_bytes(send, status, orjson.dumps(obj), headers=extra_headers)


class DemoUpstream(FakeServer[DemoApp]):
    """An in-process demo upstream on its own thread and event loop (tests, benchmarks)."""

    def __init__(
        self, behaviour: Behaviour | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        app = create_app(behaviour if behaviour is not None else Behaviour())
        super().__init__(app, host, port)

    @property
    def behaviour(self) -> Behaviour:
        return self.app.behaviour

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def stats(self) -> dict[str, Any]:
        return self.app.stats()

    def reset_stats(self) -> None:
        self.app.reset_stats()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible fake upstream for Berry")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="demo")
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--latency-sigma", type=float, default=0, help="log-normal jitter")
    parser.add_argument("--stall-rate", type=float, default=0.0)
    parser.add_argument("--stall-ms", type=float, default=0)
    parser.add_argument("--first-byte-delay-ms", type=float, default=0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0)
    parser.add_argument("--stream-chunks", type=int, default=5)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--failure-status", type=int, default=500)
    parser.add_argument("--retry-after", type=int, default=None)
    parser.add_argument("--models", default=None, help="comma-separated model names to accept")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>'")
    args = parser.parse_args(argv)
    behaviour = Behaviour(
        name=args.name,
        mode=args.mode,
        latency_ms=args.latency_ms,
        latency_sigma=args.latency_sigma,
        stall_rate=args.stall_rate,
        stall_ms=args.stall_ms,
        first_byte_delay_ms=args.first_byte_delay_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        stream_chunks=args.stream_chunks,
        failure_rate=args.failure_rate,
        failure_status=args.failure_status,
        retry_after=args.retry_after,
        model_names=[m.strip() for m in args.models.split(",") if m.strip()]
        if args.models
        else None,
        expected_api_key=args.api_key,
    )
    print(
        f"demo upstream '{args.name}' on http://{args.host}:{args.port}/v1 (mode={args.mode})",
        file=sys.stderr,
    )
    # loop/http "auto" pick uvloop and httptools when installed: the fake must stay cheap.
    # The graceful-shutdown bound keeps Ctrl-C from waiting forever on "hang" requests.
    uvicorn.run(
        create_app(behaviour),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
