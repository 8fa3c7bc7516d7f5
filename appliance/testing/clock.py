"""A clock a test sets: time-dependent rules are checked by moving it, not by sleeping."""

from __future__ import annotations

from datetime import datetime

from ..clock import Clock, parse_stamp


class ManualClock(Clock):
    """Starts at ``start`` (epoch seconds or ISO text) and moves only when told to."""

    def __init__(self, start: float | str | datetime = "2026-12-03T09:00:00+01:00"):
        if isinstance(start, datetime):
            start = start.timestamp()
        elif isinstance(start, str):
            start = parse_stamp(start)
        self._wall = float(start)
        self._mono = 1000.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock only moves forward (set_wall for an NTP correction)")
        self._wall += seconds
        self._mono += seconds

    def set_wall(self, when: float | str) -> None:
        """The wall clock jumps (an NTP correction); durations are not affected."""
        self._wall = parse_stamp(when) if isinstance(when, str) else float(when)


class ShiftedClock(Clock):
    """The wall clock moved to ``start`` when made, running on at the normal pace from there;
    durations are the system's. For a whole box run on a chosen day (``testing.faults --clock-at``)."""

    def __init__(self, start: float | str | datetime | None = None, *, shift: float | None = None):
        import time

        if shift is not None:
            self._shift = float(shift)
            return
        if isinstance(start, datetime):
            start = start.timestamp()
        elif isinstance(start, str):
            start = parse_stamp(start)
        self._shift = float(start) - time.time()

    def time(self) -> float:
        import time

        return time.time() + self._shift
