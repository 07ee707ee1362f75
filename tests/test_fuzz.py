"""Bad input, generated: hypothesis and schemathesis against a running Berry, plus clients
that walk away mid-stream.

Whatever arrives (any JSON, any bytes, any header value, any path, any model name) Berry
answers without a 5xx, with an OpenAI-shaped error for every 4xx, without a stack trace and
without a secret. Hypothesis keeps no example database (``database=None``): each run draws
fresh examples, and a failure prints the example that reproduces it.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from berry_handlers.local import create_app
from support import (
    ADMIN_TOKEN,
    USER_TOKEN,
    Berry,
    DemoUpstream,
    build_config,
    provider_key,
)

HTTP = httpx.Client(timeout=20)
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
SECRETS = (provider_key("up"), USER_TOKEN, ADMIN_TOKEN)
LEAKS = ("Traceback", 'File "', *SECRETS)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


@pytest.fixture(scope="module")
def fuzz_berry() -> Iterator[Berry]:
    """One Berry for the whole module: a healthy upstream, an admin and a restricted user."""
    upstream = DemoUpstream().start()
    upstream.behaviour.name = "fuzz"
    berry = Berry(build_config({"up": upstream})).start()
    try:
        yield berry
    finally:
        berry.stop()
        upstream.stop()


# -- what every answer must be ----------------------------------------------------------------


def check_answer(status: int, headers: Any, body: bytes, method: str = "POST") -> None:
    text = body.decode("utf-8", "replace")
    assert status < 500, f"{status}: {text[:500]}"
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} in the answer: {text[:500]}"
        assert all(leak not in str(v) for v in headers.values()), f"{leak!r} in a header"
    if 400 <= status < 500 and method != "HEAD":
        content_type = headers.get("content-type", "")
        assert content_type.startswith("application/json"), (status, content_type, text[:200])
        payload = orjson.loads(body)
        assert isinstance(payload, dict) and set(payload) == {"error"}, text[:500]
        error = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}, text[:500]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and error["type"]


def check_response(response: httpx.Response) -> None:
    check_answer(response.status_code, response.headers, response.content, response.request.method)


def check_chat_success(response: httpx.Response, stream: bool) -> None:
    """A 200 from the chat route is a real completion, never something half-made."""
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            line.removeprefix("data: ")
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]
        assert events[-1] == "[DONE]", response.text[-300:]
        for event in events[:-1]:
            assert orjson.loads(event)["object"] == "chat.completion.chunk"
    else:
        assert orjson.loads(response.content)["object"] == "chat.completion"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def post_chat(berry: Berry, content: bytes, token: str = USER_TOKEN, **headers: str):
    return HTTP.post(
        f"{berry.url}{CHAT}",
        content=content,
        headers={"Authorization": f"Bearer {token}", **headers},
    )


# -- strategies ---------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
model_names = st.text(max_size=60) | st.sampled_from(
    ["test-model", "test-model ", "TEST-MODEL", "up-model", "../test-model", "test-model\x00"]
)
valid_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]) | st.text(max_size=10)},
        optional={"content": json_values, "name": st.text(max_size=10)},
    ),
    min_size=1,
    max_size=3,
)
chat_bodies = st.fixed_dictionaries(
    {
        "model": st.just("test-model") | model_names | json_values,
        "messages": valid_messages | json_values,
    },
    optional={
        "stream": st.booleans() | json_values,
        "backend": st.just("up") | st.text(max_size=10) | json_values,
        "temperature": json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | json_values,
        "tools": json_values,
    },
)
# RFC 7230 field values: visible ASCII and obs-text, inner spaces and tabs.
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
).map(lambda value: value.strip(" \t"))


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    """A real token with one character changed, cut short, or lengthened."""
    token = draw(st.sampled_from([USER_TOKEN, ADMIN_TOKEN]))
    index = draw(st.integers(0, len(token) - 1))
    char = draw(st.characters(min_codepoint=0x21, max_codepoint=0x7E))
    choice = draw(st.sampled_from(["replace", "cut", "extend", "case"]))
    if choice == "replace":
        return token[:index] + char + token[index + 1 :]
    if choice == "cut":
        return token[:index]
    if choice == "extend":
        return token + char
    return token.upper()


authorization_values = (
    header_values
    | header_values.map(lambda v: f"Bearer {v}")
    | mutated_tokens().map(lambda t: f"Bearer {t}")
    | mutated_tokens().map(lambda t: f"bearer\t{t}")
    | st.sampled_from([USER_TOKEN, ADMIN_TOKEN]).map(lambda t: f"Basic {t}")
).map(lambda value: value.strip(" \t"))  # h11 refuses to send surrounding whitespace


# -- hypothesis: bodies ----------------------------------------------------------------------


@FUZZ
@given(body=json_values)
def test_any_json_value_as_the_chat_body(fuzz_berry: Berry, body: Any) -> None:
    response = post_chat(fuzz_berry, orjson.dumps(body))
    check_response(response)
    assert response.status_code in (400, 404), response.text  # never reaches a backend


@FUZZ
@given(body=chat_bodies)
def test_chat_shaped_bodies_with_any_field_values(fuzz_berry: Berry, body: dict) -> None:
    response = post_chat(fuzz_berry, orjson.dumps(body))
    check_response(response)
    if response.status_code == 200:
        check_chat_success(response, body.get("stream") is True)
    else:
        assert response.status_code in (400, 403, 404), response.text


@FUZZ
@given(body=st.binary(max_size=4096))
def test_any_bytes_as_the_chat_body(fuzz_berry: Berry, body: bytes) -> None:
    response = post_chat(fuzz_berry, body, **{"Content-Type": "application/octet-stream"})
    check_response(response)
    assert response.status_code == 400, response.text


# -- hypothesis: headers ------------------------------------------------------------------------


@FUZZ
@given(
    authorization=authorization_values,
    extra=st.dictionaries(
        st.sampled_from(
            [
                "content-type",
                "accept",
                "accept-encoding",
                "cookie",
                "origin",
                "x-forwarded-for",
                "x-forwarded-proto",
                "openai-organization",
                "user-agent",
                "x-request-id",
                "host",
            ]
        )
        | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(
            lambda name: f"x-fuzz-{name}"
        ),
        header_values,
        max_size=4,
    ),
    path=st.sampled_from([CHAT, "/v1/models", "/admin/system-stats", "/admin/model-weights"]),
)
def test_any_header_values(fuzz_berry: Berry, authorization: str, extra: dict, path: str) -> None:
    headers = [("authorization", authorization), *extra.items()]
    raw = [(k.encode(), v.encode("latin-1")) for k, v in headers]
    method = "POST" if path == CHAT else "GET"
    body = orjson.dumps({"model": "test-model", "messages": MESSAGES}) if method == "POST" else None
    response = HTTP.request(method, f"{fuzz_berry.url}{path}", content=body, headers=raw)
    check_response(response)
    if response.status_code < 400:
        # Only a header that carries a real token may authenticate.
        assert any(token in authorization for token in (USER_TOKEN, ADMIN_TOKEN)), authorization
    else:
        assert response.status_code in (401, 403), response.text


# -- hypothesis: paths ------------------------------------------------------------------------

PATH_PREFIXES = ["", "/v1", "/v1/chat", "/admin", "/smart-ai", "/smart-ai/models", "/models"]
# RFC 3986 pchar without "%", plus printable ASCII that clients send unescaped anyway; the
# rest (controls, non-ASCII) goes in percent-encoded: raw, uvicorn refuses the request line
# with its own plain-text 400 before Berry sees it.
PCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/"
PCHARS += '"<>{}\\^`|#?[]'

path_pieces = st.lists(
    st.text(alphabet=PCHARS, max_size=12)
    | st.text(max_size=8).map(lambda s: quote(s, safe=""))
    | st.sampled_from(["..", ".", "//", "%2e%2e", "%2F", "%00", "%ff", "weights", "chat"]),
    max_size=6,
)


def raw_request(
    berry: Berry, method: str, target: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with the target exactly as given (httpx would normalise dot segments)."""
    connection = http.client.HTTPConnection("127.0.0.1", berry.port, timeout=20)
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    prefix=st.sampled_from(PATH_PREFIXES),
    pieces=path_pieces,
    query=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
    token=st.sampled_from([ADMIN_TOKEN, USER_TOKEN, ""]),
)
def test_any_path(
    fuzz_berry: Berry, method: str, prefix: str, pieces: list, query: dict, token: str
) -> None:
    target = prefix + "/" + "/".join(pieces)
    if query:
        target += "?" + urlencode(query)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, response_headers, body = raw_request(fuzz_berry, method, target, headers)
    check_answer(status, response_headers, body, method)
    if token != ADMIN_TOKEN:  # no spelling of a path hands admin documents to anyone else
        for admin_only_key in (b'"backend_health"', b'"model_stats"', b'"total_models"'):
            assert admin_only_key not in body, (target, status)


