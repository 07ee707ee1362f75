"""Admin and SmartAI views, Prometheus, rate limits, and no secret anywhere Berry speaks."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import (
    ADMIN_TOKEN,
    USER_TOKEN,
    Berry,
    build_config,
)

HTTP = httpx.Client(timeout=20)
MESSAGES = [{"role": "user", "content": "hi"}]


def chat(berry: Berry, token: str = USER_TOKEN, **extra) -> httpx.Response:
    body = {"model": "test-model", "messages": MESSAGES, **extra}
    return HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}"},
    )


def admin_get(berry: Berry, path: str, token: str = ADMIN_TOKEN) -> httpx.Response:
    return HTTP.get(f"{berry.url}{path}", headers={"Authorization": f"Bearer {token}"})


ADMIN_PATHS = ["/admin/model-weights", "/admin/backend-health", "/admin/system-stats"]


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_routes_reject_everyone_but_admins(berry: Berry, path: str) -> None:
    assert HTTP.get(f"{berry.url}{path}").status_code == 401
    assert admin_get(berry, path, "not-a-real-token-000000").status_code == 401
    denied = admin_get(berry, path, USER_TOKEN)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "admin_required"
    assert admin_get(berry, path).status_code == 200


def test_admin_model_weights_fields(berry: Berry) -> None:
    chat(berry)
    body = admin_get(berry, "/admin/model-weights").json()
    assert body["total_models"] == 1
    model = body["models"]["test-model"]
    assert model["display_name"] == "test-model" and model["strategy"] == "smart_ai"
    backend = model["backends"][0]
    for field in (
        "provider",
        "model",
        "original_weight",
        "effective_weight",
        "is_healthy",
        "is_enabled",
        "priority",
        "tags",
        "billing_mode",
        "failure_count",
        "selection_share",
    ):
        assert field in backend
    assert model["total_effective_weight"] == pytest.approx(
        sum(b["effective_weight"] for b in model["backends"]), abs=1e-5
    )
    only = admin_get(berry, "/admin/model-weights?model=test-model").json()
    assert list(only["models"]) == ["test-model"]
    missing = admin_get(berry, "/admin/model-weights?model=nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_admin_backend_health_and_system_stats(berry: Berry) -> None:
    chat(berry)
    health = admin_get(berry, "/admin/backend-health").json()
    entry = health["backend_health"]["test-model"]
    assert entry["model_name"] == "test-model" and entry["enabled"] is True
    assert {b["provider"] for b in entry["backends"]} == {"a", "b"}
    assert set(entry["backends"][0]) >= {
        "provider",
        "model",
        "enabled",
        "is_healthy",
        "failure_count",
        "tags",
        "priority",
    }
    stats = admin_get(berry, "/admin/system-stats").json()
    assert stats["system"]["is_running"] is True
    assert stats["system"]["total_models"] == 1 and stats["system"]["available_models"] == 1
    assert stats["model_stats"]["total_requests"] == 1
    assert "health_summary" in stats and "timestamp" in stats


def test_smart_ai_weights_are_what_the_selector_uses(berry: Berry) -> None:
    every = HTTP.get(f"{berry.url}/smart-ai/weights").json()
    assert every["total_smart_ai_models"] == 1
    model = every["models"][0]
    assert model["name"] == "test-model"
    selector = {c.key: c.effective_weight for c in berry.gateway.assess_model("test-model")}
    for backend in model["backends"]:
        key = f"{backend['provider']}:{backend['model']}"
        assert backend["effective_weight"] == pytest.approx(selector[key], abs=1e-6)
        assert set(backend) >= {
            "original_weight",
            "confidence",
            "is_premium",
            "enabled",
            "tags",
            "billing_mode",
            "health_details",
            "selection_share",
        }
    by_public_name = HTTP.get(f"{berry.url}/smart-ai/models/test-model/weights").json()
    assert by_public_name["models"][0]["name"] == "test-model"


@pytest.mark.parametrize(
    "value",
    [
        "nope",
        "..%2F..%2Fetc%2Fpasswd",
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "a/b/c",
        "x" * 3000,
        "%00",
        "%F0%9F%8D%93",
        "'%20OR%201=1--",
    ],
)
def test_smart_ai_model_path_is_safe_for_any_value(berry: Berry, value: str) -> None:
    response = HTTP.get(f"{berry.url}/smart-ai/models/{value}/weights")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "model_not_found"


def test_prometheus_output_parses_and_counts(berry: Berry) -> None:
    for _ in range(3):
        chat(berry)
    chat(berry, stream=True)
    response = HTTP.get(f"{berry.url}/prometheus")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "berry_api_http_requests",
        "berry_api_http_request_duration_seconds",
        "berry_api_http_requests_in_flight",
        "berry_api_backend_health_status",
        "berry_api_backend_request_count",
        "berry_api_backend_latency_seconds",
        "berry_api_backend_effective_weight",
        "berry_api_backend_time_to_first_token_seconds",
        "berry_api_tokens",
    ):
        assert name in families, name
    requests = [
        s
        for s in families["berry_api_http_requests"].samples
        if s.labels.get("endpoint") == "/v1/chat/completions" and s.labels["status"] == "200"
    ]
    assert requests[0].value == 4
    backend_total = sum(
        s.value
        for s in families["berry_api_backend_request_count"].samples
        if s.name.endswith("_total")
    )
    assert backend_total == 4
    tokens = sum(s.value for s in families["berry_api_tokens"].samples if s.name.endswith("_total"))
    assert tokens > 0
    health = {
        s.labels["backend"]: s.value for s in families["berry_api_backend_health_status"].samples
    }
    assert health == {"a:up-model": 1.0, "b:up-model": 1.0}


def test_backend_errors_are_counted_by_class(make_upstream, start_berry) -> None:
    bad = make_upstream(name="bad", mode="fail", failure_status=503)
    good = make_upstream(name="good")
    berry = start_berry(
        build_config(
            {"bad": bad, "good": good},
            models={"test-model": [{"provider": "bad"}, {"provider": "good", "priority": 1}]},
            smart_ai={"exploration_ratio": 0.0},
        )
    )
    chat(berry)
    text = HTTP.get(f"{berry.url}/prometheus").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    errors = [
        (s.labels, s.value)
        for s in families["berry_api_backend_error_count"].samples
        if s.name.endswith("_total")
    ]
    assert errors == [({"backend": "bad:up-model", "error_type": "server"}, 1.0)]
    metrics = HTTP.get(f"{berry.url}/metrics").json()
    assert metrics["service"]["total_requests"] == 1
    assert metrics["service"]["successful_requests"] == 1
    assert metrics["models"]["details"]["test-model"]["total_backends"] == 2


def test_rate_limit_per_user(make_upstream, start_berry) -> None:
    upstream = make_upstream()
    berry = start_berry(
        build_config(
            {"u": upstream},
            users={
                "limited": {
                    "name": "L",
                    "token": USER_TOKEN,
                    "rate_limit": {"requests_per_minute": 5},
                },
                "admin": {"name": "A", "token": ADMIN_TOKEN},
            },
        )
    )
    statuses = [chat(berry).status_code for _ in range(5)]
    assert statuses == [200] * 5
    refused = chat(berry)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "rate_limit_error"
    sdk = openai.OpenAI(base_url=berry.base_url, api_key=USER_TOKEN, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="test-model", messages=MESSAGES)
    assert chat(berry, token=ADMIN_TOKEN).status_code == 200  # limits are per user
    assert upstream.stats()["requests"] == 6  # refused requests never reached upstream
