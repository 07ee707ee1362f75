"""Sliding windows: the two-window approximation every limit uses (requests and tokens)."""

from __future__ import annotations

from dataclasses import dataclass

# Added to a computed wait so that a client waiting exactly that long is admitted, whatever
# the float rounding of timestamps.
WAIT_MARGIN_SECONDS = 0.001


def overlap(window: int, now: float) -> float:
    """The share of the previous fixed window that still lies within the last ``window``
    seconds."""
    return 1.0 - (now % window) / window


def sliding_rate(previous: float, current: float, window: int, now: float) -> float:
    """The two-window estimate of the count over the last ``window`` seconds."""
    return previous * overlap(window, now) + current


def sliding_window_wait(
    previous: float, current: float, limit: int, window: int, now: float
) -> float | None:
    """The two-window approximation of a sliding window (as Cloudflare's rate limiter).

    The rate seen is the current window's count plus the previous window's count weighted by
    how much of it still overlaps the last ``window`` seconds; a request is admitted while
    that rate is below ``limit``. A burst at a window's edge is therefore not followed by
    another burst at the start of the next window (fixed windows would allow both: double the
    limit within a second), and steady demand gets ``limit`` requests per window. A client
    that spreads its retries over the next window can still reach up to twice the limit in
    the worst rolling minute, the known price of the approximation. Returns None if one more
    request fits, else the seconds until it would, assuming nothing else is admitted.
    """
    remaining = window - now % window
    rate = sliding_rate(previous, current, window, now)
    if rate < limit:
        return None
    if current < limit and previous:
        # It fits later in this window, once enough of the previous one has slid away.
        wait = (rate - limit) * window / previous
        if wait < remaining:
            return wait + WAIT_MARGIN_SECONDS
    # Not in this window: in the next one this window's count becomes the weighted previous.
    slide = (1.0 - limit / current) * window if current >= limit else 0.0
    return remaining + slide + WAIT_MARGIN_SECONDS


@dataclass(slots=True)
class WindowSlot:
    """A sliding window's two counts: the current fixed window and the one before it."""

    index: int
    current: int = 0
    previous: int = 0

    def at(self, index: int) -> WindowSlot:
        """Rolled forward to window ``index``; a gap of a whole window forgets the old counts."""
        if index != self.index:
            self.previous = self.current if index == self.index + 1 else 0
            self.current = 0
            self.index = index
        return self

    def rate(self, window: int, now: float) -> float:
        """The sliding-window estimate of the last ``window`` seconds."""
        return sliding_rate(self.previous, self.current, window, now)
