"""The callback promise in concrete words, computed from the business hours (R12, R13).

"Oddzwonimy dzisiaj do 18:00", "jutro od 9:00", "w poniedziałek od 8:00", "we wtorek 7 stycznia
od 8:00" — and the same spoken, with hours and days as words espeak-ng reads right ("do
osiemnastej", "we wtorek siódmego stycznia od ósmej"). English alongside.

The window promised: while the team is in, until today's closing time; otherwise from the next
opening (within a week the weekday is enough, further off the date is said too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .announce import number_pl

WEEKDAY_ACC_PL = ("poniedziałek", "wtorek", "środę", "czwartek", "piątek", "sobotę", "niedzielę")
WEEKDAY_GEN_PL = ("poniedziałku", "wtorku", "środy", "czwartku", "piątku", "soboty", "niedzieli")
WEEKDAY_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTH_GEN_PL = (
    "stycznia",
    "lutego",
    "marca",
    "kwietnia",
    "maja",
    "czerwca",
    "lipca",
    "sierpnia",
    "września",
    "października",
    "listopada",
    "grudnia",
)
MONTH_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# Ordinal numerals: hours are feminine genitive ("od ósmej"), days of the month masculine
# genitive ("siódmego stycznia").
_HOUR_GEN_PL = (
    "północy",
    "pierwszej",
    "drugiej",
    "trzeciej",
    "czwartej",
    "piątej",
    "szóstej",
    "siódmej",
    "ósmej",
    "dziewiątej",
    "dziesiątej",
    "jedenastej",
    "dwunastej",
    "trzynastej",
    "czternastej",
    "piętnastej",
    "szesnastej",
    "siedemnastej",
    "osiemnastej",
    "dziewiętnastej",
    "dwudziestej",
    "dwudziestej pierwszej",
    "dwudziestej drugiej",
    "dwudziestej trzeciej",
)
_ORD_GEN_PL = (
    "pierwszego",
    "drugiego",
    "trzeciego",
    "czwartego",
    "piątego",
    "szóstego",
    "siódmego",
    "ósmego",
    "dziewiątego",
    "dziesiątego",
    "jedenastego",
    "dwunastego",
    "trzynastego",
    "czternastego",
    "piętnastego",
    "szesnastego",
    "siedemnastego",
    "osiemnastego",
    "dziewiętnastego",
    "dwudziestego",
)
WEEK_DAYS = 6  # up to six days ahead the weekday alone is clear; further, the date is said too


@dataclass(frozen=True)
class Promise:
    """When the callback will come: ``until`` (today, while in) or ``from_`` (the next opening)."""

    now: datetime
    from_: datetime | None = None
    until: datetime | None = None

    def text(self, lang: str = "pl") -> str:
        """For SMS and e-mail: digits ("jutro od 9:00")."""
        return self._say(lang, spoken=False)

    def spoken(self, lang: str = "pl") -> str:
        """For the prompt: words ("jutro od dziewiątej")."""
        return self._say(lang, spoken=True)

    def _say(self, lang: str, spoken: bool) -> str:
        pl = lang != "en"
        if self.until is not None:
            t = _time(self.until, pl, spoken, end=True)
            return f"dzisiaj do {t}" if pl else f"today by {t}"
        when = self.from_
        if when is None:
            return "jak najszybciej" if pl else "as soon as we can"
        t = _time(when, pl, spoken)
        days = (when.date() - self.now.date()).days
        if days <= 0:
            return f"dzisiaj od {t}" if pl else f"today from {t}"
        if days == 1:
            return f"jutro od {t}" if pl else f"tomorrow from {t}"
        wd = when.weekday()
        if pl:
            day = _on_pl(wd)
            if days > WEEK_DAYS:
                number = _day_gen_pl(when.day) if spoken else str(when.day)
                day += f" {number} {MONTH_GEN_PL[when.month - 1]}"
            return f"{day} od {t}"
        day = f"on {WEEKDAY_EN[wd]}"
        if days > WEEK_DAYS:
            day += f" {when.day} {MONTH_EN[when.month - 1]}"
        return f"{day} from {t}"

    def window(self, schedule=None) -> tuple[datetime, datetime | None]:
        """The promised window as moments: from when to when the callback must come. Promised
        from the next opening, it lasts until that opening's closing time (None: open-ended)."""
        if self.until is not None:
            return self.now, self.until
        if self.from_ is None:
            return self.now, None
        closes = schedule.closes_at(self.from_) if schedule is not None else None
        end_of_day = self.from_.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        return self.from_, closes if closes is not None and closes <= end_of_day else end_of_day


def promise_for(schedule, now: datetime) -> Promise:
    """The callback window the box can honestly promise at ``now`` (no schedule: always open)."""
    if schedule is None:
        end_of_today = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        return Promise(now, until=end_of_today)
    now = now.astimezone(schedule.tz)
    if schedule.is_open(now):
        closes = schedule.closes_at(now)
        end_of_today = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        # Open past today (round the clock, or into the night): the promise is still "today".
        return Promise(now, until=closes if closes is not None and closes <= end_of_today else end_of_today)
    return Promise(now, from_=schedule.next_opening(now))


