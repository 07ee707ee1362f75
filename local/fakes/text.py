"""How the fakes cut an answer into the pieces of a stream (deltas, events, chunks)."""

from __future__ import annotations


def split_text(text: str, count: int) -> list[str]:
    """At most ``count`` non-empty pieces, of sizes differing by one at most, whose
    concatenation is ``text``; none for an empty text."""
    count = max(1, min(count, len(text)))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return [piece for piece in pieces if piece]
