"""Security: admin gating, token comparison, secrets, body limits, CORS, header hygiene.

Real servers on loopback: Berry in a thread (or a `berry serve` process when its logs are
under test), demo upstreams, and a small recording upstream that keeps every raw header.
"""

from __future__ import annotations

import ast
import http.client
import inspect
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from berry_handlers import admin as admin_handlers
from berry_handlers.local import create_app
from berry_shared import auth as auth_module
from berry_shared.config import ConfigError
from support import (
    ADMIN_TOKEN,
    PROVIDER_KEY_PREFIX,
    USER_TOKEN,
    Berry,
    BerryProcess,
    ServerThread,
    build_config,
    free_port,
    provider_key,
)

HTTP = httpx.Client(timeout=20)
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
CHAT_BODY = orjson.dumps({"model": "test-model", "messages": MESSAGES})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- admin routes ---------------------------------------------------------------------------

OTHER_ADMIN_TOKEN = "test-rule-admin-token-0123456789"  # admin by Berry API's rule
NOT_ADMIN_TOKEN = "test-not-admin-token-0123456789"  # every model, but admin = false
DISABLED_ADMIN_TOKEN = "test-disabled-admin-token-01234"
EXPLICIT_ADMIN_TOKEN = "test-explicit-admin-token-01234"  # allowed_models set, admin = true

ADMIN_USERS = {
    "admin": {"name": "Admin", "token": ADMIN_TOKEN, "admin": True},
    "rule": {"name": "Rule admin", "token": OTHER_ADMIN_TOKEN},
    "user": {"name": "User", "token": USER_TOKEN, "allowed_models": ["test-model"]},
    "notadmin": {"name": "Not admin", "token": NOT_ADMIN_TOKEN, "admin": False},
    "disabled": {"name": "Disabled", "token": DISABLED_ADMIN_TOKEN, "enabled": False},
    "explicit": {
        "name": "Explicit",
        "token": EXPLICIT_ADMIN_TOKEN,
        "allowed_models": ["test-model"],
        "admin": True,
    },
}


@pytest.fixture
def admin_berry(make_upstream, start_berry) -> Berry:
    return start_berry(build_config({"up": make_upstream(name="up")}, users=ADMIN_USERS))


def admin_paths() -> list[str]:
    """Every /admin route: the local app's schema plus the admin router itself (new ones too,
    and any left out of the schema)."""
    documented = {p for p in create_app().openapi()["paths"] if p.startswith("/admin")}
    routed = {r.path for r in admin_handlers.router.routes if r.path.startswith("/admin")}
    paths = sorted(documented | routed)
    assert len(paths) >= 3, paths
    return paths


def first_char_changed(token: str) -> str:
    return ("X" if token[0] != "X" else "Y") + token[1:]


def last_char_changed(token: str) -> str:
    return token[:-1] + ("X" if token[-1] != "X" else "Y")


@pytest.mark.parametrize("path", admin_paths())
def test_every_admin_route_rejects_all_but_admin_tokens(admin_berry: Berry, path: str) -> None:
    url = f"{admin_berry.url}{path}"
    rejected_401 = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Token {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"},
        {"Authorization": f"Bearer {first_char_changed(ADMIN_TOKEN)}"},
        {"Authorization": f"Bearer {last_char_changed(ADMIN_TOKEN)}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN} {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {provider_key('up')}"},  # the upstream key is no token
        {"X-Api-Key": ADMIN_TOKEN},
        {"Cookie": f"token={ADMIN_TOKEN}"},
        bearer(DISABLED_ADMIN_TOKEN),
    ]
    for headers in rejected_401:
        error = assert_openai_error(HTTP.get(url, headers=headers), 401)
        assert error["type"] == "authentication_error", headers
    for query in ({"api_key": ADMIN_TOKEN}, {"token": ADMIN_TOKEN}, {"key": ADMIN_TOKEN}):
        assert_openai_error(HTTP.get(url, params=query), 401)
    for token in (USER_TOKEN, NOT_ADMIN_TOKEN):
        error = assert_openai_error(HTTP.get(url, headers=bearer(token)), 403)
        assert error["code"] == "admin_required"
    # Routes that need a query parameter get it (the admin's own id), so 200 is reachable.
    params = {"user_id": "admin"} if path == "/admin/rate-limit-usage" else {}
    for token in (ADMIN_TOKEN, OTHER_ADMIN_TOKEN, EXPLICIT_ADMIN_TOKEN):
        response = HTTP.get(url, params=params, headers=bearer(token))
        assert response.status_code == 200, (token, response.text)
        assert "timestamp" in response.json()


