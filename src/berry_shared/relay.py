"""The relay loop: pick backends with SmartAI, forward the request, fail over, report.

One request: check the caller's rate limit, rank the model's eligible backends, then try
them in order under one overall deadline until one answers. Nothing reaches the client
before a backend has produced its first byte, so every failure up to then can fail over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .auth import Caller, Directory
from .backend_state import CircuitState, ErrorClass
from .config import Config, Model
from .errors import (
    BerryError,
    InvalidRequest,
    NoBackendAvailable,
    RateLimited,
    UpstreamTimeout,
    error_json,
    retry_after_header,
)
from .metrics import Metrics
from .smart_ai import Candidate, assess, plan_attempts, retry_after_seconds
from .state import StateStore
from .upstream import (
    TRANSPORT_ERRORS,
    UpstreamClient,
    classify_exception,
    classify_status,
    is_dropped_connection,
    parse_retry_after,
)

SSE_DONE = b"data: [DONE]"
logger = logging.getLogger("berry.relay")


class UpstreamFailed(BerryError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


@dataclass(slots=True)
class ChatRequest:
    """A validated chat request: the body as the client sent it, plus what Berry reads."""

    body: dict[str, Any]
    model: str
    stream: bool
    backend: str | None


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a chat body once; anything Berry does not read passes through."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "The request body is not valid JSON (it must be a UTF-8 JSON object).",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest(
            "'model' must be a non-empty string.", param="model", code="invalid_type"
        )
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' must be a non-empty array of message objects.",
            param="messages",
            code="invalid_type",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                f"'messages[{index}]' must be an object with a string 'role'.",
                param=f"messages[{index}]",
                code="invalid_type",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    backend = body.pop("backend", None)
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise InvalidRequest(
            "'backend' must be a provider id (a string).", param="backend", code="invalid_type"
        )
    return ChatRequest(body, model, bool(stream), backend)


@dataclass(slots=True)
class RelayResponse:
    """What the handler sends: either a whole body or a stream, plus Berry's headers."""

    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class _Attempt:
    """The outcome of one backend attempt that did not fail over."""

    response: aiohttp.ClientResponse
    # The whole body of a plain answer, or the first chunk of a stream.
    first_bytes: bytes
    upstream_seconds: float
    usage: object = None


@dataclass(slots=True)
class _Failure(Exception):
    error: ErrorClass
    detail: str
    retry_after: float | None = None


@dataclass(slots=True)
class _ClientMistake(Exception):
    """The upstream says the request itself is wrong: return its answer, do not fail over."""

    status: int
    content_type: str
    body: bytes


@dataclass(slots=True)
class _Tally:
    attempts: int = 0
    upstream_seconds: float = 0.0
    failures: list[tuple[str, _Failure]] = field(default_factory=list)


def sse_error_event(message: str, code: str) -> bytes:
    return b"data: " + error_json(message, "upstream_error", code) + b"\n\n"


