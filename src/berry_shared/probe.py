"""Health probes: cheap requests that bring failed backends back and keep idle ones measured.

``HealthProber.run_once`` is the whole job, so ``berry serve`` can loop it in the background
and a scheduled Lambda can call it once per tick. Backends billed per request are never
probed (each probe would cost a real request); they recover through half-open trials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from .backend_state import BackendState, CircuitState, ErrorClass
from .config import Backend, Config
from .dialects import AttemptFailed, Dialect
from .dialects.base import ERROR_BODY_LIMIT
from .smart_ai import UNHEALTHY_CONFIDENCE
from .state import StateStore
from .transport import HttpTransport, ReadTimeout, TransportError

logger = logging.getLogger("berry.probe")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    backend_key: str
    reason: str  # "recovery" or "idle"
    ok: bool
    error: ErrorClass | None = None
    latency_ms: float | None = None


def needs_recovery(state: BackendState, now: float, config: Config) -> bool:
    return (
        state.circuit(now, config.settings) is not CircuitState.CLOSED
        or state.consecutive_failures > 0
        or state.confidence < UNHEALTHY_CONFIDENCE
    )


class HealthProber:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        transport: HttpTransport,
        dialects: dict[str, Dialect],
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.store = store
        self.transport = transport
        self.dialects = dialects
        self._last_probe: dict[str, float] = {}

    def probe_targets(self) -> list[Backend]:
        """Every distinct enabled per-token backend of an enabled model and provider."""
        targets: dict[str, Backend] = {}
        for model in self.config.models.values():
            if not model.enabled:
                continue
            for backend in model.backends:
                provider = self.config.providers[backend.provider]
                if backend.enabled and provider.enabled and backend.billing_mode == "per_token":
                    targets.setdefault(backend.key, backend)
        return list(targets.values())

    def due(self, now: float) -> list[tuple[Backend, str]]:
        """Backends to probe now: unhealthy ones every recovery interval, idle healthy ones
        every lightweight-check interval."""
        due = []
        for backend in self.probe_targets():
            state = self.store.state(backend.key)
            last = self._last_probe.get(backend.key, 0.0)
            if needs_recovery(state, now, self.config):
                if now - last >= self.settings.recovery_check_interval_seconds:
                    due.append((backend, "recovery"))
            else:
                interval = self.settings.smart_ai.lightweight_check_interval_seconds
                if now - max(last, state.last_request_at) >= interval:
                    due.append((backend, "idle"))
        return due

    async def run_once(self, now: float | None = None) -> list[ProbeResult]:
        now = time.time() if now is None else now
        due = self.due(now)
        for backend, _ in due:
            self._last_probe[backend.key] = now
        return list(await asyncio.gather(*(self.probe(b, reason) for b, reason in due)))

    async def probe(self, backend: Backend, reason: str) -> ProbeResult:
        """One tiny chat request; any answer but a backend failure counts as alive."""
        dialect = self.dialects[backend.provider]
        request = dialect.probe_request(backend.model)
        timeout = self.settings.health_check_timeout_seconds
        started = time.perf_counter()
        error: ErrorClass | None = None
        try:
            async with asyncio.timeout(timeout):
                response = await self.transport.send(request)
                try:
                    body = await response.read(ERROR_BODY_LIMIT)
                finally:
                    response.close()
                if response.status >= 300:
                    # A 400 (say, max_tokens unsupported) still proves the backend is up.
                    outcome = dialect.failure(response.status, response.headers, body)
                    if isinstance(outcome, AttemptFailed):
                        error = outcome.error
        except (TimeoutError, ReadTimeout):
            error = ErrorClass.TIMEOUT
        except TransportError:
            error = ErrorClass.NETWORK
        latency_ms = (time.perf_counter() - started) * 1000
        if error is None:
            self.store.record_success(backend.key, latency_ms, time.time())
        else:
            self.store.record_failure(backend.key, error, time.time())
        logger.debug("probe %s (%s): %s", backend.key, reason, error or "ok")
        return ProbeResult(backend.key, reason, error is None, error, latency_ms)

    async def run_forever(self) -> None:
        """Probe every ``health_check_interval_seconds`` until cancelled."""
        while True:
            try:
                await self.run_once()
            except Exception:  # a probe bug must not kill the loop; the next tick retries
                logger.exception("health probe round failed")
            await asyncio.sleep(self.settings.health_check_interval_seconds)


class BackgroundProbes:
    """The prober as a background task of a long-running process."""

    def __init__(self, prober: HealthProber) -> None:
        self.prober = prober
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.prober.run_forever(), name="berry-probes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