# -- hypothesis: model names --------------------------------------------------------------------


@FUZZ
@given(name=model_names, token=st.sampled_from([USER_TOKEN, ADMIN_TOKEN]))
def test_any_model_name(fuzz_berry: Berry, name: str, token: str) -> None:
    chat = post_chat(fuzz_berry, orjson.dumps({"model": name, "messages": MESSAGES}), token)
    check_response(chat)
    if chat.status_code == 200:
        assert name == "test-model"
    else:
        assert chat.status_code in (400, 404), chat.text  # blank names are 400
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    weights = HTTP.get(
        f"{fuzz_berry.url}/admin/model-weights", params={"model": name}, headers=admin
    )
    check_response(weights)
    assert weights.status_code == (200 if name == "test-model" else 404), weights.text
    status, headers, body = raw_request(
        fuzz_berry, "GET", f"/smart-ai/models/{quote(name, safe='')}/weights", {}
    )
    check_answer(status, headers, body, "GET")
    assert status in (200, 404), body


# -- hand-picked hostile bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model": "test-model", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "test-model", "messages": [{"role": "user", "content": "\\udfff"}]}',
        b'{"model": "test-model", "messages": [{"role": "user"}], "n": 1e400}',
        b'{"model": "test-model", "messages": [{"role": "user"}], "n": NaN}',
        b'{"model": "test-model", "messages": [{"role": "user"}]} trailing',
        b"\xef\xbb\xbf" + orjson.dumps({"model": "test-model", "messages": MESSAGES}),
        orjson.dumps({"model": "test-model", "messages": MESSAGES}).replace(b"{", b"{\x00", 1),
    ],
    ids=[
        "deep-array",
        "deep-messages",
        "lone-surrogate-model",
        "lone-surrogate-content",
        "overflowing-number",
        "nan",
        "trailing-garbage",
        "utf8-bom",
        "nul-byte",
    ],
)
def test_hostile_json_is_a_clean_400(fuzz_berry: Berry, body: bytes) -> None:
    response = post_chat(fuzz_berry, body)
    check_response(response)
    assert response.status_code == 400, response.text


