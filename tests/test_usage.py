"""Usage accounting, token limits and budgets (memory store; DynamoDB in test_usage_shared).

The demo upstream counts tokens as words and, like OpenAI, sends stream usage only when asked
(``stream_options.include_usage``): so these tests can tell exactly what Berry counted, what
it asked for, and what the client saw.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from berry_shared.config import Price
from berry_shared.state.ledger import TOKENS, UsageLedger
from berry_shared.usage import NANO_PER_USD, Usage, cost_nano, seconds_to_next_month
from support import ADMIN_TOKEN, USER_TOKEN, Berry, build_config

HTTP = httpx.Client(timeout=30)
PROMPT = [{"role": "user", "content": "one two three"}]  # 3 prompt tokens at the demo
COMPLETION_TOKENS = 5  # "Hello from demo upstream (x)"
PRICE = {"input_per_million": 2.0, "output_per_million": 10.0}
# 3 x $2 + 5 x $10 per million tokens = $0.000056 per request.
REQUEST_COST_USD = (3 * 2.0 + 5 * 10.0) / 1_000_000


def admin(berry: Berry, path: str, **params: Any) -> httpx.Response:
    return HTTP.get(
        f"{berry.url}{path}", params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )


def berry_with(
    make_upstream: Any, start_berry: Any, user: dict[str, Any] | None = None, **up: Any
) -> Berry:
    upstream = make_upstream(name="x", **up)
    users = {
        "admin": {"name": "Admin", "token": ADMIN_TOKEN},
        "alice": {
            "name": "Alice",
            "token": USER_TOKEN,
            "allowed_models": ["test-model"],
            **(user or {}),
        },
    }
    config = build_config(
        {"x": upstream}, models={"test-model": [{"provider": "x", "price": PRICE}]}, users=users
    )
    return start_berry(config)


def client(berry: Berry) -> openai.OpenAI:
    return openai.OpenAI(base_url=berry.base_url, api_key=USER_TOKEN, max_retries=0)


def alice_usage(berry: Berry) -> dict[str, Any]:
    body = admin(berry, "/admin/usage", user_id="alice").json()
    return body["users"]["alice"]


# -- arithmetic ------------------------------------------------------------------------------


def test_cost_of_usage_at_a_price() -> None:
    price = Price(input_per_million=2.5, output_per_million=10, cached_input_per_million=1.25)
    usage = Usage(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    # 600 x 2.5 + 400 x 1.25 + 200 x 10 = 4000 dollars per million tokens = $0.004.
    assert cost_nano(usage, price) == 4_000_000
    assert cost_nano(usage, None) == 0
    plain = Price(input_per_million=3, output_per_million=15)
    # Without a cached price, cached tokens cost the input price.
    assert cost_nano(Usage(10, 1, cached_tokens=10), plain) == (10 * 3 + 15) * 1000
    # Sums stay exact: a million one-token requests cost exactly the per-million price.
    assert sum(cost_nano(Usage(1, 0), plain) for _ in range(1_000_000)) == 3 * NANO_PER_USD


def test_month_rollover_wait() -> None:
    end_of_november = 1796083199.0  # 2026-11-30T23:59:59Z
    assert seconds_to_next_month(end_of_november) == pytest.approx(1.0)


def test_token_window_wait_is_exact() -> None:
    ledger = UsageLedger()
    start = 1_800_000_000.0 - (1_800_000_000.0 % 60)  # the start of a minute
    ledger.add(TOKENS, "u", [60], 100, start + 10)
    assert ledger.wait(TOKENS, "u", [(60, 100)], start + 20) is not None
    # Next minute: 100 x (1 - elapsed/60) must fall below 100... only once elapsed > 0.
    wait = ledger.wait(TOKENS, "u", [(60, 100)], start + 60)
    assert wait is not None and wait < 0.01
    assert ledger.wait(TOKENS, "u", [(60, 100)], start + 60 + wait) is None


# -- counting --------------------------------------------------------------------------------


def test_plain_answers_are_counted_exactly(make_upstream, start_berry) -> None:
    berry = berry_with(make_upstream, start_berry)
    for _ in range(3):
        client(berry).chat.completions.create(model="test-model", messages=PROMPT)
    usage = alice_usage(berry)
    assert usage["requests"] == 3
    assert usage["prompt_tokens"] == 9
    assert usage["completion_tokens"] == 3 * COMPLETION_TOKENS
    assert usage["total_tokens"] == 9 + 3 * COMPLETION_TOKENS
    assert usage["cost_usd"] == pytest.approx(3 * REQUEST_COST_USD)
    assert usage["models"]["test-model"]["requests"] == 3
    body = admin(berry, "/admin/usage").json()
    assert set(body["users"]) == {"admin", "alice"}
    assert body["users"]["admin"]["requests"] == 0
    assert body["from"] == body["to"] == time.strftime("%Y-%m-%d", time.gmtime())


@pytest.mark.parametrize("asked", [False, True], ids=["usage-not-asked", "usage-asked"])
def test_streams_are_counted_and_only_an_asking_client_sees_usage(
    make_upstream, start_berry, asked
) -> None:
    upstream_berry = berry_with(make_upstream, start_berry)
    extra = {"stream_options": {"include_usage": True}} if asked else {}
    chunks = list(
        client(upstream_berry).chat.completions.create(
            model="test-model", messages=PROMPT, stream=True, **extra
        )
    )
    usage_chunks = [c for c in chunks if c.usage is not None]
    if asked:
        assert len(usage_chunks) == 1 and chunks[-1].usage is not None
        assert chunks[-1].choices == []
        assert chunks[-1].usage.completion_tokens == COMPLETION_TOKENS
    else:
        assert usage_chunks == []
        assert all(c.choices for c in chunks)  # exactly what OpenAI would have sent
    # Berry asked the upstream for usage either way, and counted it.
    upstream = upstream_berry.gateway.config.providers["x"]
    assert upstream is not None
    usage = alice_usage(upstream_berry)
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (
        1,
        3,
        COMPLETION_TOKENS,
    )


def test_the_upstream_is_asked_for_usage_without_the_client_knowing(
    make_upstream, start_berry
) -> None:
    upstream = make_upstream(name="x")
    berry = start_berry(build_config({"x": upstream}))
    HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps({"model": "test-model", "messages": PROMPT, "stream": True}),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    sent = upstream.stats()["last_request"]["body"]
    assert sent["stream_options"] == {"include_usage": True}


def test_a_stream_cut_midway_counts_what_was_relayed(make_upstream, start_berry) -> None:
    berry = berry_with(make_upstream, start_berry, mode="cut_stream", stream_chunks=6)
    response = HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps({"model": "test-model", "messages": PROMPT, "stream": True}),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    assert "stream_interrupted" in response.text
    usage = alice_usage(berry)
    # No usage came: the prompt is estimated from its text, the completion from the chunks
    # relayed before the cut (two).
    assert usage["requests"] == 1
    assert usage["prompt_tokens"] == 4  # "one two three": 13 characters / 4, rounded up
    assert usage["completion_tokens"] >= 1


# -- limits ----------------------------------------------------------------------------------


def test_token_limit_refuses_with_an_exact_retry_after(make_upstream, start_berry) -> None:
    # Each request uses 8 tokens; 20 per minute admits three, then refuses.
    berry = berry_with(make_upstream, start_berry, {"rate_limit": {"tokens_per_minute": 20}})
    sdk = client(berry)
    statuses = []
    for _ in range(4):
        try:
            sdk.chat.completions.create(model="test-model", messages=PROMPT)
            statuses.append(200)
        except openai.RateLimitError as error:
            statuses.append(429)
            assert error.code == "tokens_rate_limit_exceeded"
            retry_after = int(error.response.headers["retry-after"])
            # 24 tokens against 20: the rest of this minute, then until 24 x (1 - t/60) < 20
            # in the next one (t > 10 s).
            assert 10 <= retry_after <= 71
    assert statuses == [200, 200, 200, 429]
    assert alice_usage(berry)["total_tokens"] == 24  # refused requests cost nothing


def test_monthly_budget_answers_insufficient_quota(make_upstream, start_berry) -> None:
    budget = 4.5 * REQUEST_COST_USD  # room for five requests (the fifth starts below it)
    berry = berry_with(make_upstream, start_berry, {"monthly_budget_usd": budget})
    sdk = client(berry)
    admitted = 0
    for _ in range(8):
        try:
            sdk.chat.completions.create(model="test-model", messages=PROMPT)
            admitted += 1
        except openai.RateLimitError as error:
            assert error.code == "insufficient_quota"
            assert error.body["type"] == "insufficient_quota"  # type: ignore[index]
            assert int(error.response.headers["retry-after"]) >= 1
    assert admitted == 5
    assert alice_usage(berry)["cost_usd"] == pytest.approx(5 * REQUEST_COST_USD)


def test_parallel_requests_overshoot_a_budget_by_at_most_what_was_in_flight(
    make_upstream, start_berry
) -> None:
    """50 requests, 5 at a time, against a budget for 10: the README's bound on one
    instance is "what was already in flight when the limit was reached"."""
    concurrency = 5
    budget = 9.5 * REQUEST_COST_USD
    berry = berry_with(make_upstream, start_berry, {"monthly_budget_usd": budget}, latency_ms=50)

    def one(_: int) -> int:
        response = HTTP.post(
            f"{berry.base_url}/chat/completions",
            content=orjson.dumps({"model": "test-model", "messages": PROMPT}),
            headers={"Authorization": f"Bearer {USER_TOKEN}"},
        )
        return response.status_code

    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(one, range(50)))
    admitted = statuses.count(200)
    print(f"budget for 10, {concurrency} at a time: {admitted} admitted")  # for the README
    assert statuses.count(429) == 50 - admitted
    assert 10 <= admitted <= 10 + concurrency - 1, statuses
    assert alice_usage(berry)["requests"] == admitted


# -- reports ---------------------------------------------------------------------------------


def test_rate_limit_usage_in_berry_apis_shape(make_upstream, start_berry) -> None:
    limits = {"requests_per_minute": 100, "tokens_per_minute": 1000}
    berry = berry_with(make_upstream, start_berry, {"rate_limit": limits})
    for _ in range(3):
        client(berry).chat.completions.create(model="test-model", messages=PROMPT)
    body = admin(berry, "/admin/rate-limit-usage", user_id="alice").json()
    assert body["user_id"] == "alice"
    usage = body["usage"]
    assert usage["requests_this_minute"] in (2, 3)  # a minute may have just rolled over
    assert usage["requests_this_hour"] == usage["requests_this_day"] == 3
    assert usage["tokens_this_minute"] in (16, 24)
    assert body["limits"] == limits
    assert USER_TOKEN not in str(body)
    missing = admin(berry, "/admin/rate-limit-usage")
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "user_id"
    assert admin(berry, "/admin/rate-limit-usage", user_id="mallory").status_code == 404
    forbidden = HTTP.get(
        f"{berry.url}/admin/usage", headers={"Authorization": f"Bearer {USER_TOKEN}"}
    )
    assert forbidden.status_code == 403


def test_usage_days_parameter(make_upstream, start_berry) -> None:
    berry = berry_with(make_upstream, start_berry)
    client(berry).chat.completions.create(model="test-model", messages=PROMPT)
    week = admin(berry, "/admin/usage", days=7).json()
    assert week["users"]["alice"]["requests"] == 1
    assert week["from"] < week["to"]
    assert admin(berry, "/admin/usage", days=0).status_code == 400
    assert admin(berry, "/admin/usage", days=401).status_code == 400


def test_user_metrics_are_labelled_by_config_id(make_upstream, start_berry) -> None:
    berry = berry_with(make_upstream, start_berry)
    client(berry).chat.completions.create(model="test-model", messages=PROMPT)
    text = HTTP.get(f"{berry.url}/prometheus").text
    assert USER_TOKEN not in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    tokens = (
        "berry_api_user_tokens_total",
        (("model", "test-model"), ("type", "completion"), ("user", "alice")),
    )
    assert samples[tokens] == COMPLETION_TOKENS
    cost = ("berry_api_user_cost_usd_total", (("model", "test-model"), ("user", "alice")))
    assert samples[cost] == pytest.approx(REQUEST_COST_USD)


def test_the_public_status_page_reads_usage_at_most_every_few_seconds(
    make_upstream, start_berry, monkeypatch
) -> None:
    """`/` is public and refreshes itself: with DynamoDB a usage read is a Query per shard,
    so the page's table is read from the store at most every PUBLIC_USAGE_SECONDS."""
    from berry_shared import reports

    berry = berry_with(make_upstream, start_berry)
    store = berry.gateway.store
    reads = []
    real = store.usage_report

    async def counted(*args: Any) -> Any:
        reads.append(args)
        return await real(*args)

    monkeypatch.setattr(store, "usage_report", counted)
    for _ in range(5):
        assert HTTP.get(f"{berry.url}/").status_code == 200
    assert len(reads) == 1
    monkeypatch.setattr(reports, "PUBLIC_USAGE_SECONDS", 0.0)
    HTTP.get(f"{berry.url}/")
    assert len(reads) == 2
