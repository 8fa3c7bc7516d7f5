"""Business hours (R13): when a destination is open, and when it opens or closes next.

A :class:`Schedule` is weekly intervals per weekday (several a day), the country's public
holidays (the ``holidays`` package; ``tests/test_hours.py`` checks the Polish dates it gives
against our own computation for several years), one-off closures and openings, and a manual
override (open or closed until a moment, or until lifted). Everything is local time in the
schedule's zone; the caller passes an aware ``datetime`` (from ``services.clock``).

The table form (a flow file's ``[schedules.NAME]``, or settings)::

    timezone = "Europe/Warsaw"
    mon = ["08:00-18:00"]          # tue … sun likewise; a day left out is closed
    fri = ["08:00-12:00", "13:00-16:00"]
    holidays = "PL"                # "" for none
    closed = ["2026-12-31"]        # one-off closures (whole days)
    open = ["2026-12-27 09:00-13:00"]   # one-off openings (replace that day's hours)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import FlowError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LOOK_AHEAD_DAYS = 400  # a box closed longer than this has no "next opening" to promise
_INTERVAL = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, order=True)
class Interval:
    start: time
    end: time  # time(0, 0) as an end means midnight (the end of the day)

    def contains(self, t: time) -> bool:
        return self.start <= t and (t < self.end or self.end == time(0))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{'24:00' if self.end == time(0) else format(self.end, '%H:%M')}"


@dataclass(frozen=True)
class Override:
    """A person's decision: ``open`` or ``closed`` until ``until`` (None: until lifted)."""

    state: str
    until: datetime | None = None

    def active(self, at: datetime) -> bool:
        return self.until is None or at < self.until


