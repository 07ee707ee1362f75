"""The one HTTP client Berry talks to upstream providers with: aiohttp behind Berry's own types.

This module is the only one that knows aiohttp, the way an httpx transport hides its
backend: callers send an ``HttpRequest`` and get an ``HttpResponse`` back, and every failure
below HTTP arrives as a ``TransportError`` subclass. aiohttp is imported on the first request,
so processes that never call upstream (the report functions on Lambda) never load it.

Why aiohttp at all: measured on these 2-core machines, a bare relay on a plain
``httpx.AsyncClient`` served 413 requests/s, on httpx over an aiohttp transport 1,819, on
aiohttp itself 3,465 (see README, "Why aiohttp upstream"). The client is the hot path's
largest cost.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL


class TransportError(Exception):
    """An attempt failed below HTTP: no usable answer came back."""


class ConnectFailed(TransportError):
    """The connection could not be made (refused, unreachable, DNS, TLS)."""


class ConnectionDropped(TransportError):
    """The connection closed or reset before any answer: typically a stale pooled one."""


class ReadTimeout(TransportError):
    """The upstream went silent for longer than the request's read timeout."""


class BodyTooLarge(TransportError):
    """The answer is larger than the caller's limit; the connection was dropped."""


class BrokenAnswer(TransportError):
    """The answer broke off or was malformed at the HTTP level after it began."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One upstream call, fully built by a dialect."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    method: str = "POST"
    # Longest silence allowed between two reads of the answer (the provider's timeout).
    read_timeout: float | None = None
    # The URL is already percent-encoded exactly as it must travel (a signed path, where
    # turning "%3A" back into ":" would change what was signed).
    encoded_url: bool = False


class HttpResponse:
    """An upstream answer whose body has not been read yet.

    Read it whole with ``read`` or piece by piece with ``read_chunk``; then ``release`` it (the
    connection goes back to the pool) or ``close`` it (the connection is dropped, which also
    tells the provider to stop generating).
    """

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes; past it ``BodyTooLarge`` (never held whole)."""
        declared = self._response.content_length
        if declared is not None and declared > limit:
            self.close()
            raise BodyTooLarge(f"the answer announces {declared} bytes")
        body = bytearray()
        content = self._response.content
        try:
            while chunk := await content.readany():
                body += chunk
                if len(body) > limit:
                    # Freed now, not when a traceback that holds this frame is collected.
                    body.clear()
                    self.close()
                    raise BodyTooLarge(f"the answer is larger than {limit} bytes")
        except TransportError:
            raise
        except BaseException as exc:
            self.close()
            raise _translate(exc) from None
        self._response.release()
        return bytes(body)

    async def read_chunk(self) -> bytes:
        """The next bytes of the body as they arrive; ``b""`` at its end."""
        try:
            return await self._response.content.readany()
        except BaseException as exc:
            raise _translate(exc) from None

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class HttpTransport:
    """One shared connection pool for every provider, created in the running event loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._loop is not loop or session.closed:
            # A session belongs to one loop; Lambda runtimes may hand us a new one.
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, keepalive_timeout=60, enable_cleanup_closed=True
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
                raise_for_status=False,
                # Stored cookies would leak one caller's session into another's request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._loop = loop
            self._timeouts.clear()
        return session

    def _timeout(self, read_timeout: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(read_timeout)
        if timeout is None:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, sock_read=read_timeout)
            self._timeouts[read_timeout] = timeout
        return timeout

    async def send(self, request: HttpRequest) -> HttpResponse:
        """Send ``request`` and return once the status and headers have arrived.

        Redirects are never followed: a provider that answers 3xx gets that answer back (and
        its key, configured headers and the prompt never travel to another host).
        """
        session = self._client()
        url: str | URL = request.url
        if request.encoded_url:
            from yarl import URL  # aiohttp's URL type, installed with it

            url = URL(request.url, encoded=True)
        try:
            response = await session.request(
                request.method,
                url,
                data=request.body,
                headers=request.headers,
                timeout=self._timeout(request.read_timeout),
                allow_redirects=False,
            )
        except BaseException as exc:
            raise _translate(exc) from None
        return HttpResponse(response)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _translate(exc: BaseException) -> BaseException:
    """aiohttp's exception as Berry's; cancellation and Berry's own errors pass unchanged."""
    if isinstance(exc, TransportError | asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return exc
    import aiohttp

    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return ReadTimeout(str(exc) or "read timed out")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return ConnectionDropped("the connection closed before an answer")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL):
        return ConnectFailed(type(exc).__name__)
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return ConnectionDropped("the connection was reset")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return BrokenAnswer(type(exc).__name__)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ConnectFailed(type(exc).__name__)
    return exc
