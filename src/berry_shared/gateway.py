"""The gateway: config, directory, state store, upstream client, relay and metrics, wired once.

One ``Gateway`` per process (per Lambda container, or the one uvicorn worker). Handlers reach
everything through it; nothing in here knows which web framework called.
"""

from __future__ import annotations

import os
import time

from .auth import Directory
from .config import Config, load_config
from .dialects import build_dialects
from .metrics import Metrics
from .probe import BackgroundProbes, HealthProber
from .relay import Relay
from .smart_ai import Candidate
from .state import StateStore, create_store
from .transport import HttpTransport


class Gateway:
    def __init__(self, config: Config, store: StateStore | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.directory = Directory(config)
        self.store = store or create_store(config.settings)
        self.transport = HttpTransport()
        self.dialects = build_dialects(config.providers)
        self.metrics = Metrics()
        self.relay = Relay(
            config, self.directory, self.store, self.transport, self.dialects, self.metrics
        )
        self.prober = HealthProber(config, self.store, self.transport, self.dialects)
        self._background_probes = BackgroundProbes(self.prober)
        self.started_at = time.time()
        self.metrics.watch_backends(self._backend_gauges)

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str] | None = None) -> Gateway:
        return cls(load_config(path))

    async def start(self, background_probes: bool = False) -> None:
        """Connect the store; a long-running process also probes backends in the background
        (on Lambda a scheduled function calls ``prober.run_once`` instead)."""
        await self.store.start()
        if background_probes:
            self._background_probes.start()

    def begin_shutdown(self, grace_seconds: float) -> None:
        """The process is stopping: every stream in flight ends, with an SSE error event and a
        properly finished body, within ``grace_seconds``."""
        self.relay.end_streams_by(time.perf_counter() + grace_seconds)

    async def close(self) -> None:
        await self._background_probes.stop()
        await self.transport.close()
        await self.store.close()

    def assess_model(self, model_key: str, now: float | None = None) -> list[Candidate]:
        """Every enabled backend of a model, scored as the selector sees it (no user filter)."""
        return self.relay.candidates(None, self.config.models[model_key], now or time.time())

    def _backend_gauges(self) -> list[tuple[str, bool, float]]:
        now = time.time()
        gauges: dict[str, tuple[str, bool, float]] = {}
        for key in self.config.models:
            for c in self.assess_model(key, now):
                gauges[c.key] = (c.key, c.is_healthy, c.effective_weight)
        return list(gauges.values())
