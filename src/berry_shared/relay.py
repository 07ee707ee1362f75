"""The relay: admit a request, pick backends with SmartAI, race attempts, answer, record.

One request: check the caller's limits, rank the model's eligible backends, then attempt them
under one overall deadline. An attempt that fails hands over to the next backend (failover);
an attempt that is slower than that backend usually is gets company on the next backend
(a hedge), and whichever produces its first bytes first wins while the other is cancelled.
Nothing reaches the client before a backend has produced its first bytes, so every failure up
to then can fail over. Provider APIs are behind dialects; the relay never sees aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .attempt import Answer, attempt
from .auth import Caller, Directory
from .backend_state import CircuitState, ErrorClass
from .chat_request import ChatRequest
from .config import Config, HedgingSettings, Model
from .dialects import AttemptFailed, ClientMistake, Dialect, StreamBroken, Unsupported
from .errors import (
    BerryError,
    InvalidRequest,
    NoBackendAvailable,
    QuotaExceeded,
    RateLimited,
    UpstreamTimeout,
    echoed,
    error_json,
    retry_after_header,
)
from .hedging import LatencyTracker
from .metrics import Metrics
from .smart_ai import Candidate, assess, plan_attempts, retry_after_seconds
from .state import StateStore
from .state.ledger import REQUEST_WINDOWS
from .transport import HttpTransport, ReadTimeout, TransportError
from .usage import (
    NANO_PER_USD,
    Usage,
    UsageCounts,
    cost_nano,
    estimate_prompt_tokens,
    seconds_to_next_month,
    utc_day,
    utc_month,
)


class UpstreamFailed(BerryError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


@dataclass(slots=True)
class RelayResponse:
    """What the handler sends: either a whole body or a stream, plus Berry's headers."""

    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class _Tally:
    """What one request cost and learned, for its headers, metrics and error message."""

    started: float
    attempts: int = 0
    upstream_seconds: float = 0.0
    failures: list[tuple[str, AttemptFailed]] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)
    hedged: bool = False


@dataclass(slots=True)
class _Account:
    """Who pays for a request, and for which of their limits its tokens count."""

    user_id: str
    model_key: str
    chat: ChatRequest
    token_windows: list[int]
    budgeted: bool


@dataclass(slots=True)
class _Running:
    candidate: Candidate
    started: float
    hedge: bool


logger = logging.getLogger("berry.relay")


def sse_error_event(message: str, code: str) -> bytes:
    return b"data: " + error_json(message, "upstream_error", code) + b"\n\n"