# -- schemathesis against Berry's own OpenAPI schema --------------------------------------------
#
# The schema is the document the local app serves at /openapi.json (``create_app().openapi()``,
# read at import: no server needed to collect the tests); every generated case is then sent
# over HTTP to the running ``fuzz_berry``. ``test_the_served_schema_is_the_one_fuzzed`` checks
# that both are the same document. (``schemathesis.pytest.from_fixture`` would load it from
# the live server instead, but its lazy loader reads ``request.node._nodeid``, which pytest 9
# no longer has: AttributeError.)

schema = schemathesis.openapi.from_dict(create_app().openapi())


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """Half of the generated chat bodies name the real model, so some reach a backend."""
    operation = getattr(context, "operation", None)
    if operation is not None and operation.path == CHAT and isinstance(body, dict):
        return st.sampled_from([body, {**body, "model": "test-model"}])
    return st.just(body)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_operations_never_fail_and_speak_openai_errors(
    case: Any, fuzz_berry: Berry
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = case.call(base_url=fuzz_berry.url, headers=admin, timeout=20)
    headers = {k: ", ".join(v) for k, v in response.headers.items()}
    check_answer(response.status_code, headers, response.content, case.method.upper())
    if case.path == CHAT and response.status_code == 200:
        stream = isinstance(case.body, dict) and case.body.get("stream") is True
        expected = "text/event-stream" if stream else "application/json"
        assert headers["content-type"].startswith(expected)


def test_the_served_schema_is_the_one_fuzzed(fuzz_berry: Berry) -> None:
    assert HTTP.get(f"{fuzz_berry.url}/openapi.json").json() == schema.raw_schema


def test_the_chat_route_documents_its_body(fuzz_berry: Berry) -> None:
    """Schemathesis can only fuzz what the schema describes: the chat body must be there."""
    document = HTTP.get(f"{fuzz_berry.url}/openapi.json").json()
    body = document["paths"][CHAT]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]["application/json"]["schema"]["required"]) == {"model", "messages"}
    assert not any(path.startswith("/_") for path in document["paths"])


