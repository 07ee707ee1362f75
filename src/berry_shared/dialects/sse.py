"""Incremental server-sent events parsing, for dialects whose provider streams SSE.

Bytes go in as they arrive (split anywhere, even inside a line or a CRLF); complete events
come out as ``(event type, data)``. Follows the HTML standard's rules where providers use them:
``event:`` and ``data:`` fields, several ``data:`` lines joined with ``\\n``, comments and
unknown fields ignored, LF, CR or CRLF line ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: bytes


@dataclass(slots=True)
class SSEParser:
    _buffer: bytes = b""
    _event: str = ""
    _data: list[bytes] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk``."""
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            # A lone CR at the very end may be the first half of a CRLF: wait for more.
            keep_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                data = data[:-1]
                lines = data.split(b"\n")
                self._buffer = lines.pop() + b"\r"
                return self._lines(lines)
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data or self._event:
                    events.append(SSEEvent(self._event or "message", b"\n".join(self._data)))
                self._event, self._data = "", []
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
        return events

    @property
    def pending(self) -> bool:
        """Part of an event has arrived but not its end."""
        return bool(self._buffer or self._data or self._event)
