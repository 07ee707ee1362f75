"""The ``/`` status page in a real browser: Debian's Chromium driven by Playwright.

Berry runs in front of demo upstreams put into known states (healthy, failing until its
circuit opened, rate limited with a Retry-After, not used yet); the page must load without a
console error, say for each backend why it is in its state, and update itself.

`make chromium` installs the browser (`make test` depends on it). To refresh the README's
screenshot: ``BERRY_STATUS_SCREENSHOT=docs/status-page.png .venv/bin/python -m pytest
tests/test_status_page.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from berry_handlers.status_page import backend_reason
from support import ADMIN_TOKEN, Berry, DemoUpstream, build_config

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, never `playwright install`
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
UPDATE_TIMEOUT_MS = 10_000
OK_RECENTLY = re.compile(r"^ok \d+ s ago$")  # a page that updates every second has ten chances


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs it (Debian's package)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 560})
    yield context.new_page()
    context.close()


def chat(berry: Berry, model: str, backend: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if backend is not None:
        body["backend"] = backend  # pin the provider: no failover hides its state
    return httpx.post(
        f"{berry.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )


@pytest.fixture
def berry_in_known_states(
    make_upstream: Callable[..., DemoUpstream], start_berry: Callable[..., Berry]
) -> Berry:
    upstreams = {
        "steady": make_upstream(name="steady", latency_ms=5),
        "broken": make_upstream(name="broken", mode="fail", failure_status=500),
        "limited": make_upstream(name="limited", mode="fail", failure_status=429, retry_after=120),
        "spare": make_upstream(name="spare"),
    }
    config = build_config(
        upstreams,
        models={
            "gpt-4o": [{"provider": "steady", "weight": 3.0}, {"provider": "broken"}],
            "gpt-4o-mini": [{"provider": "limited"}, {"provider": "spare"}],
        },
        settings={"circuit_breaker_failure_threshold": 2, "circuit_breaker_timeout_seconds": 60},
    )
    berry = start_berry(config)
    assert chat(berry, "gpt-4o", "steady").status_code == 200
    for _ in range(2):  # the threshold: its circuit opens
        assert chat(berry, "gpt-4o", "broken").status_code == 502
    assert chat(berry, "gpt-4o-mini", "limited").status_code == 429
    return berry


def row(page: Page, backend_key: str) -> Any:
    return page.locator(f'tr[data-backend="{backend_key}"]')


def test_the_status_page_shows_why_and_updates_itself(
    berry_in_known_states: Berry, page: Page, tmp_path: Path
) -> None:
    berry = berry_in_known_states
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    response = page.goto(f"{berry.url}/?refresh=1")
    assert response is not None and response.status == 200
    expect(page).to_have_title("Berry status")

    steady, broken = row(page, "steady:up-model"), row(page, "broken:up-model")
    limited, spare = row(page, "limited:up-model"), row(page, "spare:up-model")
    expect(steady.locator(".badge").first).to_have_text("healthy")
    expect(steady.locator("td.why")).to_have_text(OK_RECENTLY)
    expect(broken.locator(".badge").first).to_have_text("unhealthy")
    expect(broken.locator(".badge.open")).to_have_text("open")
    expect(broken.locator("td.why")).to_contain_text("server error")
    expect(broken.locator("td.why")).to_contain_text("(2 in a row), next trial in")
    expect(limited.locator(".badge").first).to_have_text("unhealthy")
    expect(limited.locator("td.why")).to_contain_text("rate limited")
    expect(limited.locator("td.why")).to_contain_text("more (upstream 429)")
    expect(spare.locator("td.why")).to_have_text("no traffic yet")

    # It updates itself: the time stamp moves, and new evidence shows without a reload.
    first_stamp = page.locator("#updated").inner_text()
    expect(page.locator("#updated")).not_to_have_text(first_stamp, timeout=UPDATE_TIMEOUT_MS)
    assert chat(berry, "gpt-4o-mini", "spare").status_code == 200
    # Locators are queried afresh: they find the rows of the swapped-in content.
    expect(spare.locator("td.why")).to_have_text(OK_RECENTLY, timeout=UPDATE_TIMEOUT_MS)
    expect(page.locator("#stale")).to_be_hidden()
    # Today's usage per model (the public page names no user): gpt-4o answered once,
    # gpt-4o-mini once "spare" answered.
    usage = page.locator("#usage")
    expect(usage.locator("tr", has_text="gpt-4o-mini")).to_contain_text("1")
    expect(usage).to_contain_text("gpt-4o")

    shot = page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
    assert shot.startswith(b"\x89PNG")
    if target := os.environ.get("BERRY_STATUS_SCREENSHOT"):
        Path(target).write_bytes(shot)
    assert problems == []

    # Berry going away leaves the last view up, marked as out of date.
    berry.stop()
    expect(page.locator("#stale")).to_contain_text(
        "Berry did not answer", timeout=UPDATE_TIMEOUT_MS
    )
    expect(broken.locator("td.why")).to_contain_text("server error")


def test_the_update_interval_is_bounded(berry: Berry) -> None:
    for bad in ("0", "3601", "soon"):
        response = httpx.get(f"{berry.url}/?refresh={bad}", timeout=10)
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == "refresh"
    page = httpx.get(f"{berry.url}/", timeout=10)
    assert page.headers["cache-control"] == "no-store"
    assert "updates every 10 s" in page.text
    assert '<meta http-equiv="refresh" content="10">' in page.text  # inside <noscript>


NOW = datetime.fromisoformat("2026-01-01T12:00:00Z")


def entry(**fields: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "circuit": "closed",
        "failure_count": 0,
        "last_error": None,
        "last_error_at": None,
        "last_success_at": None,
        "next_trial_at": None,
        "cooldown_until": None,
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "no traffic yet"),
        ({"enabled": False}, "disabled in the config"),
        ({"last_success_at": "2026-01-01T11:59:57Z"}, "ok 3 s ago"),
        (
            {
                "circuit": "open",
                "failure_count": 5,
                "last_error": "server",
                "last_error_at": "2026-01-01T11:59:48Z",
                "last_success_at": "2026-01-01T11:00:00Z",
                "next_trial_at": "2026-01-01T12:00:48Z",
            },
            "server error 12 s ago (5 in a row), next trial in 48 s",
        ),
        (
            {
                "circuit": "open",
                "failure_count": 5,
                "last_error": "timeout",
                "last_error_at": "2026-01-01T11:58:00Z",
                "next_trial_at": "2026-01-01T11:59:59Z",
            },
            "timeout 2 min ago (5 in a row), next trial due now",
        ),
        (
            {
                "failure_count": 1,
                "last_error": "rate_limit",
                "last_error_at": "2026-01-01T11:59:30Z",
                "cooldown_until": "2026-01-01T12:05:00Z",
            },
            "rate limited 30 s ago, resting 5 min more (upstream 429)",
        ),
        (
            {
                "circuit": "half_open",
                "last_error": "network",
                "last_error_at": "2026-01-01T10:00:00Z",
                "failure_count": 3,
            },
            "network error 2 h ago (3 in a row), on trial: one request at a time",
        ),
        (
            {
                "last_error": "auth",
                "last_error_at": "2026-01-01T11:00:00Z",
                "last_success_at": "2026-01-01T11:59:00Z",
            },
            "ok 60 s ago",
        ),
    ],
)
def test_a_backend_reason_reads_like_a_sentence(fields: dict[str, Any], reason: str) -> None:
    assert backend_reason(entry(**fields), NOW) == reason
