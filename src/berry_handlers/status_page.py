"""The ``/`` status page: every model's backends at a glance, why each is (un)healthy, live.

It updates itself: a small script fetches the page again every ``refresh`` seconds and swaps
its content in place (no flashing reload, and a note instead of an error page while Berry does
not answer). Without JavaScript, a ``<noscript>`` meta refresh does the same by reloading.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

REFRESH_SECONDS = 10

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{margin:0 0 .2rem}.muted{color:#777}table{border-collapse:collapse;margin:.5rem 0 1.5rem;
width:100%;background:#fff}th,td{padding:.35rem .6rem;border-bottom:1px solid #e5e5e5;
text-align:left}th{background:#f0f0f0;font-weight:600}td.num{text-align:right;
font-variant-numeric:tabular-nums}.badge{display:inline-block;padding:.1rem .5rem;
border-radius:1rem;font-size:12px;font-weight:600;color:#fff}.healthy,.closed{background:#2e7d32}
.degraded,.half_open{background:#ef6c00}.unhealthy,.open{background:#c62828}
.disabled{background:#9e9e9e}.bar{background:#90caf9;height:8px;border-radius:4px}
td:first-child{white-space:nowrap}td.why{color:#555;min-width:18rem}
#stale{background:#fff3e0;border:1px solid #ef6c00;padding:.3rem .6rem}
"""

# Fetch the page again and swap its content in; on failure keep the old one and say so.
_SCRIPT = """
(() => {
  const every = %d * 1000;
  const stale = document.getElementById("stale");
  async function refresh() {
    try {
      const response = await fetch(location.href, {cache: "no-store"});
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("content");
      if (!response.ok || !fresh) throw new Error("HTTP " + response.status);
      document.getElementById("content").replaceWith(fresh);
      stale.hidden = true;
    } catch (error) {
      stale.textContent = "Berry did not answer at " + new Date().toLocaleTimeString()
        + ": what you see may be out of date; trying again.";
      stale.hidden = false;
    }
    setTimeout(refresh, every);
  }
  setTimeout(refresh, every);
})();
"""

# What each error class of a backend's latest failure means, for a reader.
_ERROR_NAMES = {
    "network": "network error",
    "timeout": "timeout",
    "auth": "auth error",
    "rate_limit": "rate limited",
    "server": "server error",
    "model": "model error",
}


def _badge(value: str) -> str:
    return f'<span class="badge {escape(value)}">{escape(value.replace("_", "-"))}</span>'


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} d"


def backend_reason(backend: dict[str, Any], now: datetime) -> str:
    """Why a backend is in its state, e.g. "server error 12 s ago, next trial in 48 s"."""
    if not backend["enabled"]:
        return "disabled in the config"
    failed, succeeded = _moment(backend["last_error_at"]), _moment(backend["last_success_at"])
    parts: list[str] = []
    if failed is not None and (succeeded is None or failed >= succeeded):
        name = _ERROR_NAMES.get(backend["last_error"] or "", "failure")
        parts.append(f"{name} {_span((now - failed).total_seconds())} ago")
        if backend["failure_count"] > 1:
            parts[-1] += f" ({backend['failure_count']} in a row)"
    elif succeeded is not None:
        parts.append(f"ok {_span((now - succeeded).total_seconds())} ago")
    if (cooldown := _moment(backend["cooldown_until"])) is not None and cooldown > now:
        parts.append(f"resting {_span((cooldown - now).total_seconds())} more (upstream 429)")
    if (trial := _moment(backend["next_trial_at"])) is not None:
        wait = (trial - now).total_seconds()
        parts.append(f"next trial in {_span(wait)}" if wait >= 0.5 else "next trial due now")
    elif backend["circuit"] == "half_open":
        parts.append("on trial: one request at a time")
    return ", ".join(parts) or "no traffic yet"


