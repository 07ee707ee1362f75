"""The one HTTP client Berry talks to upstream providers with, and how its failures read.

aiohttp, not httpx: measured on these 2-core machines, a bare relay on a plain
``httpx.AsyncClient`` served 413 requests/s, on httpx over an aiohttp transport 1,819, on
aiohttp itself 3,465 (see README, "Why aiohttp upstream"). The client is the hot path's
largest cost, so Berry uses aiohttp directly, through this one small module.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .backend_state import ErrorClass
from .config import Provider


@dataclass(frozen=True, slots=True)
class Target:
    """Everything needed to call one provider, built once at start-up."""

    chat_url: URL
    models_url: URL
    headers: CIMultiDict[str]
    # Between two reads of an answer; the relay bounds the wait for the first bytes itself.
    read_timeout: aiohttp.ClientTimeout


def build_target(provider: Provider) -> Target:
    headers: CIMultiDict[str] = CIMultiDict(provider.headers)
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    headers["Content-Type"] = "application/json"
    return Target(
        chat_url=URL(provider.api_base + "/chat/completions"),
        models_url=URL(provider.api_base + "/models"),
        headers=headers,
        read_timeout=aiohttp.ClientTimeout(total=None, sock_read=provider.timeout_seconds),
    )


class UpstreamClient:
    """One shared connection pool for every provider, created in the running event loop."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.targets = {pid: build_target(p) for pid, p in providers.items()}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # A session belongs to one loop; Lambda runtimes may hand us a new one.
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, keepalive_timeout=60, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
                raise_for_status=False,
            )
            self._loop = loop
        return self._session

    async def post_chat(self, provider_id: str, body: bytes) -> aiohttp.ClientResponse:
        """Send a chat request; the caller reads the answer and must release it."""
        target = self.targets[provider_id]
        return await self.session().post(
            target.chat_url, data=body, headers=target.headers, timeout=target.read_timeout
        )

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def classify_status(status: int) -> ErrorClass | None:
    """The error class of an upstream status; None for the client's own mistakes (no failover).

    401/403/402 mean the provider rejects *our* key or account, so another backend may work;
    404 on the chat path means the provider does not serve that model.
    """
    if status >= 500:
        return ErrorClass.SERVER
    if status == 429:
        return ErrorClass.RATE_LIMIT
    if status in (401, 402, 403):
        return ErrorClass.AUTH
    if status == 404:
        return ErrorClass.MODEL
    if status == 408:
        return ErrorClass.TIMEOUT
    return None


def classify_exception(exc: BaseException) -> ErrorClass:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return ErrorClass.TIMEOUT
    return ErrorClass.NETWORK


def is_dropped_connection(exc: BaseException) -> bool:
    """The connection ended before any answer: closed or reset, typically a stale pooled one."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in (
        errno.ECONNRESET,
        errno.EPIPE,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only; dates are rare upstream)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds <= 3600 else None


# Exceptions that mean "this attempt failed at the transport level", as opposed to a bug.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