# --- the closed message ----------------------------------------------------------------------------
def week_hours(schedule, lang: str = "pl", *, spoken: bool = False) -> str:
    """The regular week in words: "od poniedziałku do czwartku od 8:00 do 18:00, w piątek od 8:00
    do 12:00 i od 13:00 do 16:00". Consecutive days with the same hours are joined."""
    pl = lang != "en"
    groups: list[list[int]] = []
    for day in range(7):
        if groups and schedule.weekly.get(day, []) == schedule.weekly.get(groups[-1][-1], []):
            groups[-1].append(day)
        else:
            groups.append([day])
    parts = []
    for days in groups:
        intervals = sorted(schedule.weekly.get(days[0], []))
        if not intervals:
            continue
        spans = [_span(iv, pl, spoken) for iv in intervals]
        hours = (" i " if pl else " and ").join(spans)
        if len(days) == 7:
            parts.append(f"codziennie {hours}" if pl else f"every day {hours}")
        elif len(days) == 1:
            d = days[0]
            parts.append(f"{_on_pl(d)} {hours}" if pl else f"on {WEEKDAY_EN[d]} {hours}")
        else:
            first, last = days[0], days[-1]
            if pl and len(days) == 2:
                parts.append(f"{_on_pl(first)} i {_on_pl(last)} {hours}")
            elif pl:
                parts.append(f"od {WEEKDAY_GEN_PL[first]} do {WEEKDAY_GEN_PL[last]} {hours}")
            else:
                parts.append(f"{WEEKDAY_EN[first]} {'and' if len(days) == 2 else 'to'} {WEEKDAY_EN[last]} {hours}")
    return ", ".join(parts)


def _on_pl(day: int) -> str:
    return f"{'we' if day == 1 else 'w'} {WEEKDAY_ACC_PL[day]}"


def _span(iv, pl: bool, spoken: bool) -> str:
    start = datetime(2000, 1, 1, iv.start.hour, iv.start.minute)
    end = datetime(2000, 1, 1, iv.end.hour, iv.end.minute)
    if pl:
        return f"od {_time(start, True, spoken)} do {_time(end, True, spoken, end=True)}"
    return f"{_time(start, False, spoken)} to {_time(end, False, spoken, end=True)}"


def closed_message(schedule, now: datetime, lang: str = "pl", *, spoken: bool = True) -> str:
    """What a caller hears when the schedule is closed: the holiday if it is one, the regular
    hours and the next opening — all from the schedule, so it cannot disagree with it."""
    pl = lang != "en"
    now = now.astimezone(schedule.tz)
    out = []
    holiday = schedule.holiday(now.date())
    if holiday and not schedule.intervals_on(now.date()):
        out.append(f"Dzisiaj jest święto: {holiday}." if pl else f"Today is a public holiday ({holiday}).")
    out.append("Przychodnia jest teraz nieczynna." if pl else "The clinic is closed now.")
    always = all(
        [(iv.start.hour, iv.start.minute, iv.end.hour, iv.end.minute) for iv in schedule.weekly.get(d, [])]
        == [(0, 0, 0, 0)]
        for d in range(7)
    )
    hours = week_hours(schedule, lang, spoken=spoken)
    if hours and not always:
        out.append(f"Pracujemy {hours}." if pl else f"Our hours are {hours}.")
    opening = schedule.next_opening(now)
    if opening is not None:
        when = Promise(now, from_=opening).spoken(lang) if spoken else Promise(now, from_=opening).text(lang)
        out.append(f"Zapraszamy {when}." if pl else f"We open again {when}.")
    return " ".join(out)


def _time(at: datetime, pl: bool, spoken: bool, *, end: bool = False) -> str:
    """A time of day; midnight as an end is 24:00 ("do północy" spoken)."""
    h, m = at.hour, at.minute
    if spoken and pl:
        words = _HOUR_GEN_PL[h]  # (0: "północy")
        if m:
            words += f" {'zero ' if m < 10 else ''}{number_pl(m)}"
        return words
    if (h, m) == (0, 0):
        if spoken:  # (English: Polish spoken returned above)
            return "midnight"
        return "24:00" if end else "0:00"
    return f"{h}:{m:02d}"


def _day_gen_pl(day: int) -> str:
    if day <= 20:
        return _ORD_GEN_PL[day - 1]
    tens, unit = divmod(day, 10)
    head = "dwudziestego" if tens == 2 else "trzydziestego"
    return head if unit == 0 else f"{head} {_ORD_GEN_PL[unit - 1]}"


def time_of_day(at: datetime, lang: str = "pl", *, same_day: bool = True) -> str:
    """A moment as said after "od"/"since": "dziesiątej czterdzieści dwa" today, with the date
    ("trzeciego grudnia, dziesiątej czterdzieści dwa") on another day; English as written."""
    pl = lang == "pl"
    clock = _time(at, pl, True)
    if same_day:
        return clock if pl else f"{at.hour}:{at.minute:02d}"
    if pl:
        return f"{_day_gen_pl(at.day)} {MONTH_GEN_PL[at.month - 1]}, {clock}"
    return f"{at:%d %B}, {at.hour}:{at.minute:02d}"