@pytest.mark.parametrize("path", admin_paths())
def test_no_spelling_of_an_admin_path_serves_it_without_a_token(
    admin_berry: Berry, path: str
) -> None:
    variants = [
        path + "/",
        path.upper(),
        "/" + path,
        path.replace("/admin/", "/admin//"),
        path.replace("/admin/", "/admin/./"),
        "/v1/.." + path,
        path.replace("/admin/", "/%61dmin/"),
        path + "%00",
        path + ";x",
        path + "?",
        path + "#",
    ]
    for variant in variants:
        connection = http.client.HTTPConnection("127.0.0.1", admin_berry.port, timeout=10)
        try:
            connection.request("GET", variant)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status in (307, 308, 400, 401, 404), (variant, response.status, body)
        assert b"timestamp" not in body, variant


# -- constant-time token comparison ---------------------------------------------------------


def test_tokens_are_looked_up_by_digest_and_confirmed_with_compare_digest() -> None:
    source = inspect.getsource(auth_module)
    assert "hashlib.sha256" in source
    authenticate = textwrap.dedent(inspect.getsource(auth_module.Directory.authenticate))
    tree = ast.parse(authenticate)
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "hmac.compare_digest" in calls, calls
    assert any("_digest" in call or "sha256" in call for call in calls), calls

    def mentions_token(node: ast.AST) -> bool:
        return any(
            (isinstance(n, ast.Name) and "token" in n.id)
            or (isinstance(n, ast.Attribute) and "token" in n.attr)
            for n in ast.walk(node)
        )

    # No ==, !=, in, startswith on a token: those stop at the first differing character.
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops
        ):
            assert not mentions_token(node), ast.unparse(node)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith", "find", "index")
        ):
            assert not mentions_token(node.func.value), ast.unparse(node)


