"""The REST API's catch-all: every path and method that no other function serves.

API Gateway sends a path's own methods to their functions and everything else here (an
``ANY`` method on every resource, and the greedy ``/{proxy+}``). This app has every router,
so it answers as ``berry serve`` does: 404 for an unknown path, 405 with ``Allow`` for a
known path's other methods, both in OpenAI's error shape, and CORS preflights from the
config's ``cors_allow_origins``. The routes themselves never run here (API Gateway sends
each to its own function); ``/openapi.json``, Berry's schema, does, as under ``berry serve``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from .local import create_app
from .serverless import lambda_handler

# The streaming chat route lives under this prefix (Lambda Web Adapter removes it).
STREAM_PREFIX = "/stream"


class WithoutStreamPrefix:
    """``/stream/v1/chat/completions`` is the chat route: a GET on it is a 405, not a 404."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(f"{STREAM_PREFIX}/"):
            path = path[len(STREAM_PREFIX) :]
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


app = create_app()
app.add_middleware(WithoutStreamPrefix)
handler = lambda_handler(app, "fallback")