def _model_table(key: str, model: dict[str, Any], now: datetime) -> str:
    rows = []
    for b in model["backends"]:
        share = b["selection_share"]
        health = "healthy" if b["healthy"] else ("disabled" if not b["enabled"] else "unhealthy")
        rows.append(
            f'<tr data-backend="{escape(b["backend_key"])}">'
            f"<td>{escape(b['backend_key'])}</td>"
            f"<td>{_badge(health)}</td>"
            f"<td class=why>{escape(backend_reason(b, now))}</td>"
            f"<td>{_badge(b['circuit'])}</td>"
            f"<td class=num>{_number(b['confidence'], 2)}</td>"
            f"<td class=num>{_number(b['original_weight'], 2)}</td>"
            f"<td class=num>{_number(b['effective_weight'], 3)}</td>"
            f"<td class=num>{share * 100:.1f}%"
            f'<div class=bar style="width:{share * 100:.0f}%"></div></td>'
            f"<td class=num>{_number(b['latency_ms'], 1)}</td>"
            f"<td class=num>{b['failure_count']}</td>"
            f"<td>{b['priority']}</td>"
            f"<td>{escape(', '.join(b['tags']))}</td>"
            "</tr>"
        )
    state = "healthy" if model["healthy_backends"] else "unhealthy"
    if not model["enabled"]:
        state = "disabled"
    return (
        f"<h2>{escape(model['name'])} <span class=muted>({escape(key)})</span> "
        f"{_badge(state)} <span class=muted>{model['healthy_backends']}/"
        f"{model['total_backends']} healthy</span></h2>"
        "<table><tr><th>backend</th><th>health</th><th>why</th><th>circuit</th>"
        "<th>confidence</th><th>weight</th><th>effective weight</th><th>selection share</th>"
        "<th>latency ms</th><th>failures</th><th>priority</th><th>tags</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _usage_table(usage: dict[str, Any]) -> str:
    rows = "".join(
        "<tr>"
        f"<td>{escape(key)}</td>"
        f"<td class=num>{u['requests']}</td>"
        f"<td class=num>{u['prompt_tokens']}</td>"
        f"<td class=num>{u['completion_tokens']}</td>"
        f"<td class=num>{u['cached_tokens']}</td>"
        f"<td class=num>${u['cost_usd']:.4f}</td>"
        "</tr>"
        for key, u in usage["models"].items()
    )
    return (
        f"<h2>Usage today <span class=muted>({escape(usage['day'])}, UTC, all users)</span></h2>"
        "<table id=usage><tr><th>model</th><th>requests</th><th>prompt tokens</th>"
        "<th>completion tokens</th><th>cached tokens</th><th>cost</th></tr>"
        + (rows or "<tr><td colspan=6 class=muted>no requests yet today</td></tr>")
        + "</table>"
    )


def render_status_page(
    health: dict[str, Any],
    refresh_seconds: int = REFRESH_SECONDS,
    usage: dict[str, Any] | None = None,
) -> str:
    """The page for ``reports.health()``'s document, updating itself every
    ``refresh_seconds``."""
    summary = health["summary"]
    store = health["state_store"]
    now = datetime.fromisoformat(health["timestamp"])
    models = "".join(_model_table(k, m, now) for k, m in health["models"].items())
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<noscript><meta http-equiv="refresh" content="{refresh_seconds}"></noscript>'
        '<link rel=icon href="data:,">'  # no /favicon.ico request (a 404 in the console)
        "<title>Berry status</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<p id=stale hidden></p>"
        "<main id=content>"
        f"<h1>Berry {_badge(health['status'])}</h1>"
        f"<p class=muted>live, updates every {refresh_seconds} s · "
        f"<time id=updated>{escape(health['timestamp'])}</time>"
        f" · providers {summary['provider_health']['healthy']}/"
        f"{summary['provider_health']['total']} healthy · models "
        f"{summary['model_health']['healthy']}/{summary['model_health']['total']} healthy · "
        f"state store {escape(store['kind'])} "
        f"{_badge('healthy' if store['healthy'] else 'degraded')}</p>"
        f"{models}{_usage_table(usage) if usage is not None else ''}</main>"
        f"<script>{_SCRIPT % refresh_seconds}</script></body></html>"
    )