class Relay:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        store: StateStore,
        transport: HttpTransport,
        dialects: dict[str, Dialect],
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.directory = directory
        self.store = store
        self.transport = transport
        self.dialects = dialects
        self.metrics = metrics
        self.latencies = LatencyTracker()
        # When streams in flight must end (shutdown), on the event loop's clock.
        self._streams_end_at = math.inf
        # Streams waiting for upstream bytes; shutdown moves their deadlines forward.
        self._stream_timeouts: set[asyncio.Timeout] = set()
        # Each model's hedging: [settings.hedging], with the model's own keys applied.
        base = self.settings.hedging
        self._hedging = {
            key: model.hedging.apply(base) if model.hedging else base
            for key, model in config.models.items()
        }

    def end_streams_by(self, deadline: float) -> None:
        """Streams in flight end by ``deadline`` (``time.perf_counter()``): shutdown."""
        loop_deadline = asyncio.get_running_loop().time() + (deadline - time.perf_counter())
        self._streams_end_at = min(self._streams_end_at, loop_deadline)
        for timeout in self._stream_timeouts:
            when = timeout.when()
            if when is None or when > self._streams_end_at:
                timeout.reschedule(self._streams_end_at)

    def hedging_for(self, model_key: str) -> HedgingSettings:
        return self._hedging[model_key]

    # -- selection -------------------------------------------------------------------------

    def candidates(self, caller: Caller | None, model: Model, now: float) -> list[Candidate]:
        backends = self.directory.backends_for(caller, model)
        states = [self.store.state(b.key) for b in backends]
        return assess(backends, states, now, self.settings)

    # -- the request -----------------------------------------------------------------------

    async def chat(self, caller: Caller, chat: ChatRequest, started: float) -> RelayResponse:
        """Serve one chat request; ``started`` is ``time.perf_counter()`` at arrival."""
        model_key, model = self.directory.model_for(caller, chat.model)
        now = time.time()
        account = await self._admit(caller, model_key, chat, now)
        candidates = self.candidates(caller, model, now)
        if chat.backend is not None:
            candidates = [c for c in candidates if c.backend.provider == chat.backend]
            if not candidates:
                raise InvalidRequest(
                    f"The backend '{echoed(chat.backend)}' does not serve '{echoed(chat.model)}' "
                    "for your token.",
                    param="backend",
                    code="invalid_backend",
                )
        plan = plan_attempts(candidates, self.settings)
        self.metrics.chat_requests += 1
        if not plan:
            wait = retry_after_seconds((c.state for c in candidates), now, self.settings)
            raise NoBackendAvailable(
                f"No backend for '{echoed(chat.model)}' is available right now; "
                f"retry after {wait} s.",
                headers={"Retry-After": str(wait), **self._headers(None, _Tally(started))},
            )
        tally = _Tally(started)
        race_started = time.perf_counter()
        try:
            outcome = await self._race(chat, plan, self.hedging_for(model_key), tally)
        finally:
            tally.upstream_seconds = time.perf_counter() - race_started
            if tally.hedged:
                self.metrics.hedged(model_key)
        if isinstance(outcome, ClientMistake):
            return RelayResponse(
                outcome.status,
                outcome.content_type,
                self._headers(None, tally),
                outcome.body,
            )
        if outcome is None:
            error = self._all_failed(chat, tally)
            error.headers.update(self._headers(None, tally))
            raise error
        self.metrics.chat_successes += 1
        if chat.stream:
            return self._respond_stream(outcome, tally, account)
        return self._respond(outcome, tally, account)

    async def _admit(
        self, caller: Caller, model_key: str, chat: ChatRequest, now: float
    ) -> _Account:
        """The caller's budget, token limits and request limits, in that order (the cheap
        local checks first; a request refused is not counted)."""
        user, user_id = caller.user, caller.user_id
        if user.monthly_budget_usd is not None:
            spent = self.store.month_spend_nano(user_id, utc_month(now))
            if spent >= user.monthly_budget_usd * NANO_PER_USD:
                seconds = retry_after_header(seconds_to_next_month(now))
                raise QuotaExceeded(
                    f"You exceeded your monthly budget of ${user.monthly_budget_usd:g}; it "
                    "renews on the first of next month (UTC).",
                    headers={"Retry-After": str(seconds)},
                )
        limits = user.rate_limit
        token_windows: list[int] = []
        limited: set[int] = set()
        if limits is not None:
            if token_limits := limits.token_windows():
                wait = self.store.token_wait(user_id, token_limits, now)
                if wait is not None:
                    seconds = retry_after_header(wait)
                    raise RateLimited(
                        f"Token limit exceeded for your token; retry after {seconds} s.",
                        code="tokens_rate_limit_exceeded",
                        headers={"Retry-After": str(seconds)},
                    )
                token_windows = [window for window, _ in token_limits]
            if windows := limits.windows():
                wait = await self.store.count_request(user_id, windows, now)
                if wait is not None:
                    seconds = retry_after_header(wait)
                    raise RateLimited(
                        f"Rate limit exceeded for your token; retry after {seconds} s.",
                        headers={"Retry-After": str(seconds)},
                    )
                limited = {window for window, _ in windows}
        self.store.note_request(user_id, [w for w in REQUEST_WINDOWS if w not in limited], now)
        budgeted = user.monthly_budget_usd is not None
        return _Account(user_id, model_key, chat, token_windows, budgeted)

    def _account(self, account: _Account, answer: Answer, usage: Usage | None) -> None:
        """Count an answer's usage against its user: tokens, cost, and token windows."""
        if usage is None:
            usage = Usage(
                estimate_prompt_tokens(account.chat.messages),
                answer.decoder.completion_tokens_estimate if answer.decoder else 0,
                estimated=True,
            )
        backend = answer.candidate.backend
        cost = cost_nano(usage, backend.price)
        now = time.time()
        user_id = account.user_id
        self.store.record_usage(
            user_id, account.model_key, utc_day(now), UsageCounts.of(usage, cost)
        )
        if account.budgeted and cost:
            self.store.add_spend(user_id, utc_month(now), cost)
        if account.token_windows:
            self.store.add_tokens(user_id, account.token_windows, usage.total_tokens, now)
        self.metrics.add_usage(backend.key, usage)
        self.metrics.user_usage(user_id, account.model_key, usage, cost)

    async def _race(
        self, chat: ChatRequest, plan: list[Candidate], hedging: HedgingSettings, tally: _Tally
    ) -> Answer | ClientMistake | None:
        """Attempt the plan in order, one at a time, adding a hedge whenever the newest attempt
        is slower than its backend usually is; the first answer wins.

        An attempt that no hedge could join (hedging off, or no backend left to hedge with) is
        awaited directly: a task and a wait per request cost the hot path about a tenth of its
        throughput, and a single attempt needs neither."""
        settings = self.settings
        deadline = tally.started + settings.request_timeout_seconds
        pending = deque(plan)
        running: dict[asyncio.Task[Answer], _Running] = {}
        per_provider: dict[str, int] = {}
        hedge_at = math.inf
        result: Answer | AttemptFailed | ClientMistake
        try:
            while True:
                now = time.perf_counter()
                may_start = (
                    tally.attempts <= settings.max_retries and now < deadline and bool(pending)
                )
                if may_start and (
                    not running or (now >= hedge_at and len(running) < hedging.max_parallel)
                ):
                    started = await self._start(pending, per_provider, chat, tally)
                    hedge_at = math.inf
                    if started is None:
                        if not running:
                            return None
                        continue
                    work, info = started
                    info.hedge = bool(running)
                    tally.attempts += 1
                    tally.hedged = tally.hedged or info.hedge
                    if not running and not (hedging.enabled and pending):
                        try:
                            result = await work
                        except (AttemptFailed, ClientMistake) as failed:
                            result = failed
                        if (outcome := self._outcome(info, result, chat, tally)) is not None:
                            return outcome
                        continue
                    running[asyncio.create_task(work)] = info
                    if hedging.enabled and pending:
                        delay = self.latencies.hedge_delay(info.candidate.key, chat.stream, hedging)
                        hedge_at = info.started + delay
                    continue
                if not running:
                    return None
                wait_until = min(deadline, hedge_at) if pending else deadline
                done, _ = await asyncio.wait(
                    running,
                    timeout=max(0.0, wait_until - time.perf_counter()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    info = running.pop(task)
                    try:
                        result = task.result()
                    except (AttemptFailed, ClientMistake) as failed:
                        result = failed
                    outcome = self._outcome(info, result, chat, tally)
                    if outcome is not None:
                        return outcome
                if not done and time.perf_counter() >= deadline:
                    return None
        finally:
            self._cancel_losers(running)

    def _outcome(
        self,
        info: _Running,
        result: Answer | AttemptFailed | ClientMistake,
        chat: ChatRequest,
        tally: _Tally,
    ) -> Answer | ClientMistake | None:
        """One attempt's end: the answer (or the client's mistake) ends the race; a failure is
        recorded and the race goes on (None)."""
        if isinstance(result, AttemptFailed):
            self._failed(info.candidate, result)
            if result.error is ErrorClass.TIMEOUT:
                # No answer in this long: the backend's latency is at least that.
                elapsed_ms = (time.perf_counter() - info.started) * 1000
                self.store.record_latency_floor(info.candidate.key, elapsed_ms, time.time())
            # Kept for the error message only: without the traceback, whose frames (and the
            # buffers they hold) would otherwise live on in a reference cycle until a full
            # garbage collection.
            result.__traceback__ = result.__context__ = None
            tally.failures.append((info.candidate.key, result))
            return None
        if isinstance(result, ClientMistake):
            return result
        self.latencies.add(info.candidate.key, chat.stream, result.seconds)
        if info.hedge:
            self.metrics.hedge_won(info.candidate.key)
        return result

    async def _start(
        self,
        pending: deque[Candidate],
        per_provider: dict[str, int],
        chat: ChatRequest,
        tally: _Tally,
    ) -> tuple[Coroutine[Any, Any, Answer], _Running] | None:
        """The attempt on the next backend that may take one (not yet running); None if none
        may."""
        settings = self.settings
        deadline = tally.started + settings.request_timeout_seconds
        while pending:
            candidate = pending.popleft()
            backend = candidate.backend
            dialect = self.dialects[backend.provider]
            provider = dialect.provider
            if per_provider.get(backend.provider, 0) > provider.max_retries:
                continue
            budget = min(provider.timeout_seconds, deadline - time.perf_counter())
            if budget <= 0:
                return None
            try:
                request = dialect.chat_request(chat, backend.model)
            except Unsupported as unsupported:
                tally.unsupported.append(unsupported)
                continue
            except AttemptFailed as failure:
                # Known to fail before sending (no credentials to sign with): its failure.
                self._failed(candidate, failure)
                tally.failures.append((backend.key, failure))
                continue
            except Exception as exc:
                # A translation bug must cost this backend, never the whole request.
                logger.warning("cannot translate for %s: %s", backend.key, type(exc).__name__)
                tally.unsupported.append(
                    Unsupported(f"The request cannot be sent to the backend {backend.key}.")
                )
                continue
            if candidate.circuit is CircuitState.HALF_OPEN and not await self.store.acquire_trial(
                backend.key, time.time(), budget
            ):
                continue
            per_provider[backend.provider] = per_provider.get(backend.provider, 0) + 1
            work = attempt(
                self.transport,
                candidate,
                dialect,
                chat,
                request,
                budget,
                settings.max_internal_retries,
                settings.max_response_body_bytes,
            )
            return work, _Running(candidate, time.perf_counter(), hedge=False)
        return None

    def _cancel_losers(self, running: dict[asyncio.Task[Answer], _Running]) -> None:
        """Cancel attempts still in flight (their connections close, so the providers stop
        generating). A loser did not fail: it was only slower. That it takes at least this
        long is kept as a floor of its SmartAI latency; the hedge delay, which must stay what
        is normal for the backend, learns only from answers."""
        now = time.perf_counter()
        for task, info in running.items():
            task.cancel()
            task.add_done_callback(_close_late_answer)
            elapsed_ms = (now - info.started) * 1000
            self.store.record_latency_floor(info.candidate.key, elapsed_ms, time.time())

    # -- outcomes --------------------------------------------------------------------------

    def _failed(self, candidate: Candidate, failure: AttemptFailed) -> None:
        self.store.record_failure(candidate.key, failure.error, time.time(), failure.retry_after)
        self.metrics.attempt_failed(candidate.key, failure.error.value)

    def _headers(self, candidate: Candidate | None, tally: _Tally) -> dict[str, str]:
        """Who served (if anyone did), how many backends were tried, and Berry's own time."""
        overhead = (time.perf_counter() - tally.started - tally.upstream_seconds) * 1000
        headers = {
            "x-berry-attempts": str(tally.attempts),
            "x-berry-overhead-ms": f"{max(overhead, 0.0):.2f}",
        }
        if candidate is not None:
            headers["x-berry-backend"] = candidate.key
        return headers

    def _respond(self, answer: Answer, tally: _Tally, account: _Account) -> RelayResponse:
        key = answer.candidate.key
        self.store.record_success(key, answer.seconds * 1000, time.time())
        self.metrics.attempt_succeeded(key, answer.seconds, streamed=False)
        self._account(account, answer, answer.usage)
        return RelayResponse(
            200, answer.content_type, self._headers(answer.candidate, tally), answer.first
        )

    def _respond_stream(self, answer: Answer, tally: _Tally, account: _Account) -> RelayResponse:
        headers = self._headers(answer.candidate, tally)
        headers["Cache-Control"] = "no-cache"
        stream = self._stream(answer, account)
        return RelayResponse(200, "text/event-stream", headers, stream=stream)

    async def _stream(self, answer: Answer, account: _Account) -> AsyncIterator[bytes]:
        """Relay a stream as it arrives; a stream that breaks, goes silent for the provider's
        timeout, or outlives ``max_stream_duration_seconds`` ends with an SSE error event."""
        response, decoder, candidate = answer.response, answer.decoder, answer.candidate
        assert decoder is not None
        key = candidate.key
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self.settings.max_stream_duration_seconds
        failure: AttemptFailed | None = None
        cut: tuple[str, str] | None = None
        complete = answer.finished
        try:
            yield answer.first
            while not complete:
                try:
                    async with asyncio.timeout_at(min(ends_at, self._streams_end_at)) as timeout:
                        self._stream_timeouts.add(timeout)
                        try:
                            data = await response.read_chunk()
                        finally:
                            self._stream_timeouts.discard(timeout)
                except TimeoutError:
                    cut = self._cut_reason(ends_at)
                    break
                except ReadTimeout:
                    failure = AttemptFailed(ErrorClass.TIMEOUT, "the stream went silent")
                    break
                except TransportError:
                    failure = AttemptFailed(ErrorClass.NETWORK, "the stream broke off")
                    break
                try:
                    out = decoder.feed(data) if data else decoder.finish()
                except StreamBroken as broken:
                    failure = AttemptFailed(broken.error, broken.detail)
                    break
                complete = not data
                if out:
                    yield out
            if failure is not None:
                yield sse_error_event(
                    f"The backend {key} stopped before the answer was complete ({failure.detail}).",
                    "stream_interrupted",
                )
            elif cut is not None:
                yield sse_error_event(*cut)
        finally:
            if complete:
                response.release()
            else:
                response.close()
            if failure is not None:
                self._failed(candidate, failure)
            else:
                # Complete, cut by Berry, or the client left: the backend did its part.
                self.store.record_success(key, answer.seconds * 1000, time.time())
                self.metrics.attempt_succeeded(key, answer.seconds, streamed=True)
            # What was relayed is counted, even when the stream ended early.
            self._account(account, answer, decoder.usage)

    def _cut_reason(self, ends_at: float) -> tuple[str, str]:
        """Why Berry itself ended a stream: shutdown, or it ran too long (``ends_at``)."""
        if self._streams_end_at < ends_at:
            return "Berry is shutting down; the stream was ended.", "server_shutting_down"
        longest = self.settings.max_stream_duration_seconds
        return f"The stream ran longer than {longest:g} s.", "stream_too_long"

    def _all_failed(self, chat: ChatRequest, tally: _Tally) -> BerryError:
        failures = tally.failures
        model = echoed(chat.model)
        summary = "; ".join(f"{key}: {f.error.value} ({f.detail})" for key, f in failures)
        deadline = tally.started + self.settings.request_timeout_seconds
        if time.perf_counter() >= deadline or (
            failures and failures[-1][1].error is ErrorClass.TIMEOUT
        ):
            return UpstreamTimeout(f"No backend for '{model}' answered in time. {summary}".strip())
        if failures and all(f.error is ErrorClass.RATE_LIMIT for _, f in failures):
            waits = [f.retry_after for _, f in failures if f.retry_after]
            wait = retry_after_header(min(waits)) if waits else 1
            return RateLimited(
                f"Every backend for '{model}' is rate limited upstream. {summary}",
                code="upstream_rate_limited",
                headers={"Retry-After": str(wait)},
            )
        if not failures and tally.unsupported:
            first = tally.unsupported[0]
            return InvalidRequest(first.message, param=first.param, code="unsupported_parameter")
        if not failures:
            return NoBackendAvailable(
                f"No backend for '{model}' could take the request (all busy with "
                "recovery trials); retry shortly.",
                headers={"Retry-After": "1"},
            )
        return UpstreamFailed(
            f"All {len(failures)} backend attempt(s) for '{model}' failed: {summary}"
        )


def _close_late_answer(task: asyncio.Task[Answer]) -> None:
    """A cancelled attempt may still have finished first: close its answer, and retrieve its
    exception so asyncio does not report it as never retrieved."""
    if task.cancelled():
        return
    with contextlib.suppress(BaseException):
        task.result().close()