def test_fuzzing_left_no_trace(fuzz_berry: Berry) -> None:
    """After everything above (when run with it): no state was corrupted by bad input."""
    state = fuzz_berry.state("up:up-model")
    assert state.failures == 0 and state.consecutive_failures == 0  # clients' mistakes only
    assert HTTP.get(f"{fuzz_berry.url}/health").status_code == 200
    for stream in (False, True):
        body = orjson.dumps({"model": "test-model", "messages": MESSAGES, "stream": stream})
        response = post_chat(fuzz_berry, body)
        assert response.status_code == 200
        check_chat_success(response, stream)
    service = HTTP.get(f"{fuzz_berry.url}/metrics").json()["service"]
    assert service["successful_requests"] == service["total_requests"]
    text = HTTP.get(f"{fuzz_berry.url}/prometheus").text
    statuses = {
        s.labels["status"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "berry_api_http_requests_total"
    }
    assert not any(status.startswith("5") for status in statuses), statuses


# -- clients that walk away mid-stream ---------------------------------------------------------

DISCONNECTS = 500


def _open_connections_to(port: int) -> int:
    """ESTABLISHED TCP connections whose local port is ``port`` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":
                count += 1
    return count


async def _abort_after_first_chunk(url: str, count: int, concurrency: int) -> int:
    limits = httpx.Limits(max_connections=concurrency)
    body = orjson.dumps({"model": "test-model", "messages": MESSAGES, "stream": True})
    headers = {"Authorization": f"Bearer {USER_TOKEN}"}
    first_chunks = 0
    async with httpx.AsyncClient(limits=limits, timeout=20) as client:

        async def worker(n: int) -> None:
            nonlocal first_chunks
            for _ in range(n):
                async with client.stream(
                    "POST", f"{url}{CHAT}", content=body, headers=headers
                ) as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_raw():
                        assert chunk.startswith(b"data: ")
                        first_chunks += 1
                        break  # leaving the block closes the connection mid-stream

        per_worker = count // concurrency
        await asyncio.wait_for(
            asyncio.gather(*(worker(per_worker) for _ in range(concurrency))), timeout=60
        )
    return first_chunks


def test_clients_leaving_mid_stream_free_every_upstream_connection(
    make_upstream, start_berry
) -> None:
    # 40 chunks 100 ms apart: each stream would run for 4 s if nobody hung up.
    slow = make_upstream(name="slow", stream_chunks=40, chunk_delay_ms=100)
    berry = start_berry(build_config({"slow": slow}))
    started = time.monotonic()
    first_chunks = asyncio.run(_abort_after_first_chunk(berry.url, DISCONNECTS, 50))
    assert first_chunks == DISCONNECTS
    assert slow.stats()["requests"] == DISCONNECTS
    # Berry hangs up on the upstream as soon as its client is gone, long before the
    # streams would have ended: no upstream socket is left open.
    wait_for(lambda: _open_connections_to(slow.port) == 0, 3, "upstream sockets to close")
    assert slow.stats()["in_flight"] > 0, "too late to tell: the upstream streams had ended"
    assert time.monotonic() - started < 10
    # Nothing is left checked out of Berry's aiohttp pool (read-only peek at its connector).
    session = getattr(berry.gateway.transport, "_session", None)
    acquired = getattr(getattr(session, "connector", None), "_acquired", None)
    if acquired is not None:
        assert len(acquired) == 0
    text = HTTP.get(f"{berry.url}/prometheus").text
    gauge = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "berry_api_http_requests_in_flight"
    ]
    assert gauge == [1.0]  # only the scrape itself
    # The fake upstream keeps writing into the closed sockets until its loop ends; then
    # every one of its requests is finished too.
    wait_for(lambda: slow.stats()["in_flight"] == 0, 10, "the upstream streams to end")
    # Berry still serves normally afterwards.
    done = post_chat(berry, orjson.dumps({"model": "test-model", "messages": MESSAGES}))
    assert done.status_code == 200
