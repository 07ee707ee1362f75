"""The read-only views Berry reports: health, metrics, weights. Field names follow Berry API.

Every function takes the gateway and a clock reading and returns plain data for JSON. The
weights shown are the ones the selector uses (``assess``) and ``selection_share`` is the
probability it gives each backend now (``selection_shares``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from .backend_state import CircuitState
from .config import Backend, Model
from .gateway import Gateway
from .smart_ai import Candidate, selection_shares
from .state.ledger import REQUEST_WINDOWS
from .usage import UsageCounts, days_ending


def iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")


def public_url(url: str) -> str:
    """A base URL without credentials or query string, which may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _latency(candidate: Candidate) -> float | None:
    latency = candidate.state.latency_ms
    return None if latency is None else round(latency, 2)


class ModelView:
    """One model's backends as the selector sees them now, computed once per report."""

    def __init__(self, gateway: Gateway, key: str, model: Model, now: float) -> None:
        self.key = key
        self.model = model
        self.candidates = gateway.assess_model(key, now) if model.enabled else []
        self.by_key = {c.key: c for c in self.candidates}
        self.shares = selection_shares(self.candidates, gateway.settings)

    @property
    def healthy(self) -> list[Candidate]:
        return [c for c in self.candidates if c.is_healthy]

    @property
    def usable(self) -> bool:
        return any(c.available for c in self.candidates)

    def candidate(self, backend: Backend) -> Candidate | None:
        """None for a backend that is disabled (itself or its provider)."""
        return self.by_key.get(backend.key)


def model_views(gateway: Gateway, now: float) -> dict[str, ModelView]:
    return {
        key: ModelView(gateway, key, model, now) for key, model in gateway.config.models.items()
    }


def _when(timestamp: float) -> str | None:
    return iso(timestamp) if timestamp else None


def _backend_entry(
    view: ModelView, backend: Backend, gateway: Gateway, now: float
) -> dict[str, Any]:
    candidate = view.candidate(backend)
    state = gateway.store.state(backend.key)
    return {
        "provider": backend.provider,
        "model": backend.model,
        "backend_key": backend.key,
        "enabled": candidate is not None,
        "healthy": bool(candidate and candidate.is_healthy),
        "circuit": candidate.circuit.value if candidate else "disabled",
        "confidence": round(candidate.confidence if candidate else state.confidence, 4),
        "original_weight": backend.weight,
        "effective_weight": round(candidate.effective_weight, 6) if candidate else 0.0,
        "selection_share": round(view.shares.get(backend.key, 0.0), 6),
        "latency_ms": _latency(candidate) if candidate else None,
        "failure_count": state.consecutive_failures,
        "priority": backend.priority,
        "tags": backend.tags,
        "billing_mode": backend.billing_mode,
        "last_error": state.last_error.value if state.last_error else None,
        # Why a backend is (un)healthy: when it last failed and succeeded, and when it may
        # take traffic again (an open circuit's next trial, or an upstream 429's cooldown).
        "last_error_at": _when(state.last_failure_at),
        "last_success_at": _when(state.last_success_at),
        "next_trial_at": _when(
            state.opened_at + gateway.settings.circuit_breaker_timeout_seconds
            if candidate is not None and candidate.circuit is CircuitState.OPEN
            else 0.0
        ),
        "cooldown_until": _when(state.cooldown_until if state.cooldown_until > now else 0.0),
    }