class Relay:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        store: StateStore,
        upstream: UpstreamClient,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.directory = directory
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        self.streams_end_by = float("inf")

    def end_streams_by(self, deadline: float) -> None:
        """Streams in flight end by ``deadline`` (``time.perf_counter()``): shutdown."""
        self.streams_end_by = deadline

    # -- selection -------------------------------------------------------------------------

    def candidates(self, caller: Caller | None, model: Model, now: float) -> list[Candidate]:
        backends = self.directory.backends_for(caller, model)
        states = [self.store.state(b.key) for b in backends]
        return assess(backends, states, now, self.settings)

    # -- the request -----------------------------------------------------------------------

    async def chat(self, caller: Caller, request: ChatRequest, started: float) -> RelayResponse:
        """Serve one chat request; ``started`` is ``time.perf_counter()`` at arrival."""
        _, model = self.directory.model_for(caller, request.model)
        now = time.time()
        limits = caller.user.rate_limit
        if limits is not None and (windows := limits.windows()):
            wait = await self.store.count_request(caller.user_id, windows, now)
            if wait is not None:
                seconds = retry_after_header(wait)
                raise RateLimited(
                    f"Rate limit exceeded for your token; retry after {seconds} s.",
                    headers={"Retry-After": str(seconds)},
                )
        candidates = self.candidates(caller, model, now)
        if request.backend is not None:
            candidates = [c for c in candidates if c.backend.provider == request.backend]
            if not candidates:
                raise InvalidRequest(
                    f"The backend '{request.backend}' does not serve '{request.model}' "
                    "for your token.",
                    param="backend",
                    code="invalid_backend",
                )
        plan = plan_attempts(candidates, self.settings)
        self.metrics.chat_requests += 1
        if not plan:
            wait = retry_after_seconds((c.state for c in candidates), now, self.settings)
            raise NoBackendAvailable(
                f"No backend for '{request.model}' is available right now; retry after {wait} s.",
                headers={"Retry-After": str(wait)},
            )
        response = await self._serve(request, plan, started)
        self.metrics.chat_successes += 1
        return response

    async def _serve(
        self, request: ChatRequest, plan: list[Candidate], started: float
    ) -> RelayResponse:
        settings = self.settings
        deadline = started + settings.request_timeout_seconds
        tally = _Tally()
        per_provider: dict[str, int] = {}
        providers = self.config.providers
        for candidate in plan:
            if tally.attempts > settings.max_retries:
                break
            backend = candidate.backend
            provider = providers[backend.provider]
            if per_provider.get(backend.provider, 0) > provider.max_retries:
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            budget = min(provider.timeout_seconds, remaining)
            if candidate.circuit is CircuitState.HALF_OPEN and not await self.store.acquire_trial(
                backend.key, time.time(), budget
            ):
                continue
            tally.attempts += 1
            per_provider[backend.provider] = per_provider.get(backend.provider, 0) + 1
            body = orjson.dumps({**request.body, "model": backend.model})
            attempt_started = time.perf_counter()
            try:
                attempt = await self._attempt(candidate, body, request.stream, budget)
            except _Failure as failure:
                tally.upstream_seconds += time.perf_counter() - attempt_started
                self._failed(candidate, failure)
                tally.failures.append((backend.key, failure))
                continue
            except _ClientMistake as mistake:
                tally.upstream_seconds += time.perf_counter() - attempt_started
                return RelayResponse(
                    mistake.status,
                    mistake.content_type,
                    self._headers(candidate, tally, started),
                    mistake.body,
                )
            tally.upstream_seconds += attempt.upstream_seconds
            if request.stream:
                return self._respond_stream(attempt, candidate, tally, started)
            return self._respond(attempt, candidate, tally, started)
        error = self._all_failed(request, tally, deadline)
        error.headers.update(self._headers(None, tally, started))
        raise error

    async def _attempt(
        self, candidate: Candidate, body: bytes, stream: bool, budget: float
    ) -> _Attempt:
        """One backend, up to ``max_internal_retries`` more times if the connection dropped."""
        backend = candidate.backend
        started = time.perf_counter()
        internal_retries = self.settings.max_internal_retries
        while True:
            try:
                async with asyncio.timeout(budget - (time.perf_counter() - started)):
                    response = await self.upstream.post_chat(backend.provider, body)
                    try:
                        first, usage = await self._first_bytes(response, stream)
                    except BaseException:
                        response.close()
                        raise
                return _Attempt(response, first, time.perf_counter() - started, usage)
            except TRANSPORT_ERRORS as exc:
                if is_dropped_connection(exc):
                    # Most often a pooled keep-alive connection the backend had already
                    # closed: not its fault, so try it again on a fresh connection.
                    if internal_retries > 0 and time.perf_counter() - started < budget:
                        internal_retries -= 1
                        continue
                    raise _Failure(
                        ErrorClass.NETWORK, "connection dropped by the backend"
                    ) from None
                error = classify_exception(exc)
                detail = "timed out" if error is ErrorClass.TIMEOUT else "connection failed"
                raise _Failure(error, detail) from None
            except (_Failure, _ClientMistake):
                raise
            except Exception as exc:
                # A bug or an odd answer must cost one backend, not the whole request.
                logger.warning("unexpected %s from backend %s", type(exc).__name__, backend.key)
                raise _Failure(ErrorClass.SERVER, "unexpected error") from None

    async def _first_bytes(
        self, response: aiohttp.ClientResponse, stream: bool
    ) -> tuple[bytes, object]:
        """Read enough of an answer to know it is good; raise _Failure or _ClientMistake.

        Returns the bytes read (a whole JSON body, or a stream's first chunk) and the
        ``usage`` object of a JSON body.
        """
        status = response.status
        content_type = response.headers.get("Content-Type", "")
        if status >= 300:
            error = classify_status(status)
            body = await response.read()
            if error is None:
                response.release()
                raise _ClientMistake(status, content_type or "application/json", body)
            response.release()
            raise _Failure(
                error, f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After"))
            )
        if stream:
            if not content_type.startswith("text/event-stream"):
                raise _Failure(ErrorClass.SERVER, f"stream answered with {content_type!r}")
            first = await response.content.readany()
            if not first:
                raise _Failure(ErrorClass.SERVER, "stream ended before its first event")
            return first, None
        body = await response.read()
        response.release()
        try:
            parsed = orjson.loads(body) if "json" in content_type else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise _Failure(ErrorClass.SERVER, "answered with a body that is not a JSON object")
        return body, parsed.get("usage")

    # -- outcomes --------------------------------------------------------------------------

    def _failed(self, candidate: Candidate, failure: _Failure) -> None:
        self.store.record_failure(candidate.key, failure.error, time.time(), failure.retry_after)
        self.metrics.attempt_failed(candidate.key, failure.error.value)

    def _headers(
        self, candidate: Candidate | None, tally: _Tally, started: float
    ) -> dict[str, str]:
        """Who served (if anyone did), how many backends were tried, and Berry's own time."""
        overhead = (time.perf_counter() - started - tally.upstream_seconds) * 1000
        headers = {
            "x-berry-attempts": str(tally.attempts),
            "x-berry-overhead-ms": f"{max(overhead, 0.0):.2f}",
        }
        if candidate is not None:
            headers["x-berry-backend"] = candidate.key
        return headers

    def _respond(
        self, attempt: _Attempt, candidate: Candidate, tally: _Tally, started: float
    ) -> RelayResponse:
        latency = attempt.upstream_seconds
        self.store.record_success(candidate.key, latency * 1000, time.time())
        self.metrics.attempt_succeeded(candidate.key, latency, streamed=False)
        self.metrics.add_usage(candidate.key, attempt.usage)
        content_type = attempt.response.headers.get("Content-Type", "application/json")
        return RelayResponse(
            attempt.response.status,
            content_type,
            self._headers(candidate, tally, started),
            attempt.first_bytes,
        )

    def _respond_stream(
        self, attempt: _Attempt, candidate: Candidate, tally: _Tally, started: float
    ) -> RelayResponse:
        headers = self._headers(candidate, tally, started)
        headers["Cache-Control"] = "no-cache"
        return RelayResponse(
            200,
            attempt.response.headers.get("Content-Type", "text/event-stream"),
            headers,
            stream=self._pass_through(attempt, candidate),
        )

    async def _pass_through(self, attempt: _Attempt, candidate: Candidate) -> AsyncIterator[bytes]:
        """Relay a stream chunk by chunk; a broken stream ends with an SSE error event."""
        response = attempt.response
        key = candidate.key
        tail = attempt.first_bytes[-32:]
        failure: _Failure | None = None
        complete = False
        try:
            yield attempt.first_bytes
            try:
                async for chunk in response.content.iter_any():
                    tail = (tail + chunk)[-32:]
                    yield chunk
            except TRANSPORT_ERRORS as exc:
                failure = _Failure(classify_exception(exc), "the stream broke off")
            else:
                complete = SSE_DONE in tail
                if not complete:
                    failure = _Failure(ErrorClass.SERVER, "the stream ended without [DONE]")
            if failure is not None:
                yield sse_error_event(
                    f"The backend {key} stopped before the answer was complete ({failure.detail}).",
                    "stream_interrupted",
                )
        finally:
            if complete:
                response.release()
            else:
                response.close()
            if failure is not None:
                self._failed(candidate, failure)
            else:
                # Complete, or the client left: either way the backend did its part.
                self.store.record_success(key, attempt.upstream_seconds * 1000, time.time())
                self.metrics.attempt_succeeded(key, attempt.upstream_seconds, streamed=True)

    def _all_failed(self, request: ChatRequest, tally: _Tally, deadline: float) -> BerryError:
        failures = tally.failures
        summary = "; ".join(f"{key}: {f.error.value} ({f.detail})" for key, f in failures)
        if time.perf_counter() >= deadline or (
            failures and failures[-1][1].error is ErrorClass.TIMEOUT
        ):
            return UpstreamTimeout(
                f"No backend for '{request.model}' answered in time. {summary}".strip()
            )
        if failures and all(f.error is ErrorClass.RATE_LIMIT for _, f in failures):
            waits = [f.retry_after for _, f in failures if f.retry_after]
            wait = retry_after_header(min(waits)) if waits else 1
            return RateLimited(
                f"Every backend for '{request.model}' is rate limited upstream. {summary}",
                code="upstream_rate_limited",
                headers={"Retry-After": str(wait)},
            )
        if not failures:
            return NoBackendAvailable(
                f"No backend for '{request.model}' could take the request (all busy with "
                "recovery trials); retry shortly.",
                headers={"Retry-After": "1"},
            )
        return UpstreamFailed(
            f"All {len(failures)} backend attempt(s) for '{request.model}' failed: {summary}"
        )
