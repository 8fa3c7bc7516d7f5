"""Outbound lines: the toll-fraud guard and the choice of line, without any telephony.

The real lines (a SIPp trunk, the emulated modem) are exercised in tests/test_gsm_line.py; here
the dialers are plain coroutines so every rule can be shown quickly: which line is tried first,
what the admin is told when a line goes down, and which numbers are never dialled.
"""

import asyncio
import json

import pytest

from appliance.alarms import list_alarms
from appliance.config import load_settings
from appliance.lines import LineFailed, Lines, NoLineAvailable
from appliance.messages import Msg, msg
from appliance.store.db import open_db
from appliance.tollguard import DestinationRefused, OutboundPolicy, check_destination, parse_destination


@pytest.fixture
def db():
    return open_db(None)


@pytest.fixture
def settings(tmp_path):
    return load_settings(None, env={})


@pytest.mark.parametrize(
    "number, e164",
    [
        ("600123456", "+48600123456"),
        ("+48 600 123 456", "+48600123456"),
        ("0048-22-123-45-67", "+48221234567"),
        ("800123456", "+48800123456"),  # toll free is fine
    ],
)
def test_polish_numbers_are_dialled_in_e164(number, e164):
    assert parse_destination(number, OutboundPolicy())[0] == e164


@pytest.mark.parametrize(
    "number, rule",
    [
        ("701234567", "premium"),  # Polish premium rate
        ("801123456", "premium"),  # shared cost
        ("+4930123456", "country"),  # Germany: not allowed by default
        ("+88216123456", "country"),  # satellite (Iridium): international networks
        ("600123456;ext=1", "characters"),
        ("600123456\r\nATD", "characters"),
        ("sip:600123456@evil", "characters"),
        ("*100#", "characters"),
        ("12345678901234567", "invalid"),
        ("", "characters"),
    ],
)
def test_dangerous_or_odd_destinations_are_refused_with_the_rule(number, rule):
    with pytest.raises(DestinationRefused) as exc:
        parse_destination(number, OutboundPolicy())
    assert exc.value.rule == rule


def test_hourly_caps_count_every_attempt(db, settings):
    settings.sections.setdefault("outbound", {}).update(per_number_per_hour=2, per_hour=3)
    for n in ("600123456", "600123456"):
        db["outbound_calls"].insert(
            {"at": _now_iso(), "number": "+48600123456", "purpose": "test", "line": "gsm", "outcome": "placed"}
        )
    with pytest.raises(DestinationRefused) as exc:
        check_destination(db, "600123456", settings)
    assert exc.value.rule == "number cap"
    assert check_destination(db, "600123457", settings) == "+48600123457"
    db["outbound_calls"].insert(
        {"at": _now_iso(), "number": "+48600123457", "purpose": "test", "line": "gsm", "outcome": "placed"}
    )
    with pytest.raises(DestinationRefused) as exc:
        check_destination(db, "600123458", settings)
    assert exc.value.rule == "hourly cap"


def _now_iso():
    from appliance.store.db import utcnow

    return utcnow()


class FakeLeg:
    sip_call_id = "x"


def test_trunk_down_sends_the_call_over_gsm_and_the_admin_is_told(db, settings):
    lines = Lines(db, settings)
    tried = []

    async def trunk(number):
        tried.append("trunk")
        return FakeLeg()

    async def gsm(number):
        tried.append("gsm")
        return FakeLeg()

    lines.set_dialer("trunk", trunk)
    lines.set_dialer("gsm", gsm)
    lines.update("trunk", "degraded", msg("trunk.registering"))
    lines.update("gsm", "up", msg("modem.registered_on", operator="Plus"))
    lines.update("trunk", "down", msg("trunk.registration_failed", detail="408 Request Timeout"))
    leg, line, e164 = asyncio.run(lines.dial("600 123 456", "test"))
    assert (line, e164, tried) == ("gsm", "+48600123456", ["gsm"])
    alarms = list_alarms(db)
    assert [a["kind"] for a in alarms] == ["line_down"]  # starting up was not news; going down is
    assert alarms[0]["text"] == "Trunk SIP nie działa: rejestracja nie powiodła się: 408 Request Timeout"
    lines.update("trunk", "up", "registered")
    assert [a["kind"] for a in list_alarms(db)] == ["line_down"]  # "working again" once it holds
    row = db.execute("SELECT line, outcome FROM outbound_calls").fetchall()
    assert row == [("gsm", "placed")]


def test_a_fast_failure_on_the_preferred_line_fails_over_per_call(db, settings):
    lines = Lines(db, settings)

    async def trunk(number):
        raise LineFailed(msg("trunk.refused_call", detail="503 Service Unavailable"))

    async def gsm(number):
        return FakeLeg()

    lines.set_dialer("trunk", trunk)
    lines.set_dialer("gsm", gsm)
    lines.update("trunk", "up", "registered")
    lines.update("gsm", "up", "ok")
    _, line, _ = asyncio.run(lines.dial("600123456", "callback"))
    assert line == "gsm"
    assert lines.health["trunk"].state == "degraded"
    rows = db.execute("SELECT line, outcome, detail FROM outbound_calls ORDER BY id").fetchall()
    assert rows[0][:2] == ("trunk", "failed") and "503" in rows[0][2]
    assert rows[1][:2] == ("gsm", "placed")