def health(
    gateway: Gateway, now: float | None = None, views: dict[str, ModelView] | None = None
) -> tuple[int, dict[str, Any]]:
    """``/health``: 503 when no model has a usable backend."""
    now = now or time.time()
    views = views or model_views(gateway, now)
    providers: dict[str, Any] = {}
    for pid, provider in gateway.config.providers.items():
        models: dict[str, Any] = {}
        for view in views.values():
            for backend in view.model.backends:
                if backend.provider != pid or backend.model in models:
                    continue
                candidate = view.candidate(backend)
                state = gateway.store.state(backend.key)
                models[backend.model] = {
                    "healthy": bool(candidate and candidate.is_healthy),
                    "latency_ms": None if state.latency_ms is None else round(state.latency_ms, 2),
                    "failure_count": state.consecutive_failures,
                    "backend_key": backend.key,
                }
        providers[pid] = {
            "name": provider.name,
            "base_url": public_url(provider.base_url),
            "healthy": provider.enabled and any(m["healthy"] for m in models.values()),
            "enabled": provider.enabled,
            "models": models,
        }
    models_out: dict[str, Any] = {}
    unhealthy: list[dict[str, Any]] = []
    for key, view in views.items():
        entries = [_backend_entry(view, b, gateway, now) for b in view.model.backends]
        enabled = [e for e in entries if e["enabled"]]
        healthy_count = sum(1 for e in enabled if e["healthy"])
        models_out[key] = {
            "name": view.model.name,
            "strategy": view.model.strategy,
            "enabled": view.model.enabled,
            "backends": entries,
            "total_backends": len(enabled),
            "healthy_backends": healthy_count,
            "health_ratio": _ratio(healthy_count, len(enabled)),
        }
        unhealthy.extend(
            {
                "model": key,
                "backend_key": e["backend_key"],
                "circuit": e["circuit"],
                "failure_count": e["failure_count"],
                "last_error": e["last_error"],
            }
            for e in enabled
            if not e["healthy"]
        )
    active = [v for v in views.values() if v.model.enabled]
    usable = sum(1 for v in active if v.usable)
    healthy_models = sum(1 for v in active if v.healthy)
    healthy_providers = sum(1 for p in providers.values() if p["healthy"])
    store = gateway.store.status()
    if not active or usable == 0:
        status = "unhealthy"
    elif healthy_models == len(active) and store.healthy:
        status = "healthy"
    else:
        status = "degraded"
    body = {
        "status": status,
        "service_running": True,
        "summary": {
            "provider_health": {
                "total": len(providers),
                "healthy": healthy_providers,
                "ratio": _ratio(healthy_providers, len(providers)),
            },
            "model_health": {
                "total": len(active),
                "healthy": healthy_models,
                "ratio": _ratio(healthy_models, len(active)),
            },
        },
        "providers": providers,
        "models": models_out,
        "unhealthy_backends": unhealthy,
        "state_store": {"kind": store.kind, "healthy": store.healthy, "detail": store.detail},
        "timestamp": iso(now),
    }
    return (503 if status == "unhealthy" else 200), body


