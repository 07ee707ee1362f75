"""Tests for the fake OpenAI-compatible upstream in local/demo_upstream.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

import support  # noqa: F401  (puts local/ on sys.path)
from demo_upstream import Behaviour, DemoUpstream
from fakes.server import restore_defaults

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "say hello to me"}]  # 4 "tokens"


@pytest.fixture(scope="module")
def upstream() -> Iterator[DemoUpstream]:
    # One server for the module keeps the file fast; each test resets its state below.
    with DemoUpstream(Behaviour(name="unit")) as up:
        yield up


@pytest.fixture
def client(upstream: DemoUpstream) -> Iterator[httpx.Client]:
    restore_defaults(upstream.behaviour, Behaviour(name="unit"))
    upstream.reset_stats()
    with httpx.Client(base_url=upstream.base_url.removesuffix("/v1"), timeout=5) as c:
        yield c


def _set(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = client.post("/_demo/behaviour", json=changes)
    assert response.status_code == 200, response.text
    return response.json()


def _sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line]


def test_port_zero_reports_bound_port(upstream: DemoUpstream) -> None:
    assert upstream.port > 0
    assert upstream.base_url == f"http://127.0.0.1:{upstream.port}/v1"


def test_non_stream_shape_and_usage(client: httpx.Client) -> None:
    response = client.post(CHAT, json={"model": "gpt-x", "messages": MESSAGES})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-x"
    assert data["id"].startswith("chatcmpl-")
    [choice] = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello from demo upstream (unit)"}
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_unprefixed_path_and_models(client: httpx.Client) -> None:
    assert client.post("/chat/completions", json={"model": "m", "messages": []}).status_code == 200
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["demo-model"]
    _set(client, model_names=["a", "b"])
    assert [m["id"] for m in client.get("/models").json()["data"]] == ["a", "b"]
    missing = client.post(CHAT, json={"model": "c", "messages": []})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    unknown = client.get("/v1/nope")
    assert unknown.status_code == 404 and set(unknown.json()["error"]) >= {"message", "type"}


def test_stream_chunks_done_and_usage(client: httpx.Client) -> None:
    _set(client, stream_chunks=4)
    body = {
        "model": "gpt-x",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    content, usage_chunk = chunks[:-1], chunks[-1]
    assert len(content) == 4
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-x" for c in chunks)
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in content] == [None, None, None, "stop"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == "Hello from demo upstream (unit)"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] == 9

    # Without include_usage: only the content chunks, then [DONE].
    with client.stream("POST", CHAT, json={"model": "m", "stream": True}) as response:
        events = _sse_events(response)
    assert len(events) == 5 and events[-1] == "[DONE]"


def test_behaviour_endpoint_validation(client: httpx.Client) -> None:
    assert client.post("/_demo/behaviour", json={"nope": 1}).status_code == 400
    assert client.post("/_demo/behaviour", json={"mode": "sideways"}).status_code == 400
    assert client.post("/_demo/behaviour", content=b"{bad").status_code == 400
    current = _set(client, latency_ms=1, name="renamed")
    assert current["latency_ms"] == 1 and current["name"] == "renamed"


def test_fail_with_retry_after(client: httpx.Client) -> None:
    _set(client, mode="fail", failure_status=503, retry_after=7)
    response = client.post(CHAT, json={"model": "m", "messages": MESSAGES})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    # failure_rate=1 fails too, even in "ok" mode.
    _set(client, mode="ok", failure_rate=1.0, failure_status=429, retry_after=None)
    response = client.post(CHAT, json={"model": "m", "stream": True})
    assert response.status_code == 429 and "retry-after" not in response.headers


def test_auth_and_invalid_request_body(client: httpx.Client, upstream: DemoUpstream) -> None:
    upstream.behaviour.expected_api_key = "sk-up"  # the live object, mutated from the test
    assert client.post(CHAT, json={"model": "m"}).status_code == 401
    ok = client.post(CHAT, json={"model": "m"}, headers={"Authorization": "Bearer sk-up"})
    assert ok.status_code == 200
    bad = client.post(CHAT, content=b"{nope", headers={"Authorization": "Bearer sk-up"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_hang_times_out_without_blocking_others(
    client: httpx.Client, upstream: DemoUpstream
) -> None:
    _set(client, mode="hang")
    outcome: list[BaseException] = []

    def hanging_call() -> None:
        try:
            httpx.post(upstream.base_url + "/chat/completions", json={"model": "m"}, timeout=0.5)
        except httpx.TimeoutException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=hanging_call)
    worker.start()
    deadline = time.monotonic() + 2
    while client.get("/_demo/stats").json()["in_flight"] != 1:  # served while the other hangs
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.join(3)
    assert len(outcome) == 1
    deadline = time.monotonic() + 2
    while client.get("/_demo/stats").json()["in_flight"] != 0:  # released on disconnect
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_cut_stream_ends_without_done(client: httpx.Client) -> None:
    _set(client, mode="cut_stream")
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", CHAT, json={"model": "m", "stream": True}) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                received.append(line)
    assert len(received) == 2 and all(line.startswith("data: {") for line in received)
    # Non-stream: Content-Length promises more than is sent.
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(CHAT, json={"model": "m"})


def test_close_drops_connection_without_response(client: httpx.Client) -> None:
    _set(client, mode="close")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        client.post(CHAT, json={"model": "m"})


def test_invalid_json_and_wrong_content_type(client: httpx.Client) -> None:
    _set(client, mode="invalid_json")
    response = client.post(CHAT, json={"model": "m"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == "{not json"
    _set(client, mode="wrong_content_type")
    response = client.post(CHAT, json={"model": "m", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<html>oops</html>"


def test_stats_record_last_request(client: httpx.Client, upstream: DemoUpstream) -> None:
    body = {"model": "rewritten", "messages": MESSAGES, "x_unknown_field": {"kept": True}}
    headers = {"Authorization": "Bearer sk-forwarded", "X-Trace": "abc"}
    client.post(CHAT, json={"model": "first", "messages": []})
    client.post(CHAT, json=body, headers=headers)
    stats = client.get("/_demo/stats").json()
    assert stats["requests"] == 2 and stats["in_flight"] == 0
    last = stats["last_request"]
    assert last["path"] == CHAT
    assert last["body"] == body
    assert last["headers"]["authorization"] == "Bearer sk-forwarded"
    assert last["headers"]["x-trace"] == "abc"
    assert upstream.stats() == stats  # in-process view matches the HTTP one
    assert client.post("/_demo/reset-stats").json()["requests"] == 0
    assert upstream.stats()["last_request"] is None


async def test_independent_upstreams_async() -> None:
    # Several upstreams side by side, as the gateway tests use them.
    with DemoUpstream(Behaviour(name="a")) as a, DemoUpstream(Behaviour(name="b")) as b:
        assert a.port != b.port
        async with httpx.AsyncClient(timeout=5) as http:
            for up, name in ((a, "a"), (b, "b")):
                response = await http.post(f"{up.base_url}/chat/completions", json={"model": "m"})
                assert response.json()["choices"][0]["message"]["content"].endswith(f"({name})")
