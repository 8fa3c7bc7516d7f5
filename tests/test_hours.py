"""Business hours, Polish public holidays (checked against our own computation) and the callback
promise in concrete Polish and English words."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from appliance.errors import FlowError
from appliance.flow.hours import Override, Schedule
from appliance.flow.promise import promise_for

WARSAW = ZoneInfo("Europe/Warsaw")
CLINIC = {
    "mon": ["08:00-18:00"],
    "tue": ["08:00-18:00"],
    "wed": ["08:00-18:00"],
    "thu": ["08:00-18:00"],
    "fri": ["08:00-12:00", "13:00-16:00"],
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=WARSAW)


def easter(year: int) -> date:
    """Easter Sunday, Gregorian calendar (the anonymous algorithm: Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    m = (32 + 2 * e + 2 * i - h - k) % 7
    n = (h + m - 7 * ((a + 11 * h + 22 * m) // 451) + 114) // 31
    p = (h + m - 7 * ((a + 11 * h + 22 * m) // 451) + 114) % 31
    return date(year, n, p + 1)


def polish_holidays(year: int) -> set[date]:
    e = easter(year)
    fixed = [(1, 1), (1, 6), (5, 1), (5, 3), (8, 15), (11, 1), (11, 11), (12, 25), (12, 26)]
    days = {date(year, mm, dd) for mm, dd in fixed}
    days |= {e, e + timedelta(days=1), e + timedelta(days=49), e + timedelta(days=60)}  # Pentecost, Corpus Christi
    if year >= 2025:
        days.add(date(year, 12, 24))  # Wigilia, a public holiday since 2025
    return days


def test_our_easter_is_right_on_known_years():
    assert [easter(y) for y in (2024, 2025, 2026, 2027)] == [
        date(2024, 3, 31),
        date(2025, 4, 20),
        date(2026, 4, 5),
        date(2027, 3, 28),
    ]


@pytest.mark.parametrize("year", range(2024, 2032))
def test_the_box_is_closed_on_every_polish_public_holiday_and_only_then(year):
    schedule = Schedule.from_table({**CLINIC, "sat": ["08:00-14:00"], "sun": ["08:00-14:00"]})
    expected = polish_holidays(year)
    closed = {
        date(year, 1, 1) + timedelta(days=i)
        for i in range(366)
        if (date(year, 1, 1) + timedelta(days=i)).year == year
        and not schedule.intervals_on(date(year, 1, 1) + timedelta(days=i))
    }
    assert closed == expected
    assert (date(year, 12, 24) in closed) == (year >= 2025)


def test_easter_monday_of_any_year_is_closed_and_the_next_opening_is_tuesday():
    schedule = Schedule.from_table(CLINIC)
    for year in range(2025, 2031):
        monday = easter(year) + timedelta(days=1)
        now = datetime.combine(monday, datetime.min.time(), tzinfo=WARSAW).replace(hour=10)
        assert not schedule.is_open(now)
        assert schedule.holiday(monday)
        assert schedule.next_opening(now) == now.replace(hour=8) + timedelta(days=1)
        assert promise_for(schedule, now).text() == "jutro od 8:00"


@pytest.mark.parametrize(
    "now, text, spoken, english",
    [
        ("2026-12-02 10:00", "dzisiaj do 18:00", "dzisiaj do osiemnastej", "today by 18:00"),
        ("2026-12-02 07:10", "dzisiaj od 8:00", "dzisiaj od ósmej", "today from 8:00"),
        ("2026-12-02 19:00", "jutro od 8:00", "jutro od ósmej", "tomorrow from 8:00"),
        ("2026-12-04 11:00", "dzisiaj do 12:00", "dzisiaj do dwunastej", "today by 12:00"),
        ("2026-12-04 12:30", "dzisiaj od 13:00", "dzisiaj od trzynastej", "today from 13:00"),
        ("2026-12-04 17:00", "w poniedziałek od 8:00", "w poniedziałek od ósmej", "on Monday from 8:00"),
        ("2026-11-30 19:00", "jutro od 8:00", "jutro od ósmej", "tomorrow from 8:00"),
        # Saturday, with Monday a holiday (Easter Monday 2027): "we wtorek".
        ("2027-03-27 12:00", "we wtorek od 8:00", "we wtorek od ósmej", "on Tuesday from 8:00"),
    ],
)
def test_the_promise_names_the_day_and_hour_in_correct_polish(now, text, spoken, english):
    promise = promise_for(Schedule.from_table(CLINIC), at(now))
    assert (promise.text(), promise.spoken(), promise.text("en")) == (text, spoken, english)


def test_more_than_a_week_away_the_date_is_said_too():
    # The example: closed over New Year 2025, back on Tuesday 7 January.
    schedule = Schedule.from_table({**CLINIC, "closed": ["2024-12-30", "2024-12-31", "2025-01-02", "2025-01-03"]})
    promise = promise_for(schedule, at("2024-12-29 19:00"))
    assert promise.text() == "we wtorek 7 stycznia od 8:00"
    assert promise.spoken() == "we wtorek siódmego stycznia od ósmej"
    assert promise.text("en") == "on Tuesday 7 January from 8:00"


def test_wednesday_and_saturday_take_the_accusative_and_minutes_are_spoken():
    schedule = Schedule.from_table({"wed": ["09:30-12:00"], "sat": ["08:15-10:00"]})
    assert promise_for(schedule, at("2026-11-30 12:00")).text() == "w środę od 9:30"  # Monday → Wednesday
    assert promise_for(schedule, at("2026-11-30 12:00")).spoken() == "w środę od dziewiątej trzydzieści"
    assert promise_for(schedule, at("2026-12-02 13:00")).spoken() == "w sobotę od ósmej piętnaście"


def test_open_until_midnight():
    schedule = Schedule.from_table({"sat": ["20:00-24:00"]})
    promise = promise_for(schedule, at("2026-12-05 21:00"))
    assert (promise.text(), promise.spoken()) == ("dzisiaj do 24:00", "dzisiaj do północy")
    assert schedule.next_change(at("2026-12-05 21:00")) == at("2026-12-06 00:00")


def test_one_off_openings_and_closures():
    schedule = Schedule.from_table({**CLINIC, "open": ["2026-12-06 09:00-13:00"], "closed": ["2026-12-07"]})
    assert schedule.is_open(at("2026-12-06 10:00"))  # a Sunday opened once
    assert not schedule.is_open(at("2026-12-07 10:00"))  # a Monday closed once
    assert schedule.next_opening(at("2026-12-06 14:00")) == at("2026-12-08 08:00")


def test_a_manual_override_holds_until_its_end_or_until_lifted():
    schedule = Schedule.from_table(CLINIC)
    schedule.override = Override("closed", until=at("2026-12-02 12:00"))
    assert not schedule.is_open(at("2026-12-02 10:00"))
    assert schedule.next_change(at("2026-12-02 10:00")) == at("2026-12-02 12:00")
    assert schedule.is_open(at("2026-12-02 12:00"))
    schedule.override = Override("open")  # until lifted
    assert schedule.is_open(at("2026-12-06 03:00")) and schedule.next_change(at("2026-12-06 03:00")) is None


@pytest.mark.parametrize(
    "table, message",
    [
        ({"mon": ["18:00-08:00"]}, "schedule.mon: '18:00-08:00' ends before it starts"),
        ({"mon": ["8-18"]}, "schedule.mon: '8-18' is not HH:MM-HH:MM"),
        ({"mon": ["08:00-25:00"]}, "is not a time of day"),
        ({"monday": ["08:00-18:00"]}, "unknown key(s) monday"),
        ({"closed": ["31.12.2026"]}, "schedule.closed: '31.12.2026' is not a date"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ],
)
def test_a_bad_schedule_is_refused_saying_where(table, message):
    with pytest.raises(FlowError) as exc:
        Schedule.from_table(table)
    assert message in str(exc.value)


def test_times_must_carry_a_zone():
    with pytest.raises(ValueError, match="aware"):
        Schedule.from_table(CLINIC).is_open(datetime(2026, 12, 2, 10, 0))
