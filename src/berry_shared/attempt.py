"""One attempt on one backend: send the dialect's request, read until the answer is known good.

Nothing reaches the client before an attempt has produced its first bytes, so everything
that goes wrong up to then is this backend's failure (``AttemptFailed``, fail over) or the
client's own mistake (``ClientMistake``). The answer of a successful attempt is ``Answer``:
a whole OpenAI completion, or the first OpenAI chunks of a stream whose rest is still
upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .backend_state import ErrorClass
from .chat_request import ChatRequest
from .dialects import AttemptFailed, ClientMistake, Dialect, StreamBroken, StreamDecoder
from .dialects.base import ERROR_BODY_LIMIT
from .smart_ai import Candidate
from .transport import (
    BodyTooLarge,
    ConnectionDropped,
    HttpRequest,
    HttpResponse,
    HttpTransport,
    ReadTimeout,
    TransportError,
)
from .usage import Usage

logger = logging.getLogger("berry.relay")


@dataclass(slots=True)
class Answer:
    """An attempt that produced its first bytes."""

    candidate: Candidate
    dialect: Dialect
    response: HttpResponse
    # The whole OpenAI completion, or the stream's first OpenAI chunks.
    first: bytes
    content_type: str
    # Upstream time to those first bytes.
    seconds: float
    decoder: StreamDecoder | None = None
    usage: Usage | None = None
    # The stream already ended cleanly while its first bytes were read.
    finished: bool = False

    def close(self) -> None:
        self.response.close()


async def attempt(
    transport: HttpTransport,
    candidate: Candidate,
    dialect: Dialect,
    chat: ChatRequest,
    request: HttpRequest,
    budget: float,
    internal_retries: int,
    body_limit: int,
) -> Answer:
    """Try one backend within ``budget`` seconds, again on a fresh connection (up to
    ``internal_retries`` times) when a pooled connection turns out to be dead."""
    started = time.perf_counter()
    while True:
        try:
            async with asyncio.timeout(budget - (time.perf_counter() - started)):
                response = await transport.send(request)
                try:
                    return await _first_bytes(
                        response, candidate, dialect, chat, started, body_limit
                    )
                except BaseException:
                    response.close()
                    raise
        except ConnectionDropped:
            # Most often a pooled keep-alive connection the backend had already closed: not
            # its fault, so try it again on a fresh connection.
            if internal_retries > 0 and time.perf_counter() - started < budget:
                internal_retries -= 1
                continue
            raise AttemptFailed(ErrorClass.NETWORK, "connection dropped by the backend") from None
        except (TimeoutError, ReadTimeout):
            raise AttemptFailed(ErrorClass.TIMEOUT, "timed out") from None
        except BodyTooLarge:
            raise AttemptFailed(ErrorClass.SERVER, "answer larger than the body limit") from None
        except TransportError:
            raise AttemptFailed(ErrorClass.NETWORK, "connection failed") from None
        except (AttemptFailed, ClientMistake, asyncio.CancelledError):
            raise
        except StreamBroken as broken:
            raise AttemptFailed(broken.error, broken.detail) from None
        except Exception as exc:
            # A bug or an odd answer must cost one backend, not the whole request.
            logger.warning("unexpected %s from backend %s", type(exc).__name__, candidate.key)
            raise AttemptFailed(ErrorClass.SERVER, "unexpected error") from None


async def _first_bytes(
    response: HttpResponse,
    candidate: Candidate,
    dialect: Dialect,
    chat: ChatRequest,
    started: float,
    body_limit: int,
) -> Answer:
    status = response.status
    content_type = response.content_type
    if status >= 300:
        body = await response.read(ERROR_BODY_LIMIT)
        raise dialect.failure(status, response.headers, body)
    if not chat.stream:
        completion = dialect.completion(await response.read(body_limit), content_type, chat)
        return Answer(
            candidate,
            dialect,
            response,
            completion.body,
            completion.content_type,
            time.perf_counter() - started,
            usage=completion.usage,
        )
    if not content_type.startswith(dialect.stream_content_type):
        raise AttemptFailed(ErrorClass.SERVER, f"stream answered with {content_type[:60]!r}")
    decoder = dialect.stream_decoder(chat)
    while True:
        data = await response.read_chunk()
        finished = not data
        first = decoder.finish() if finished else decoder.feed(data)
        if first:
            seconds = time.perf_counter() - started
            return Answer(
                candidate,
                dialect,
                response,
                first,
                "text/event-stream",
                seconds,
                decoder,
                finished=finished,
            )
        if finished:
            raise AttemptFailed(ErrorClass.SERVER, "stream ended before its first event")
