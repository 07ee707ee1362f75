"""The ``/`` status page: every model's backends at a glance, refreshing itself."""

from __future__ import annotations

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
"""


def _badge(value: str) -> str:
    return f'<span class="badge {escape(value)}">{escape(value.replace("_", "-"))}</span>'


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))


def _model_table(key: str, model: dict[str, Any]) -> str:
    rows = []
    for b in model["backends"]:
        share = b["selection_share"]
        rows.append(
            "<tr>"
            f"<td>{escape(b['backend_key'])}</td>"
            f"<td>{_badge('healthy' if b['healthy'] else 'unhealthy')}</td>"
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
        "<table><tr><th>backend</th><th>health</th><th>circuit</th><th>confidence</th>"
        "<th>weight</th><th>effective weight</th><th>selection share</th>"
        "<th>latency ms</th><th>failures</th><th>priority</th><th>tags</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_status_page(health: dict[str, Any]) -> str:
    summary = health["summary"]
    store = health["state_store"]
    models = "".join(_model_table(k, m) for k, m in health["models"].items())
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        "<title>Berry status</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Berry {_badge(health['status'])}</h1>"
        f"<p class=muted>live, refreshes every {REFRESH_SECONDS} s · {escape(health['timestamp'])}"
        f" · providers {summary['provider_health']['healthy']}/"
        f"{summary['provider_health']['total']} healthy · models "
        f"{summary['model_health']['healthy']}/{summary['model_health']['total']} healthy · "
        f"state store {escape(store['kind'])} "
        f"{_badge('healthy' if store['healthy'] else 'degraded')}</p>"
        f"{models}</body></html>"
    )
