"""The local app: every route group in one FastAPI app, for ``berry serve`` under uvicorn."""

from __future__ import annotations

from fastapi import FastAPI

from berry_shared.gateway import Gateway

from . import admin, chat, health, models, smart_ai
from .common import build_app


def create_app(gateway: Gateway | None = None, background_probes: bool = False) -> FastAPI:
    """All routes; the gateway is the given one, or loaded from ``CONFIG_PATH`` at start-up."""
    return build_app(
        chat.router,
        models.router,
        health.router,
        admin.router,
        smart_ai.router,
        gateway=gateway,
        title="Berry",
        background_probes=background_probes,
    )