def openai_health(gateway: Gateway, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """``/v1/health``: the short form."""
    now = now or time.time()
    views = [v for v in model_views(gateway, now).values() if v.model.enabled]
    candidates = [c for v in views for c in v.candidates]
    usable = sum(1 for v in views if v.usable)
    healthy_backends = sum(1 for c in candidates if c.is_healthy)
    provider_ids = {c.backend.provider for c in candidates}
    healthy_providers = {c.backend.provider for c in candidates if c.is_healthy}
    status = (
        "healthy" if views and usable == len(views) else ("degraded" if usable else "unhealthy")
    )
    body = {
        "status": status,
        "service_running": True,
        "models_available": usable,
        "summary": {
            "providers": {
                "total": len(gateway.config.providers),
                "active": len(provider_ids),
                "healthy": len(healthy_providers),
            },
            "models": {"total": len(views), "available": usable},
            "backends": {"total": len(candidates), "healthy": healthy_backends},
        },
        "timestamp": iso(now),
        "uptime_seconds": round(now - gateway.started_at, 3),
    }
    return (503 if status == "unhealthy" else 200), body


def metrics(gateway: Gateway, now: float | None = None) -> dict[str, Any]:
    """``/metrics``: request totals and health ratios."""
    now = now or time.time()
    counts = gateway.metrics
    views = [v for v in model_views(gateway, now).values() if v.model.enabled]
    details: dict[str, Any] = {}
    for view in views:
        latencies = [c.state.latency_ms for c in view.candidates if c.state.latency_ms is not None]
        healthy = len(view.healthy)
        details[view.key] = {
            "healthy_backends": healthy,
            "total_backends": len(view.candidates),
            "health_ratio": _ratio(healthy, len(view.candidates)),
            "average_latency_ms": round(sum(latencies) / len(latencies), 2) if latencies else None,
        }
    candidates = [c for v in views for c in v.candidates]
    providers = {c.backend.provider for c in candidates}
    healthy_providers = {c.backend.provider for c in candidates if c.is_healthy}
    healthy_models = sum(1 for v in views if v.healthy)
    return {
        "service": {
            "running": True,
            "total_requests": counts.chat_requests,
            "successful_requests": counts.chat_successes,
            "success_rate": _ratio(counts.chat_successes, counts.chat_requests),
            "uptime_seconds": round(now - gateway.started_at, 3),
        },
        "providers": {
            "total": len(providers),
            "healthy": len(healthy_providers),
            "health_ratio": _ratio(len(healthy_providers), len(providers)),
        },
        "models": {
            "total": len(views),
            "healthy": healthy_models,
            "health_ratio": _ratio(healthy_models, len(views)),
            "details": details,
        },
        "timestamp": iso(now),
    }


def model_weights(
    gateway: Gateway, only: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """``/admin/model-weights``; ``only`` is an already-resolved model key."""
    now = now or time.time()
    models: dict[str, Any] = {}
    for key, view in model_views(gateway, now).items():
        if only is not None and key != only:
            continue
        entries = [_backend_entry(view, b, gateway, now) for b in view.model.backends]
        models[key] = {
            "model_name": key,
            "display_name": view.model.name,
            "strategy": view.model.strategy,
            "enabled": view.model.enabled,
            "total_effective_weight": round(sum(e["effective_weight"] for e in entries), 6),
            "backends": [
                {
                    "provider": e["provider"],
                    "model": e["model"],
                    "original_weight": e["original_weight"],
                    "effective_weight": e["effective_weight"],
                    "selection_share": e["selection_share"],
                    "is_healthy": e["healthy"],
                    "is_enabled": e["enabled"],
                    "circuit": e["circuit"],
                    "confidence": e["confidence"],
                    "priority": e["priority"],
                    "tags": e["tags"],
                    "billing_mode": e["billing_mode"],
                    "failure_count": e["failure_count"],
                }
                for e in entries
            ],
        }
    return {"models": models, "total_models": len(models), "timestamp": iso(now)}


def backend_health(gateway: Gateway, now: float | None = None) -> dict[str, Any]:
    """``/admin/backend-health``."""
    now = now or time.time()
    out: dict[str, Any] = {}
    for key, view in model_views(gateway, now).items():
        entries = [_backend_entry(view, b, gateway, now) for b in view.model.backends]
        out[key] = {
            "model_name": view.model.name,
            "enabled": view.model.enabled,
            "backends": [
                {
                    "provider": e["provider"],
                    "model": e["model"],
                    "enabled": e["enabled"],
                    "is_healthy": e["healthy"],
                    "failure_count": e["failure_count"],
                    "tags": e["tags"],
                    "priority": e["priority"],
                    "circuit": e["circuit"],
                    "confidence": e["confidence"],
                    "latency_ms": e["latency_ms"],
                    "last_error": e["last_error"],
                }
                for e in entries
            ],
        }
    return {"backend_health": out, "timestamp": iso(now)}


def system_stats(gateway: Gateway, now: float | None = None) -> dict[str, Any]:
    """``/admin/system-stats``."""
    now = now or time.time()
    all_views = model_views(gateway, now)
    _, summary = health(gateway, now, all_views)
    views = [v for v in all_views.values() if v.model.enabled]
    counts = gateway.metrics
    return {
        "system": {
            "is_running": True,
            "total_models": len(gateway.config.models),
            "available_models": sum(1 for v in views if v.usable),
            "uptime_seconds": round(now - gateway.started_at, 3),
            "state_store": summary["state_store"],
        },
        "health_summary": summary["summary"],
        "model_stats": {
            "total_requests": counts.chat_requests,
            "successful_requests": counts.chat_successes,
            "success_rate": _ratio(counts.chat_successes, counts.chat_requests),
            "models": {
                v.key: {"healthy_backends": len(v.healthy), "total_backends": len(v.candidates)}
                for v in views
            },
        },
        "timestamp": iso(now),
    }


def smart_ai_weights(
    gateway: Gateway, only: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """``/smart-ai/weights`` and ``/smart-ai/models/{model}/weights``."""
    now = now or time.time()
    models = []
    for key, view in model_views(gateway, now).items():
        if only is not None and key != only:
            continue
        entries = [_backend_entry(view, b, gateway, now) for b in view.model.backends]
        backends = []
        for backend, e in zip(view.model.backends, entries, strict=True):
            state = gateway.store.state(backend.key)
            backends.append(
                {
                    "provider": e["provider"],
                    "model": e["model"],
                    "original_weight": e["original_weight"],
                    "effective_weight": e["effective_weight"],
                    "selection_share": e["selection_share"],
                    "confidence": e["confidence"],
                    "is_premium": backend.is_premium,
                    "enabled": e["enabled"],
                    "tags": e["tags"],
                    "billing_mode": e["billing_mode"],
                    "health_details": {
                        "healthy": e["healthy"],
                        "circuit": e["circuit"],
                        "consecutive_failures": state.consecutive_failures,
                        "total_requests": state.requests,
                        "total_failures": state.failures,
                        "latency_ms": e["latency_ms"],
                        "last_error": e["last_error"],
                    },
                }
            )
        enabled = [b for b in backends if b["enabled"]]
        models.append(
            {
                "name": view.model.name,
                "key": key,
                "strategy": view.model.strategy,
                "enabled": view.model.enabled,
                "backends": backends,
                "stats": {
                    "total_backends": len(enabled),
                    "healthy_backends": sum(1 for b in enabled if b["health_details"]["healthy"]),
                    "total_effective_weight": round(sum(b["effective_weight"] for b in enabled), 6),
                    "average_confidence": round(
                        sum(b["confidence"] for b in enabled) / len(enabled), 4
                    )
                    if enabled
                    else 0.0,
                },
            }
        )
    return {"models": models, "total_smart_ai_models": len(models), "timestamp": iso(now)}


async def usage(
    gateway: Gateway, user_id: str | None, days: int, now: float | None = None
) -> dict[str, Any]:
    """``/admin/usage``: per user and model, over the last ``days`` UTC days (1 = today)."""
    now = now or time.time()
    window = days_ending(now, days)
    report = await gateway.store.usage_report(None if user_id is None else [user_id], window)
    users: dict[str, Any] = {}
    for uid in [user_id] if user_id is not None else gateway.config.users:
        models = report.get(uid, {})
        total = UsageCounts()
        for counts in models.values():
            total.add(counts)
        users[uid] = {
            **total.report(),
            "models": {key: counts.report() for key, counts in sorted(models.items())},
        }
    return {"users": users, "from": window[0], "to": window[-1], "timestamp": iso(now)}


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


async def rate_limit_usage(
    gateway: Gateway, user_id: str, now: float | None = None
) -> dict[str, Any]:
    """``/admin/rate-limit-usage``: Berry API's shape, plus the limits and token windows."""
    now = now or time.time()
    store = gateway.store
    limits = gateway.config.users[user_id].rate_limit
    limited = [window for window, _ in limits.windows()] if limits is not None else []
    requests = await store.request_rates(user_id, list(REQUEST_WINDOWS), limited, now)
    token_limits = limits.token_windows() if limits is not None else []
    tokens = await store.token_rates(user_id, [window for window, _ in token_limits], now)
    body: dict[str, Any] = {
        "user_id": user_id,
        "usage": {
            "requests_this_minute": _rounded(requests[60]),
            "requests_this_hour": _rounded(requests[3600]),
            "requests_this_day": _rounded(requests[86400]),
            **({"tokens_this_minute": round(tokens[60])} if 60 in tokens else {}),
            **({"tokens_this_day": round(tokens[86400])} if 86400 in tokens else {}),
        },
        "limits": limits.model_dump(exclude_none=True) if limits is not None else {},
        "timestamp": iso(now),
    }
    return body


# The status page is public and refreshes itself: its usage table is read from the store at
# most this often per gateway (with DynamoDB a read is one Query per shard).
PUBLIC_USAGE_SECONDS = 5.0
_public_usage: WeakKeyDictionary[Gateway, tuple[float, dict[str, Any]]] = WeakKeyDictionary()


async def usage_by_model(gateway: Gateway, now: float | None = None) -> dict[str, Any]:
    """Today's usage per model, all users together: the status page's table (which is public,
    so it names no user; per-user figures are in ``/admin/usage``)."""
    now = now or time.time()
    cached = _public_usage.get(gateway)
    if cached is not None and now - cached[0] < PUBLIC_USAGE_SECONDS:
        return cached[1]
    (day,) = days_ending(now, 1)
    totals: dict[str, UsageCounts] = {}
    for models in (await gateway.store.usage_report(None, [day])).values():
        for key, counts in models.items():
            totals.setdefault(key, UsageCounts()).add(counts)
    table = {"day": day, "models": {key: c.report() for key, c in sorted(totals.items())}}
    _public_usage[gateway] = (now, table)
    return table