def test_every_line_failing_says_why_for_each(db, settings):
    lines = Lines(db, settings)

    async def broken(number):
        raise LineFailed("no network")

    lines.set_dialer("trunk", broken)
    lines.set_dialer("gsm", broken)
    lines.update("trunk", "up", "ok")
    lines.update("gsm", "up", "ok")
    with pytest.raises(NoLineAvailable) as exc:
        asyncio.run(lines.dial("600123456", "test"))
    assert "trunk: no network" in str(exc.value) and "gsm: no network" in str(exc.value)


def test_a_refused_number_never_reaches_a_line(db, settings):
    lines = Lines(db, settings)
    called = []

    async def trunk(number):
        called.append(number)
        return FakeLeg()

    lines.set_dialer("trunk", trunk)
    lines.update("trunk", "up", "ok")
    with pytest.raises(DestinationRefused):
        asyncio.run(lines.dial("701234567", "test"))
    assert called == []


def test_an_english_settings_box_keeps_english_alarms(db, settings):
    lines = Lines(db, settings, lang="en")
    lines.update("gsm", "up", msg("modem.registered_on", operator="Plus"))
    lines.update("gsm", "down", msg("modem.reconnecting", reason=msg("modem.port_failed", error="EIO")))
    assert list_alarms(db)[0]["text"] == "The GSM modem is down: the modem's port failed (EIO); reconnecting"


def test_modem_alarms_read_in_polish_and_keep_their_message_id(db, settings):
    lines = Lines(db, settings, lang="pl")
    lines.update("gsm", "up", msg("modem.registered_on", operator="Plus"))
    lines.update("gsm", "down", msg("modem.reconnecting", reason=msg("modem.port_failed", error="EIO")))
    row = list_alarms(db)[0]
    assert row["text"] == "Modem GSM nie działa: port modemu przestał działać (EIO); ponowne łączenie"
    # The same alarm in the admin's language, from what was stored (the web UI's way).
    assert Msg.from_json(json.loads(row["message"])).text("en") == (
        "The GSM modem is down: the modem's port failed (EIO); reconnecting"
    )
    assert lines.snapshot()["gsm"]["reason"] == "the modem's port failed (EIO); reconnecting"  # (status: English)


def test_an_alarm_cannot_be_a_plain_sentence(db):
    from appliance.alarms import raise_alarm

    with pytest.raises(TypeError, match="Msg"):
        raise_alarm(db, "line_down", "gsm", "The GSM modem is down")
    assert list_alarms(db) == []


def test_a_flapping_line_raises_one_alarm_and_says_when_it_is_stable_again(db):
    from appliance.testing.clock import ManualClock

    clock = ManualClock("2026-12-03T10:00:00+01:00")
    settings = load_settings(None, env={}, alarms={"stable_after_s": 300})
    lines = Lines(db, settings, clock=clock)
    lines.update("trunk", "degraded", msg("trunk.registering"))
    lines.update("trunk", "up", "registered")
    for i in range(4):  # the provider drops the registration every minute or so
        clock.advance(40)
        if i:
            lines.update("trunk", "degraded", msg("trunk.registering"))  # (some drops pass "degraded")
        lines.update("trunk", "down", msg("trunk.registration_failed", detail="408 Request Timeout"))
        clock.advance(20)
        lines.update("trunk", "up", "registered")
        lines.poll()
    assert [a["kind"] for a in list_alarms(db)] == ["line_down"]  # one, not one per change
    clock.advance(299)
    lines.poll()
    assert len(list_alarms(db)) == 1  # not yet stable
    clock.advance(1)
    lines.poll()
    newest = list_alarms(db)[0]
    assert newest["kind"] == "line_up" and newest["severity"] == "info"
    assert newest["text"] == "Trunk SIP działa stabilnie od 10:04 (wcześniej przerwy: 3)"
    # Stable again: the next failure is news again.
    lines.update("trunk", "down", msg("trunk.registration_failed", detail="503"))
    assert [a["kind"] for a in list_alarms(db)][:2] == ["line_down", "line_up"]


def test_when_every_line_goes_down_the_alarm_is_raised_even_while_one_is_already_out(db):
    settings = load_settings(None, env={})
    lines = Lines(db, settings)
    lines.update("gsm", "up", "registered")
    lines.update("trunk", "up", "registered")
    lines.update("trunk", "down", "408")
    lines.update("gsm", "down", "no coverage")
    lines.update("trunk", "up", "registered")
    lines.update("trunk", "down", "408")  # flapping, but now nothing works: critical
    severities = [a["severity"] for a in reversed(list_alarms(db))]
    assert severities == ["warning", "critical", "critical"]