def test_near_miss_tokens_are_rejected_identically(admin_berry: Berry) -> None:
    """Behaviour, not timing: where a guess goes wrong changes nothing in the answer."""
    for token in (ADMIN_TOKEN, USER_TOKEN):
        # Per route: the chat route's answers also say what Berry tried (nothing) and its
        # own time, which is a measurement, not a property of the guess.
        answers: dict[str, list[Any]] = {}
        ignored = {"date", "x-berry-overhead-ms"}
        for guess in (
            first_char_changed(token),
            last_char_changed(token),
            token[: len(token) // 2] + "Z" + token[len(token) // 2 + 1 :],
            "z" * len(token),
        ):
            for path in ("/admin/system-stats", "/v1/models", CHAT):
                if path == CHAT:
                    response = HTTP.post(
                        f"{admin_berry.url}{CHAT}", content=CHAT_BODY, headers=bearer(guess)
                    )
                else:
                    response = HTTP.get(f"{admin_berry.url}{path}", headers=bearer(guess))
                headers = {k: v for k, v in response.headers.items() if k not in ignored}
                answers.setdefault(path, []).append(
                    (response.status_code, response.content, headers)
                )
        for same_route in answers.values():
            assert all(a == same_route[0] for a in same_route), same_route
            assert same_route[0][0] == 401
        assert len({a[0][1] for a in answers.values()}) == 1  # one body on every route


# -- secrets never leave ---------------------------------------------------------------------

HEADER_SECRET = "hdr-secret-4b1d9e0c77"
URL_SECRET = "url-password-5e6f"


def _write_secret_config(path: Path, upstreams: dict[str, Any], refused_port: int) -> None:
    """Every failure class, each behind its own provider with its own recognisable key."""
    lines = [
        "[settings]",
        "circuit_breaker_failure_threshold = 100",
        "health_check_interval_seconds = 0.1",
        "recovery_check_interval_seconds = 0.1",
        "health_check_timeout_seconds = 0.5",
        "request_timeout_seconds = 3",
        "max_request_body_bytes = 4096",
        "[settings.smart_ai]",
        "lightweight_check_interval_seconds = 0.1",
    ]
    urls = {name: up.base_url for name, up in upstreams.items()}
    urls["gone"] = f"http://127.0.0.1:{refused_port}/v1"
    for name, url in urls.items():
        key = "${OK_KEY}" if name == "ok" else provider_key(name)
        lines += [
            f"[providers.{name}]",
            f'name = "Provider {name}"',
            f'base_url = "{url}"',
            f'api_key = "{key}"',
            'models = ["up-model"]',
        ]
        if name == "hung":
            lines.append("timeout_seconds = 0.5")
    # A provider authenticated by a custom header instead (x-api-key style), no api_key.
    lines += [
        "[providers.custom]",
        'name = "Custom header"',
        f'base_url = "{upstreams["ok"].base_url}"',
        'api_key = ""',
        f'headers = {{ "x-api-key" = "{HEADER_SECRET}", "api-key" = "{HEADER_SECRET}" }}',
        'models = ["up-model"]',
        "[models.m]",
        'name = "test-model"',
    ]
    for name in [*urls, "custom"]:
        lines += ["[[models.m.backends]]", f'provider = "{name}"', 'model = "up-model"']
    lines += [
        "[users.admin]",
        'name = "Admin"',
        f'token = "{ADMIN_TOKEN}"',
        "[users.user]",
        'name = "User"',
        f'token = "{USER_TOKEN}"',
        'allowed_models = ["m"]',
        "rate_limit = { requests_per_minute = 1000 }",
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def logged_berry(make_upstream, tmp_path) -> Iterator[BerryProcess]:
    """`berry serve --log-level debug --access-log` with probes on, logging to a file."""
    upstreams = {
        "ok": make_upstream(name="ok"),
        "denied": make_upstream(name="denied", mode="fail", failure_status=401),
        "broken": make_upstream(name="broken", mode="fail", failure_status=500),
        "limited": make_upstream(name="limited", mode="fail", failure_status=429, retry_after=1),
        "hung": make_upstream(name="hung", mode="hang"),
        "garbage": make_upstream(name="garbage", mode="invalid_json"),
        "cutter": make_upstream(name="cutter", mode="cut_stream"),
    }
    config = tmp_path / "config.toml"
    _write_secret_config(config, upstreams, free_port())
    berry = BerryProcess(
        config,
        {"OK_KEY": provider_key("ok")},
        "--log-level",
        "debug",
        "--access-log",
        probes=True,
    )
    try:
        yield berry
    finally:
        berry.stop()


def test_no_secret_in_any_response_metric_error_or_debug_log(logged_berry) -> None:
    berry = logged_berry
    url = berry.url
    secrets = [
        *(provider_key(n) for n in ("ok", "denied", "broken", "limited", "hung", "garbage")),
        *(provider_key(n) for n in ("cutter", "gone")),
        HEADER_SECRET,
        USER_TOKEN,
        ADMIN_TOKEN,
    ]
    seen: list[str] = []

    def record(response: httpx.Response) -> None:
        seen.append(response.text)
        seen.append(repr(dict(response.headers)))

    user, admin = bearer(USER_TOKEN), bearer(ADMIN_TOKEN)
    providers = ["ok", "denied", "broken", "limited", "hung", "garbage", "cutter", "gone", "custom"]
    statuses = set()
    for provider in [*providers, None]:
        for stream in (False, True):
            body: dict[str, Any] = {"model": "test-model", "messages": MESSAGES, "stream": stream}
            if provider is not None:
                body["backend"] = provider
            response = HTTP.post(f"{url}{CHAT}", json=body, headers=user)
            statuses.add(response.status_code)
            record(response)
    assert {200, 502}.issubset(statuses), statuses  # good and failing paths were both taken
    for bad in (
        HTTP.post(f"{url}{CHAT}", content=b"{not json", headers=user),
        HTTP.post(f"{url}{CHAT}", content=b"x" * 5000, headers=user),
        HTTP.post(f"{url}{CHAT}", json={"model": "nope", "messages": MESSAGES}, headers=user),
        HTTP.post(f"{url}{CHAT}", content=CHAT_BODY, headers=bearer(USER_TOKEN + "x")),
        HTTP.post(f"{url}{CHAT}", content=CHAT_BODY),
        HTTP.get(f"{url}/admin/system-stats", headers=user),
        HTTP.get(f"{url}/no/such/path", headers=user),
    ):
        record(bad)
    time.sleep(1.0)  # the background prober works through every backend meanwhile
    for path in (
        "/",
        "/health",
        "/v1/health",
        "/metrics",
        "/prometheus",
        "/smart-ai/weights",
        "/smart-ai/models/test-model/weights",
        "/v1/models",
        "/models",
        "/openapi.json",
        "/admin/model-weights",
        "/admin/backend-health",
        "/admin/system-stats",
    ):
        response = HTTP.get(f"{url}{path}", headers=admin)
        assert response.status_code in (200, 503), (path, response.status_code)
        record(response)
    berry.stop()
    logs = berry.output()
    assert "/v1/chat/completions" in logs  # the access log was on
    assert "Application startup complete" in logs
    for text in [*seen, logs]:
        for secret in secrets:
            assert secret not in text, (secret, text[:300])
        assert PROVIDER_KEY_PREFIX not in text
        assert "Traceback" not in text


def test_upstream_keys_are_sent_upstream_and_only_there(make_upstream, start_berry) -> None:
    """The counterpart of the above: the keys are in use (so their absence means something)."""
    up = make_upstream(name="up")
    berry = start_berry(build_config({"up": up}))
    assert HTTP.post(f"{berry.url}{CHAT}", content=CHAT_BODY, headers=bearer(USER_TOKEN)).is_success
    assert up.stats()["last_request"]["headers"]["authorization"] == f"Bearer {provider_key('up')}"


def _credentials_config(make_upstream) -> Any:
    inner = make_upstream(name="inner")
    backup = make_upstream(name="backup")
    config = build_config(
        {"inner": inner, "backup": backup},
        models={"test-model": [{"provider": "inner"}, {"provider": "backup", "priority": 1}]},
        smart_ai={"exploration_ratio": 0.0},
    )
    with_credentials = config.providers["inner"].model_copy(
        update={"base_url": f"http://berry:{URL_SECRET}@127.0.0.1:{inner.port}/v1"}
    )
    providers = {**config.providers, "inner": with_credentials}
    return config.model_copy(update={"providers": providers}), inner, backup


def test_credentials_in_a_base_url_are_never_shown(make_upstream, start_berry) -> None:
    config, _, _ = _credentials_config(make_upstream)
    berry = start_berry(config)
    admin = bearer(ADMIN_TOKEN)
    for path in ("/", "/health", "/admin/backend-health", "/admin/model-weights", "/metrics"):
        response = HTTP.get(f"{berry.url}{path}", headers=admin)
        assert URL_SECRET not in response.text, path
    response = HTTP.post(f"{berry.url}{CHAT}", content=CHAT_BODY, headers=bearer(USER_TOKEN))
    assert URL_SECRET not in response.text


def test_a_base_url_with_credentials_never_causes_a_500(make_upstream, start_berry) -> None:
    try:
        config, _, _ = _credentials_config(make_upstream)
    except ConfigError as exc:  # refusing such a URL at load time would be fine too
        assert "base_url" in str(exc)
        return
    berry = start_berry(config)
    for _ in range(3):
        response = HTTP.post(f"{berry.url}{CHAT}", content=CHAT_BODY, headers=bearer(USER_TOKEN))
        assert response.status_code == 200, response.text
        assert URL_SECRET not in response.text


# -- request body size --------------------------------------------------------------------------

LIMIT = 4096


@pytest.fixture
def limited_upstream(make_upstream) -> Any:
    return make_upstream(name="up")


@pytest.fixture
def limited_berry(limited_upstream, start_berry) -> Berry:
    config = build_config({"up": limited_upstream}, settings={"max_request_body_bytes": LIMIT})
    return start_berry(config)


def exchange(
    berry: Berry, head: list[str], body: bytes = b"", read_timeout: float = 5
) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-made request (head lines, then ``body`` as is); parse the first answer."""
    lines = [
        f"POST {CHAT} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {USER_TOKEN}",
        *head,
    ]
    sock = socket.create_connection(("127.0.0.1", berry.port), timeout=read_timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        sock.close()


def padded_chat(size: int) -> bytes:
    """A valid chat body of exactly ``size`` bytes."""
    base = orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": ""}]})
    body = orjson.dumps(
        {"model": "test-model", "messages": [{"role": "user", "content": "x" * (size - len(base))}]}
    )
    assert len(body) == size
    return body


def chunked(body: bytes, size: int = 1000, terminate: bool = True) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return encoded + (b"0\r\n\r\n" if terminate else b"")


def test_body_limit_boundary_with_content_length_and_chunked(
    limited_berry: Berry, limited_upstream
) -> None:
    for framing in ("length", "chunked"):
        for size, status in ((LIMIT, 200), (LIMIT + 1, 413)):
            body = padded_chat(size)
            if framing == "length":
                answer = exchange(limited_berry, [f"Content-Length: {size}"], body)
            else:
                answer = exchange(limited_berry, ["Transfer-Encoding: chunked"], chunked(body))
            assert answer[0] == status, (framing, size, answer)
            if status == 413:
                assert orjson.loads(answer[2])["error"]["code"] == "request_too_large"
    assert limited_upstream.stats()["requests"] == 2


def test_declared_oversize_is_refused_before_any_body_arrives(
    limited_berry: Berry, limited_upstream
) -> None:
    for declared in (LIMIT + 1, 10**12, "0000000000000000004097"):
        status, headers, body = exchange(limited_berry, [f"Content-Length: {declared}"])
        assert status == 413, body
        assert headers["content-type"].startswith("application/json")
        assert orjson.loads(body)["error"]["code"] == "request_too_large"
    # With Expect: 100-continue the client is told 413 instead of being asked to send.
    status, _, body = exchange(
        limited_berry, ["Content-Length: 1000000000", "Expect: 100-continue"]
    )
    assert status == 413, body
    assert limited_upstream.stats()["requests"] == 0


def test_chunked_oversize_is_refused_while_it_streams_in(
    limited_berry: Berry, limited_upstream
) -> None:
    # 6 KiB of chunks and no terminating chunk: a server waiting for the whole body would
    # never answer (the exchange would time out).
    started = time.perf_counter()
    status, _, body = exchange(
        limited_berry,
        ["Transfer-Encoding: chunked"],
        chunked(b"x" * (LIMIT + 2000), terminate=False),
        read_timeout=5,
    )
    assert status == 413, body
    assert time.perf_counter() - started < 2
    assert limited_upstream.stats()["requests"] == 0


def test_a_lying_content_length_never_gets_more_than_it_declared(
    limited_berry: Berry, limited_upstream
) -> None:
    big = padded_chat(LIMIT * 3)
    # Declared 100 bytes (under the limit), sent 12 KiB: Berry reads the 100 declared bytes
    # (a truncated JSON: 400), never the rest as part of this body.
    # The bytes after the declared 100 are a malformed next request, which the HTTP layer
    # may refuse (plain-text 400) before Berry's own 400 for the cut JSON is written.
    status, headers, body = exchange(limited_berry, ["Content-Length: 100"], big)
    assert status == 400, body
    if headers["content-type"].startswith("application/json"):
        assert orjson.loads(body)["error"]["code"] == "invalid_json"
    # Sent in two steps, the first answer is Berry's, about exactly the declared bytes.
    sock = socket.create_connection(("127.0.0.1", limited_berry.port), timeout=5)
    try:
        head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {USER_TOKEN}\r\n"
        sock.sendall(f"{head}Content-Length: 100\r\n\r\n".encode() + big[:100])
        first = http.client.HTTPResponse(sock)
        first.begin()
        assert first.status == 400
        assert orjson.loads(first.read())["error"]["code"] == "invalid_json"
        sock.sendall(big[100:])  # the lie: more body than declared
    finally:
        sock.close()
    # Content-Length and chunked together (a smuggling shape): refused outright.
    status, _, body = exchange(
        limited_berry, ["Content-Length: 10", "Transfer-Encoding: chunked"], chunked(big)
    )
    assert status == 400, body
    # Malformed lengths: refused by the HTTP layer.
    for declared in ("abc", "-1", "+5000", "1e4", "10, 5000"):
        status, _, body = exchange(limited_berry, [f"Content-Length: {declared}"], big[:200])
        assert status == 400, (declared, body)
    assert limited_upstream.stats()["requests"] == 0


# -- CORS -----------------------------------------------------------------------------------

ALLOWED_ORIGIN = "https://app.example"
LOOKALIKES = [
    "https://evil.example",
    "null",
    "http://app.example",
    "https://app.example:8443",
    "https://app.example.evil.com",
    "https://evil-app.example",
    "HTTPS://APP.EXAMPLE",
    "https://app.example/",
    "https://app.example, https://evil.example",
]
GET_PATHS = ["/", "/health", "/v1/health", "/metrics", "/prometheus", "/v1/models", "/models"]
GET_PATHS += ["/smart-ai/weights", "/admin/system-stats", "/no/such/path"]


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def preflight(berry: Berry, origin: str, path: str = CHAT) -> httpx.Response:
    return HTTP.options(
        f"{berry.url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_is_off_by_default(berry: Berry) -> None:
    for origin in (ALLOWED_ORIGIN, *LOOKALIKES):
        for path in GET_PATHS:
            response = HTTP.get(
                f"{berry.url}{path}", headers={"Origin": origin, **bearer(ADMIN_TOKEN)}
            )
            assert cors_headers(response) == {}, (origin, path)
        response = HTTP.post(
            f"{berry.url}{CHAT}",
            content=CHAT_BODY,
            headers={"Origin": origin, **bearer(USER_TOKEN)},
        )
        assert response.status_code == 200 and cors_headers(response) == {}
        for path in (CHAT, "/v1/models", "/health"):
            refused = preflight(berry, origin, path)
            assert refused.status_code >= 400, (origin, path, refused.status_code)
            assert cors_headers(refused) == {}


def test_cors_allows_exactly_the_configured_origin(make_upstream, start_berry) -> None:
    up = make_upstream(name="up")
    berry = start_berry(build_config({"up": up}, settings={"cors_allow_origins": [ALLOWED_ORIGIN]}))
    allowed = preflight(berry, ALLOWED_ORIGIN)
    assert allowed.status_code == 204
    headers = cors_headers(allowed)
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    allow_headers = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allow_headers
    assert "access-control-allow-credentials" not in headers  # bearer tokens need no cookies
    assert "origin" in allowed.headers.get("vary", "").lower()
    for path in GET_PATHS:
        response = HTTP.get(
            f"{berry.url}{path}", headers={"Origin": ALLOWED_ORIGIN, **bearer(ADMIN_TOKEN)}
        )
        assert cors_headers(response)["access-control-allow-origin"] == ALLOWED_ORIGIN, path
    served = HTTP.post(
        f"{berry.url}{CHAT}",
        content=CHAT_BODY,
        headers={"Origin": ALLOWED_ORIGIN, **bearer(USER_TOKEN)},
    )
    assert served.status_code == 200
    exposed = cors_headers(served)["access-control-expose-headers"]
    assert "x-berry-backend" in exposed
    for origin in LOOKALIKES:
        refused = preflight(berry, origin)
        assert refused.status_code == 403, origin
        assert cors_headers(refused) == {}, origin
        for path in ("/health", "/v1/models"):
            response = HTTP.get(
                f"{berry.url}{path}", headers={"Origin": origin, **bearer(USER_TOKEN)}
            )
            assert cors_headers(response) == {}, (origin, path)
        response = HTTP.post(
            f"{berry.url}{CHAT}",
            content=CHAT_BODY,
            headers={"Origin": origin, **bearer(USER_TOKEN)},
        )
        assert cors_headers(response) == {}, origin


# -- what reaches the upstream --------------------------------------------------------------


class RecordingUpstream:
    """A minimal OpenAI-compatible upstream that records every raw header it receives."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append({"headers": list(scope["headers"]), "body": body})
        request = orjson.loads(body)
        # Headers the client must never see either: upstream cookies and org ids.
        extra = [(b"set-cookie", b"upstream-session=1"), (b"openai-organization", b"org-up")]
        if request.get("stream"):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": []}
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), *extra],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        payload = orjson.dumps({"id": "c1", "object": "chat.completion", "choices": []})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), *extra],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class _Address:
    def __init__(self, url: str) -> None:
        self.base_url = f"{url}/v1"


