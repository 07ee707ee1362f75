"""The scheduled health probe (an EventBridge schedule on Lambda): one round, then flush.

``berry serve`` runs the same ``HealthProber`` in the background instead. No web framework
here: the probe function ships without FastAPI.
"""

from __future__ import annotations

import asyncio
from typing import Any

from berry_shared.gateway import Gateway

from .serverless import gateway_from_lambda_environment, instrumented, lazily, powertools

# This container's gateway, made and started on the first tick, kept for the next ones.
_gateway: list[Gateway] = []


async def started_gateway() -> Gateway:
    if not _gateway:
        gateway = gateway_from_lambda_environment()
        await gateway.start()
        _gateway.append(gateway)
    return _gateway[0]


async def probe_round() -> dict[str, Any]:
    gateway = await started_gateway()
    results = await gateway.prober.run_once()
    await gateway.store.flush()  # the container may be frozen right after we return
    return {
        "probed": len(results),
        "healthy": sorted(r.backend_key for r in results if r.ok),
        "failed": {r.backend_key: r.error.value for r in results if r.error is not None},
    }


async def close() -> None:
    """Stop this container's gateway (tests; Lambda simply discards the container)."""
    while _gateway:
        await _gateway.pop().close()


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
