"""What time it is, for every part that reads time.

Rules that depend on time (queue waits, wrap-up, business hours, callback windows, retries,
retention) read it from a :class:`Clock` handed to them through the services object, so a test
sets the time instead of sleeping (``appliance.testing.clock.ManualClock``). Waiting itself
(``asyncio.sleep``, timeouts) stays on the real clock: a test drives time-dependent *decisions*,
not the event loop.

:func:`stamp` is the one way a moment becomes text: UTC ISO-8601 with milliseconds, which sorts
as text in the database and in reports.
"""

from __future__ import annotations

import time as _time
from datetime import datetime, timezone


def stamp(ts: float | None = None) -> str:
    """Epoch seconds (default: now) as ``2026-12-03T15:59:22.123+00:00``."""
    return datetime.fromtimestamp(_time.time() if ts is None else ts, timezone.utc).isoformat(timespec="milliseconds")


def parse_stamp(text: str) -> float:
    """The inverse of :func:`stamp` (any ISO-8601 text; naive means UTC)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


class Clock:
    """The system's clocks. ``time()`` is wall time (epoch seconds, for what is stored and shown);
    ``monotonic()`` measures durations (never jumps when NTP corrects the wall clock)."""

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    def now(self) -> datetime:
        """Wall time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), timezone.utc)

    def stamp(self) -> str:
        """Now, as the store writes it."""
        return stamp(self.time())


SYSTEM_CLOCK = Clock()
