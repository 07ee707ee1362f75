"""The chat relay end to end: the official openai SDK and raw httpx against a real Berry."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from support import ADMIN_TOKEN, USER_TOKEN, Berry, build_config, provider_key

# One pooled client: a fresh httpx client per call costs ~20 ms of TLS context set-up.
HTTP = httpx.Client(timeout=20)
MESSAGES = [{"role": "user", "content": "hello there"}]


def client(berry: Berry, token: str = USER_TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=berry.base_url, api_key=token, max_retries=0, timeout=10)


def post(berry: Berry, body: object, token: str | None = USER_TOKEN, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) or hasattr(body, "__next__") else orjson.dumps(body)
    return HTTP.post(
        f"{berry.base_url}/chat/completions", content=content, headers=headers, timeout=10, **kwargs
    )


def test_non_stream_with_the_openai_sdk(berry: Berry) -> None:
    raw = client(berry).chat.completions.with_raw_response.create(
        model="test-model", messages=MESSAGES
    )
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("Hello from demo upstream")
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-berry-backend"] in {"a:up-model", "b:up-model"}
    assert raw.headers["x-berry-attempts"] == "1"
    assert float(raw.headers["x-berry-overhead-ms"]) >= 0


def test_stream_with_the_openai_sdk(berry: Berry) -> None:
    stream = client(berry).chat.completions.create(
        model="test-model",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from demo upstream")
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_stream_is_relayed_chunk_by_chunk_as_it_arrives(make_upstream, start_berry) -> None:
    # 5 chunks 300 ms apart: a buffering relay would deliver everything after ~1.2 s at once.
    slow = make_upstream(name="slow", stream_chunks=5, chunk_delay_ms=300)
    berry = start_berry(build_config({"slow": slow}))
    import time

    arrivals = []
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{berry.base_url}/chat/completions",
        json={"model": "test-model", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.perf_counter() - started, line))
    assert arrivals[-1][1] == "data: [DONE]"
    content = [t for t, line in arrivals if line != "data: [DONE]"]
    assert len(content) == 5
    # The first chunk arrived long before the last: they came as produced, not buffered.
    assert content[-1] - content[0] > 0.9


def test_body_is_forwarded_unchanged_but_model_and_backend(berry: Berry, two_upstreams) -> None:
    body = {
        "model": "test-model",
        "messages": MESSAGES,
        "temperature": 0.25,
        "custom_vendor_field": {"nested": [1, 2, 3]},
        "backend": "b",
    }
    response = post(berry, body)
    assert response.status_code == 200
    assert response.headers["x-berry-backend"] == "b:up-model"
    forwarded = two_upstreams["b"].stats()["last_request"]
    assert forwarded["body"] == {
        "model": "up-model",
        "messages": MESSAGES,
        "temperature": 0.25,
        "custom_vendor_field": {"nested": [1, 2, 3]},
    }
    # The caller's token is never forwarded: the provider's own key is sent instead.
    assert forwarded["headers"]["authorization"] == f"Bearer {provider_key('b')}"
    assert two_upstreams["a"].stats()["requests"] == 0


def test_upstream_answer_reaches_the_client_as_it_came(berry: Berry, two_upstreams) -> None:
    response = post(berry, {"model": "test-model", "messages": MESSAGES, "backend": "a"})
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "up-model"  # the upstream's answer, not rewritten back
    assert body["choices"][0]["message"]["content"] == "Hello from demo upstream (a)"


def test_backend_pin_to_unknown_provider_is_a_clear_400(berry: Berry) -> None:
    response = post(berry, {"model": "test-model", "messages": MESSAGES, "backend": "zzz"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "backend"


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "", "/"])
def test_base_url_with_or_without_v1(make_upstream, start_berry, suffix: str) -> None:
    upstream = make_upstream(name="u")
    config = build_config({"u": upstream})
    provider = config.providers["u"].model_copy(update={"base_url": upstream.root_url + suffix})
    config = config.model_copy(update={"providers": {"u": provider}})
    berry = start_berry(config)
    assert post(berry, {"model": "test-model", "messages": MESSAGES}).status_code == 200
    assert upstream.stats()["last_request"]["path"] == "/v1/chat/completions"


def test_models_lists_only_what_the_caller_may_use(make_upstream, start_berry) -> None:
    upstream = make_upstream()
    config = build_config(
        {"u": upstream},
        models={"open-model": [{"provider": "u"}], "secret-model": [{"provider": "u"}]},
        users={
            "admin": {"name": "Admin", "token": ADMIN_TOKEN},
            "user": {"name": "User", "token": USER_TOKEN, "allowed_models": ["open-model"]},
        },
    )
    berry = start_berry(config)
    user_ids = [m.id for m in client(berry).models.list()]
    admin_ids = sorted(m.id for m in client(berry, ADMIN_TOKEN).models.list())
    assert user_ids == ["open-model"]
    assert admin_ids == ["open-model", "secret-model"]
    plain = HTTP.get(f"{berry.url}/models", headers={"Authorization": f"Bearer {USER_TOKEN}"})
    assert plain.json()["data"][0]["owned_by"] == "berry-api"
    with pytest.raises(openai.PermissionDeniedError):
        client(berry).chat.completions.create(model="secret-model", messages=MESSAGES)


def test_auth_errors_are_openai_shaped(berry: Berry) -> None:
    for token, status in [(None, 401), ("wrong-token-0123456789", 401)]:
        response = post(berry, {"model": "test-model", "messages": MESSAGES}, token=token)
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        client(berry, "wrong-token-0123456789").chat.completions.create(
            model="test-model", messages=MESSAGES
        )
    assert HTTP.get(f"{berry.base_url}/models").status_code == 401


def test_disabled_user_is_rejected(make_upstream, start_berry) -> None:
    upstream = make_upstream()
    config = build_config(
        {"u": upstream},
        users={
            "off": {"name": "Off", "token": USER_TOKEN, "enabled": False},
        },
    )
    berry = start_berry(config)
    response = post(berry, {"model": "test-model", "messages": MESSAGES})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_disabled"


def test_user_tags_pick_backends(make_upstream, start_berry) -> None:
    fast, cheap = make_upstream(name="fast"), make_upstream(name="cheap")
    config = build_config(
        {"fast": fast, "cheap": cheap},
        models={
            "test-model": [
                {"provider": "fast", "tags": ["fast"]},
                {"provider": "cheap", "tags": ["cheap"]},
            ]
        },
        users={"tagged": {"name": "T", "token": USER_TOKEN, "tags": ["cheap"]}},
    )
    berry = start_berry(config)
    for _ in range(20):
        response = post(berry, {"model": "test-model", "messages": MESSAGES})
        assert response.headers["x-berry-backend"] == "cheap:up-model"
    assert fast.stats()["requests"] == 0


def test_health_endpoints(berry: Berry) -> None:
    post(berry, {"model": "test-model", "messages": MESSAGES})
    health = HTTP.get(f"{berry.url}/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy" and body["service_running"] is True
    assert body["summary"]["model_health"] == {"total": 1, "healthy": 1, "ratio": 1.0}
    assert set(body["providers"]["a"]) == {"name", "base_url", "healthy", "enabled", "models"}
    assert set(body["providers"]["a"]["models"]["up-model"]) == {
        "healthy",
        "latency_ms",
        "failure_count",
        "backend_key",
    }
    model = body["models"]["test-model"]
    assert model["total_backends"] == 2 and model["healthy_backends"] == 2
    assert body["unhealthy_backends"] == []
    short = HTTP.get(f"{berry.url}/v1/health").json()
    assert short["models_available"] == 1
    assert 0 <= short["uptime_seconds"] < 60  # real uptime, not a timestamp
    page = HTTP.get(f"{berry.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "a:up-model" in page.text and "test-model" in page.text


def test_health_is_503_when_no_model_has_a_usable_backend(make_upstream, start_berry) -> None:
    broken = make_upstream(mode="fail", failure_status=500)
    berry = start_berry(
        build_config({"x": broken}, settings={"circuit_breaker_failure_threshold": 1})
    )
    assert post(berry, {"model": "test-model", "messages": MESSAGES}).status_code == 502
    assert HTTP.get(f"{berry.url}/health").status_code == 503
    assert HTTP.get(f"{berry.url}/v1/health").json()["status"] == "unhealthy"


# -- bad input: a clear 4xx OpenAI-style error, never a 500 --------------------------------


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe\x00garbage", None),  # not UTF-8
        (b"[1, 2, 3]", None),
        (b'"just a string"', None),
        (b"", None),
        (orjson.dumps({"messages": MESSAGES}), "model"),
        (orjson.dumps({"model": 42, "messages": MESSAGES}), "model"),
        (orjson.dumps({"model": "", "messages": MESSAGES}), "model"),
        (orjson.dumps({"model": "test-model"}), "messages"),
        (orjson.dumps({"model": "test-model", "messages": "hi"}), "messages"),
        (orjson.dumps({"model": "test-model", "messages": []}), "messages"),
        (orjson.dumps({"model": "test-model", "messages": [{"content": "x"}]}), "messages[0]"),
        (orjson.dumps({"model": "test-model", "messages": [7]}), "messages[0]"),
        (orjson.dumps({"model": "test-model", "messages": MESSAGES, "stream": "yes"}), "stream"),
        (orjson.dumps({"model": "test-model", "messages": MESSAGES, "backend": 3}), "backend"),
    ],
)
def test_malformed_requests_get_400(berry: Berry, two_upstreams, body: bytes, param) -> None:
    assert_openai_error(post(berry, body), 400, param)
    assert sum(u.stats()["requests"] for u in two_upstreams.values()) == 0


def test_unknown_model_is_404(berry: Berry) -> None:
    response = post(berry, {"model": "no-such-model", "messages": MESSAGES})
    assert_openai_error(response, 404, "model")
    assert response.json()["error"]["code"] == "model_not_found"


def test_oversized_body_is_413(make_upstream, start_berry) -> None:
    upstream = make_upstream()
    berry = start_berry(build_config({"u": upstream}, settings={"max_request_body_bytes": 4096}))
    big = {"model": "test-model", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(post(berry, big), 413)

    def chunks():  # no Content-Length: the limit holds while streaming the body in
        yield orjson.dumps(big)

    assert_openai_error(post(berry, chunks()), 413)
    assert upstream.stats()["requests"] == 0
    ok = {"model": "test-model", "messages": [{"role": "user", "content": "x" * 100}]}
    assert post(berry, ok).status_code == 200


def test_unknown_paths_and_methods(berry: Berry) -> None:
    assert_openai_error(HTTP.get(f"{berry.url}/v1/nothing-here"), 404)
    assert_openai_error(HTTP.get(f"{berry.base_url}/chat/completions"), 405)
    assert_openai_error(HTTP.get(f"{berry.url}/smart-ai/models/%00%ff/weights"), 404)


def test_upstream_client_mistakes_pass_through_without_failover(two_upstreams, start_berry) -> None:
    for upstream in two_upstreams.values():
        upstream.behaviour.mode = "fail"
        upstream.behaviour.failure_status = 400
    berry = start_berry(build_config(two_upstreams))
    response = post(berry, {"model": "test-model", "messages": MESSAGES})
    assert response.status_code == 400
    assert response.headers["x-berry-attempts"] == "1"
    assert sum(u.stats()["requests"] for u in two_upstreams.values()) == 1