@dataclass
class Schedule:
    weekly: dict[int, list[Interval]]
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Warsaw"))
    country: str = "PL"
    closures: set[date] = field(default_factory=set)
    openings: dict[date, list[Interval]] = field(default_factory=dict)
    override: Override | None = None

    def __post_init__(self):
        self._holidays = None
        if self.country:
            import holidays

            try:
                self._holidays = holidays.country_holidays(self.country, language="pl")
            except NotImplementedError as exc:
                raise FlowError(f"holidays: no public holidays known for {self.country!r}") from exc

    # --- building --------------------------------------------------------------------------------
    @classmethod
    def from_table(cls, data: dict, source: str = "schedule") -> Schedule:
        unknown = set(data) - set(DAYS) - {"timezone", "holidays", "closed", "open"}
        if unknown:
            raise FlowError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (days are {', '.join(DAYS)})")
        try:
            tz = ZoneInfo(str(data.get("timezone", "Europe/Warsaw")))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise FlowError(f"{source}.timezone: unknown time zone {data.get('timezone')!r}") from exc
        weekly = {i: _intervals(data.get(name, []), f"{source}.{name}") for i, name in enumerate(DAYS)}
        closures = {_day(d, f"{source}.closed") for d in _list(data.get("closed", []), f"{source}.closed")}
        openings: dict[date, list[Interval]] = {}
        for entry in _list(data.get("open", []), f"{source}.open"):
            day_text, _, hours = str(entry).strip().partition(" ")
            day = _day(day_text, f"{source}.open")
            openings.setdefault(day, []).extend(_intervals([hours], f"{source}.open {day_text}"))
        country = str(data.get("holidays", "PL"))
        return cls(weekly, tz=tz, country=country, closures=closures, openings=openings)

    # --- questions -------------------------------------------------------------------------------
    def holiday(self, day: date) -> str | None:
        """The public holiday's name (Polish) on ``day``, or None."""
        return self._holidays.get(day) if self._holidays is not None else None

    def intervals_on(self, day: date) -> list[Interval]:
        """The hours of one local day, after one-off openings, closures and holidays."""
        if day in self.openings:
            return sorted(self.openings[day])
        if day in self.closures or self.holiday(day):
            return []
        return sorted(self.weekly.get(day.weekday(), []))

    def is_open(self, at: datetime) -> bool:
        at = self._local(at)
        if self.override is not None and self.override.active(at):
            return self.override.state == "open"
        return self._scheduled_open(at)

    def next_change(self, at: datetime) -> datetime | None:
        """The next moment the state (open/closed) changes, the override included."""
        at = self._local(at)
        now_open = self.is_open(at)
        if self.override is not None and self.override.active(at):
            if self.override.until is None:
                return None
            end = self.override.until.astimezone(self.tz)
            if self._scheduled_open(end) != now_open:
                return end
            at = end
        for moment in self._boundaries(at):
            if self._scheduled_open(moment) != now_open:
                return moment
        return None

    def next_opening(self, at: datetime) -> datetime | None:
        """When callers can next reach a person (``at`` itself if open now)."""
        at = self._local(at)
        if self.is_open(at):
            return at
        return self.next_change(at)

    def closes_at(self, at: datetime) -> datetime | None:
        """While open: when it closes (None when closed now or open for good)."""
        at = self._local(at)
        return self.next_change(at) if self.is_open(at) else None

    # --- internals -------------------------------------------------------------------------------
    def _local(self, at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError("business hours need an aware datetime (services.clock.now())")
        return at.astimezone(self.tz)

    def _scheduled_open(self, at: datetime) -> bool:
        at = at.astimezone(self.tz)
        t = at.time().replace(tzinfo=None)
        return any(iv.contains(t) for iv in self.intervals_on(at.date()))

    def _boundaries(self, at: datetime):
        """Every interval start and end after ``at``, in order, for LOOK_AHEAD_DAYS days."""
        day = at.date()
        for offset in range(LOOK_AHEAD_DAYS):
            d = day + timedelta(days=offset)
            moments = set()
            for iv in self.intervals_on(d):
                moments.add(_at(d, iv.start, self.tz))
                moments.add(
                    _at(d + timedelta(days=1), time(0), self.tz) if iv.end == time(0) else _at(d, iv.end, self.tz)
                )
            # Midnight between two days can change the state too (a holiday after an open evening).
            moments.add(_at(d + timedelta(days=1), time(0), self.tz))
            for m in sorted(moments):
                if m > at:
                    yield m


def _at(d: date, t: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(d, t, tzinfo=tz)


def _list(value, where: str) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise FlowError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _intervals(value, where: str) -> list[Interval]:
    out = []
    for text in _list(value, where):
        m = _INTERVAL.match(str(text))
        if not m:
            raise FlowError(f"{where}: {text!r} is not HH:MM-HH:MM")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h2 == 24 and m2 == 0:
            h2 = 0
        if not (0 <= h1 < 24 and 0 <= h2 < 24 and m1 < 60 and m2 < 60):
            raise FlowError(f"{where}: {text!r} is not a time of day")
        start, end = time(h1, m1), time(h2, m2)
        if end != time(0) and end <= start:
            raise FlowError(f"{where}: {text!r} ends before it starts (split a night across two days)")
        out.append(Interval(start, end))
    return out


def _day(text, where: str) -> date:
    try:
        return date.fromisoformat(str(text).strip())
    except ValueError as exc:
        raise FlowError(f"{where}: {text!r} is not a date (YYYY-MM-DD)") from exc


def overridden(schedule: Schedule, row: dict | None) -> Schedule:
    """``schedule`` with a stored override (``store.hours.override``) applied, or as it is."""
    import copy

    from ..clock import parse_stamp

    if row is None and schedule.override is None:
        return schedule
    result = copy.copy(schedule)  # shares the parsed holidays; the flow's own copy stays as it was
    result.override = None
    if row is not None:
        until = datetime.fromtimestamp(parse_stamp(row["until"]), schedule.tz) if row.get("until") else None
        result.override = Override(row["state"], until)
    return result
