"""Incremental decoding of ``application/vnd.amazon.eventstream``, ConverseStream's framing.

Each message is a prelude (total length, headers length, prelude CRC32), typed headers, a
payload and a CRC32 of the whole. botocore's ``EventStreamBuffer`` is the well-kept
implementation: bytes go in as they arrive from the transport (a frame may be split across
reads anywhere, several may share one), whole checked messages come out. botocore is
imported when the first stream is decoded, so deployments without Bedrock never load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class FrameError(Exception):
    """The byte stream is not valid event-stream framing (a CRC mismatch, a bad length)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One event-stream message: ``kind`` is its ``:message-type`` ("event", "exception" or
    "error"), ``name`` its ``:event-type`` or ``:exception-type`` (or ``:error-code``)."""

    kind: str
    name: str
    payload: bytes
    headers: dict[str, Any]


# Prelude (12 bytes) and message CRC (4): the smallest message there is.
MIN_MESSAGE_LENGTH = 16
_NAME_HEADER = {"event": ":event-type", "exception": ":exception-type", "error": ":error-code"}


class FrameDecoder:
    """Frames out of a byte stream fed in pieces."""

    __slots__ = ("_buffer", "_pending")

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer

        self._buffer = EventStreamBuffer()
        self._pending = 0  # bytes fed that are not yet part of a whole message

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data``; ``FrameError`` if the framing is broken."""
        self._buffer.add_data(data)
        self._pending += len(data)
        frames: list[Frame] = []
        try:
            for message in self._buffer:
                length = message.prelude.total_length
                if length < MIN_MESSAGE_LENGTH:
                    # Checksums can be forged too: a zero-length message would never advance.
                    raise FrameError(f"a message of {length} bytes")
                self._pending -= length
                headers: dict[str, Any] = message.headers
                kind = str(headers.get(":message-type", "event"))
                name = str(headers.get(_NAME_HEADER.get(kind, ":event-type"), ""))
                frames.append(Frame(kind, name, message.payload, headers))
        except FrameError:
            raise
        except Exception as error:  # botocore's ParserError, or bytes its parser chokes on
            raise FrameError(type(error).__name__) from None
        return frames

    @property
    def incomplete(self) -> bool:
        """Part of a message has arrived but not all of it."""
        return self._pending > 0