@pytest.fixture
def recorder() -> Iterator[tuple[RecordingUpstream, ServerThread]]:
    app = RecordingUpstream()
    server = ServerThread(app, lifespan="off").start()
    try:
        yield app, server
    finally:
        server.stop()


CLIENT_HEADERS = [
    ("Cookie", "session=client-cookie-1234"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Real-IP", "203.0.113.8"),
    ("Forwarded", "for=203.0.113.9"),
    ("OpenAI-Organization", "org-client-5678"),
    ("OpenAI-Project", "proj-client-9012"),
    ("User-Agent", "client-agent/1.0"),
    ("X-Request-Id", "client-request-3456"),
    ("X-Api-Key", "client-api-key-7890"),
    ("Proxy-Authorization", "Basic Y2xpZW50OnByb3h5"),
    ("X-Berry-Backend", "client-forged"),
]
# What Berry (aiohttp) itself puts on an upstream request, besides the provider's headers.
UPSTREAM_HEADERS = {"host", "authorization", "content-type", "content-length"}
UPSTREAM_HEADERS |= {"accept", "accept-encoding", "user-agent", "connection"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    "authorization",
    [
        [("Authorization", f"Bearer {USER_TOKEN}")],
        [("AUTHORIZATION", f"Bearer {USER_TOKEN}")],
        [("aUtHoRiZaTiOn", f"bearer {USER_TOKEN}")],
        [("Authorization", f"Bearer {USER_TOKEN}"), ("Authorization", f"Bearer {ADMIN_TOKEN}")],
        [("authorization", f"Bearer {USER_TOKEN}"), ("AUTHORIZATION", "Bearer other-0123456789")],
    ],
    ids=["plain", "upper", "mixed", "duplicated", "duplicated-other-case"],
)
def test_only_the_provider_key_and_no_client_header_reaches_the_upstream(
    recorder, start_berry, authorization: list[tuple[str, str]], stream: bool
) -> None:
    app, server = recorder
    berry = start_berry(build_config({"rec": _Address(server.url)}))
    body = orjson.dumps({"model": "test-model", "messages": MESSAGES, "stream": stream})
    response = HTTP.post(
        f"{berry.url}{CHAT}", content=body, headers=[*authorization, *CLIENT_HEADERS]
    )
    assert response.status_code == 200, response.text
    # Upstream headers meant for Berry stay with Berry.
    assert "set-cookie" not in response.headers
    assert response.headers.get("openai-organization") is None
    assert response.headers["x-berry-backend"] == "rec:up-model"
    sent = app.requests[-1]["headers"]
    names = [name.decode().lower() for name, _ in sent]
    assert names.count("authorization") == 1, sent
    assert dict(sent)[b"authorization"] == f"Bearer {provider_key('rec')}".encode()
    assert set(names) <= UPSTREAM_HEADERS, sorted(set(names) - UPSTREAM_HEADERS)
    raw = repr(sent) + app.requests[-1]["body"].decode()
    for secret in (USER_TOKEN, ADMIN_TOKEN, "other-0123456789"):
        assert secret not in raw
    for _, value in CLIENT_HEADERS:
        assert value not in raw, value
    assert dict(sent)[b"host"] == f"127.0.0.1:{server.port}".encode()


def test_a_keyless_provider_gets_no_authorization_at_all(recorder, start_berry) -> None:
    app, server = recorder
    config = build_config({"rec": _Address(server.url)})
    keyless = config.providers["rec"].model_copy(
        update={"api_key": "", "headers": {"OpenAI-Organization": "org-configured"}}
    )
    berry = start_berry(config.model_copy(update={"providers": {"rec": keyless}}))
    response = HTTP.post(
        f"{berry.url}{CHAT}",
        content=CHAT_BODY,
        headers=[*bearer(USER_TOKEN).items(), *CLIENT_HEADERS],
    )
    assert response.status_code == 200
    sent = {name.decode().lower(): value.decode() for name, value in app.requests[-1]["headers"]}
    assert "authorization" not in sent  # the user's token does not stand in for a key
    assert sent["openai-organization"] == "org-configured"  # the provider's, not the client's
    assert USER_TOKEN not in repr(app.requests[-1])


def test_a_duplicated_authorization_header_is_decided_by_its_first_value(berry: Berry) -> None:
    """Documents what happens (RFC 9110 allows one Authorization field): the first wins."""
    invalid = "Bearer not-a-token-0123456789"
    first_invalid = HTTP.post(
        f"{berry.url}{CHAT}",
        content=CHAT_BODY,
        headers=[("Authorization", invalid), ("Authorization", f"Bearer {USER_TOKEN}")],
    )
    assert_openai_error(first_invalid, 401)
    first_valid = HTTP.post(
        f"{berry.url}{CHAT}",
        content=CHAT_BODY,
        headers=[("Authorization", f"Bearer {USER_TOKEN}"), ("Authorization", invalid)],
    )
    assert first_valid.status_code == 200
    # Never escalates: a user's token first and an admin's second is still the user.
    escalate = HTTP.get(
        f"{berry.url}/admin/system-stats",
        headers=[
            ("Authorization", f"Bearer {USER_TOKEN}"),
            ("Authorization", f"Bearer {ADMIN_TOKEN}"),
        ],
    )
    assert_openai_error(escalate, 403)


def test_log_level_debug_shows_berrys_own_debug_lines(make_upstream, tmp_path) -> None:
    failing = make_upstream(name="failing", mode="fail", failure_status=500)
    config = tmp_path / "config.toml"
    config.write_text(
        "\n".join(
            [
                "[settings]",
                "health_check_interval_seconds = 0.1",
                "recovery_check_interval_seconds = 0.1",
                "[providers.failing]",
                'name = "Failing"',
                f'base_url = "{failing.base_url}"',
                'api_key = "k-failing-0123456789"',
                'models = ["up-model"]',
                "[models.m]",
                'name = "test-model"',
                "[[models.m.backends]]",
                'provider = "failing"',
                'model = "up-model"',
                "[users.admin]",
                'name = "Admin"',
                f'token = "{ADMIN_TOKEN}"',
            ]
        )
        + "\n"
    )
    berry = BerryProcess(config, None, "--log-level", "debug", probes=True)
    try:
        deadline = time.monotonic() + 20
        while failing.stats()["requests"] < 3:  # the prober has run (and logged) a few times
            assert berry.process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        berry.stop()
    logs = berry.output()
    # berry.probe logs every probe at DEBUG: "probe <backend> (<reason>): <outcome>".
    assert "probe failing:up-model" in logs, logs[-2000:]
