"""What the fakes share (local/fakes/server.py).

Real servers on loopback and httpx as the client: stopping any of the four fakes ends the
requests it keeps hanging (else uvicorn's graceful shutdown would wait for them), and
``read_request`` tells an empty body, JSON (``null`` included) and a body that is not JSON
apart, as every fake relies on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

import support  # noqa: F401  (puts local/ on sys.path)
from demo_upstream import Behaviour as DemoBehaviour
from demo_upstream import DemoUpstream
from dialect_support import HELLO, wait_for
from fakes.anthropic import LEGACY_VERSION, FakeAnthropic
from fakes.anthropic import Behaviour as AnthropicBehaviour
from fakes.bedrock import Behaviour as BedrockBehaviour
from fakes.bedrock import FakeBedrock
from fakes.gemini import Behaviour as GeminiBehaviour
from fakes.gemini import FakeGemini
from fakes.server import (
    FakeApp,
    FakeServer,
    Receive,
    Recorder,
    Scope,
    Send,
    read_request,
    send_bytes,
)

BEDROCK_KEY = "bedrock-api-key-0123"


# Each fake in its "hang" mode, and a request it accepts (path, JSON body, headers).
Hanging = tuple[FakeServer[Any], str, dict[str, Any], dict[str, str]]


def hanging_demo() -> Hanging:
    fake = DemoUpstream(DemoBehaviour(mode="hang"))
    return fake, "/v1/chat/completions", {"model": "m", "messages": HELLO}, {}


def hanging_anthropic() -> Hanging:
    fake = FakeAnthropic(behaviour=AnthropicBehaviour(mode="hang"))
    headers = {"x-api-key": fake.api_key, "anthropic-version": LEGACY_VERSION}
    body = {"model": "claude-fake", "max_tokens": 10, "messages": HELLO}
    return fake, "/v1/messages", body, headers


def hanging_gemini() -> Hanging:
    fake = FakeGemini(behaviour=GeminiBehaviour(mode="hang"))
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    return fake, path, body, {"x-goog-api-key": fake.api_key}


def hanging_bedrock() -> Hanging:
    fake = FakeBedrock(BedrockBehaviour(mode="hang"), api_key=BEDROCK_KEY)
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    return fake, path, body, {"authorization": f"Bearer {BEDROCK_KEY}"}


@pytest.mark.parametrize(
    "hanging",
    [hanging_demo, hanging_anthropic, hanging_gemini, hanging_bedrock],
    ids=["demo", "anthropic", "gemini", "bedrock"],
)
def test_stop_drops_the_requests_a_fake_keeps_hanging(
    hanging: Callable[[], Hanging],
) -> None:
    fake, path, body, headers = hanging()
    outcome: list[BaseException | httpx.Response] = []

    def call() -> None:
        try:
            response = httpx.post(f"{fake.root_url}{path}", json=body, headers=headers, timeout=60)
            outcome.append(response)
        except httpx.HTTPError as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    with fake:
        caller.start()
        assert wait_for(lambda: len(fake.app.hanging) == 1)
    caller.join(30)  # the fake stopped as the with block ended

    assert not caller.is_alive()
    # Dropped without an answer: neither a response nor the client's own timeout.
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)
    assert len(fake.app.hanging) == 0


class EchoArrival(FakeApp):
    """Answers with what ``read_request`` made of the request, and records it."""

    def __init__(self) -> None:
        super().__init__()
        self.recorder = Recorder()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen, malformed, gone = await read_request(scope, receive, self.recorder)
        answer = {"json": seen.json, "malformed": malformed, "gone": gone}
        await send_bytes(send, 200, orjson.dumps(answer))


@pytest.mark.parametrize(
    ("body", "parsed", "malformed"),
    [
        (b"", None, False),
        (b"null", None, False),
        (b"{not json", None, True),
        (b'{"a": [1, 2]}', {"a": [1, 2]}, False),
    ],
    ids=["empty", "null", "not-json", "object"],
)
def test_read_request_parses_and_records_the_body(
    body: bytes, parsed: Any, malformed: bool
) -> None:
    app = EchoArrival()
    with FakeServer(app) as server:
        response = httpx.post(f"{server.root_url}/any?x=1", content=body, timeout=10)
    assert response.json() == {"json": parsed, "malformed": malformed, "gone": False}
    (seen,) = app.recorder.requests
    assert (seen.method, seen.path, seen.query, seen.body, seen.json) == (
        "POST",
        "/any",
        "x=1",
        body,
        parsed,
    )
