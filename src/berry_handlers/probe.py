"""The scheduled health probe (an EventBridge schedule on Lambda): one round, then flush.

``berry serve`` runs the same ``HealthProber`` in the background instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .common import build_app
from .serverless import gateway_from_lambda_environment, instrumented, lazily, powertools

# No routes: the app only holds this container's gateway, made once on the first tick.
app = build_app(title="Berry probe", gateway_factory=gateway_from_lambda_environment)


async def probe_round() -> dict[str, Any]:
    gateway = await app.state.gateway_holder.get()
    results = await gateway.prober.run_once()
    await gateway.store.flush()  # the container may be frozen right after we return
    return {
        "probed": len(results),
        "healthy": sorted(r.backend_key for r in results if r.ok),
        "failed": {r.backend_key: r.error.value for r in results if r.error is not None},
    }


def run_probes(event: dict[str, Any], context: Any) -> dict[str, Any]:
    summary = asyncio.get_event_loop().run_until_complete(probe_round())
    tools = powertools()
    tools.metrics.add_dimension(name="route_group", value="probe")
    tools.metrics.add_metric(name="ProbesSent", unit=tools.count, value=summary["probed"])
    tools.metrics.add_metric(name="ProbesFailed", unit=tools.count, value=len(summary["failed"]))
    if summary["failed"]:
        tools.logger.warning("probe failures", extra={"failed": summary["failed"]})
    return summary


handler = lazily(lambda: instrumented(run_probes))
