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
            day = f"{'we' if wd == 1 else 'w'} {WEEKDAY_ACC_PL[wd]}"
            if days > WEEK_DAYS:
                number = _day_gen_pl(when.day) if spoken else str(when.day)
                day += f" {number} {MONTH_GEN_PL[when.month - 1]}"
            return f"{day} od {t}"
        day = f"on {WEEKDAY_EN[wd]}"
        if days > WEEK_DAYS:
            day += f" {when.day} {MONTH_EN[when.month - 1]}"
        return f"{day} from {t}"


def promise_for(schedule, now: datetime) -> Promise:
    """The callback window the box can honestly promise at ``now``."""
    now = now.astimezone(schedule.tz)
    if schedule.is_open(now):
        closes = schedule.closes_at(now)
        end_of_today = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        # Open past today (round the clock, or into the night): the promise is still "today".
        return Promise(now, until=closes if closes is not None and closes <= end_of_today else end_of_today)
    return Promise(now, from_=schedule.next_opening(now))


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
