"""The incremental SSE parser that the Anthropic and Gemini dialects read streams with."""

from __future__ import annotations

import pytest

from berry_shared.dialects.sse import SSEEvent, SSEParser

STREAM = (
    b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    b": a comment\n"
    b"event: ping\ndata: {}\n\n"
    b"data: line one\ndata: line two\n\n"
    b"id: 7\nretry: 100\ndata:no-space\n\n"
)
EVENTS = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent("ping", b"{}"),
    SSEEvent("message", b"line one\nline two"),
    SSEEvent("message", b"no-space"),
]


def test_whole_stream() -> None:
    parser = SSEParser()
    assert parser.feed(STREAM) == EVENTS
    assert not parser.pending


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13])
def test_split_anywhere_even_inside_crlf(size: int) -> None:
    parser = SSEParser()
    events = []
    for start in range(0, len(STREAM), size):
        events += parser.feed(STREAM[start : start + size])
    assert events == EVENTS
    assert not parser.pending


def test_incomplete_event_is_pending() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: x\ndata: {") == []
    assert parser.pending
    assert parser.feed(b"}\n\n") == [SSEEvent("x", b"{}")]


def test_lone_cr_line_ends() -> None:
    parser = SSEParser()
    # A CR at the very end may be half of a CRLF: the event after it decides.
    assert parser.feed(b"data: a\r\rdata: b\r\r") == [SSEEvent("message", b"a")]
    assert parser.feed(b"data: c\r\r") == [SSEEvent("message", b"b")]
