"""The SMS outbox, SMS text planning and incoming SMS joining (R12 SMS part, R19, R22).

The outbox under test is real (SQLite files, real transactions); only the modem is a test
double — ``RecordingModem`` speaks the sender protocol and records every hand-over, which is
what a patient would receive. The last test drives the unmodified python-gsmmodem-new against
the pty modem emulator and checks the PDUs that leave.
"""

import itertools
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gsmmodem.pdu import encodeSmsSubmitPdu

from appliance.cli import main
from appliance.gsm.outbox import (
    Outbox,
    SmsPolicy,
    SmsRefused,
    SmsSendError,
    cancel,
    check_number,
    delivery_from_tp_status,
    flush_incomplete,
    get_sms,
    list_outbox,
    queue_sms,
    record_status_report,
    resend,
    store_incoming,
)
from appliance.gsm.smstext import TemplateError, prepare, render_template
from appliance.gsm.sender import ModemSender
from appliance.store.db import open_db

PATIENT = "+48600123456"
T0 = 1_800_000_000.0  # a fixed epoch for the injected clock
REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


class RecordingModem:
    """A modem double: records what it was asked to send, returns one MR per part like +CMGS."""

    def __init__(self, fail=()):
        self.sent = []  # (number, text, ucs2)
        self.fail = list(fail)  # exceptions to raise on the next calls, in order (None: succeed)
        self.mr = 0

    def send(self, number, text, *, ucs2):
        if self.fail:
            exc = self.fail.pop(0)
            if exc is not None:
                raise exc
        self.sent.append((number, text, ucs2))
        mrs = []
        for _ in prepare(text).parts:
            mrs.append(self.mr)
            self.mr = (self.mr + 1) % 256
        return mrs


@pytest.fixture
def db(tmp_path):
    return open_db(tmp_path / "centralka.db")


def policy(**kw):
    return SmsPolicy.from_settings(None, **kw)


# --- text: encoding, parts, transliteration, emoji, templates -------------------------------------
def test_polish_letters_force_ucs2_with_parts_of_at_most_67():
    plan = prepare("Zażółć gęślą jaźń")
    assert (plan.encoding, plan.part_count, plan.units) == ("ucs2", 1, 17)
    assert "ż" in plan.ucs2_chars and "UCS-2" in plan.describe()

    assert prepare("ą" * 70).part_count == 1
    long = prepare(("Zażółć gęślą jaźń. " * 8)[:150])
    assert long.ucs2 and [len(p) for p in long.parts] == [67, 67, 16]
    assert "".join(long.parts) == long.text


def test_gsm7_fits_160_then_153_per_part_and_escapes_cost_two():
    assert prepare("a" * 160).parts == ("a" * 160,)
    assert [len(p) for p in prepare("a" * 161).parts] == [153, 8]
    euro = prepare("a" * 79 + "€")  # 81 septets
    assert (euro.encoding, euro.units, euro.part_count) == ("gsm7", 81, 1)
    # An escape pair is never split: 152 septets + "€" would be 154 > 153.
    assert [len(p) for p in prepare("x" * 152 + "€" + "y" * 10).parts] == [152, 11]


def test_transliteration_turns_polish_into_gsm7_that_fits_160():
    assert prepare("Zażółć gęślą jaźń", transliterate=True).text == "Zazolc gesla jazn"
    text = (
        "Prosimy o kontakt z rejestracją w sprawie wizyty w poradni. Dziękujemy, "
        "„Przychodnia Zdrowie” – tel. 22 123 45 67… Żółty budynek, wejście od ul. Łąkowej."
    )
    assert 70 < len(text) <= 160
    assert prepare(text).part_count == 3
    plan = prepare(text, transliterate=True)
    assert (plan.encoding, plan.part_count, plan.transliterated) == ("gsm7", 1, True)
    assert "Zolty budynek, wejscie od ul. Lakowej" in plan.text and '"Przychodnia Zdrowie" - ' in plan.text
    # Letters GSM-7 has are kept; other scripts stay UCS-2.
    assert prepare("Café Müller", transliterate=True).text == "Café Müller"
    assert prepare("Добрий день", transliterate=True).encoding == "ucs2"


def test_emoji_are_dropped_instead_of_crashing_the_library():
    raw = "Do zobaczenia 🙂 jutro 👍🏻!"
    with pytest.raises(ValueError):  # the library's defect this protects against
        encodeSmsSubmitPdu(PATIENT, raw)
    plan = prepare(raw)
    assert plan.text == "Do zobaczenia jutro!"
    assert len(plan.removed) == 3 and plan.encoding == "gsm7"
    encodeSmsSubmitPdu(PATIENT, plan.text)
    # The library also trips on "ÿ" (TypeError) and shows "`" as "§": both replaced.
    assert prepare("ÿ`").text == "y'"
    assert prepare("a\r\nb\x00\tc").text == "a\nb c"
    assert prepare("🙂 Dzień dobry 🙂, do\u200bjutra ❤️\n🙂 Anna").text == "Dzień dobry, dojutra ❤\nAnna"


@pytest.mark.parametrize(
    "text",
    [
        "Zażółć gęślą jaźń",
        "a" * 160,
        "a" * 161,
        "[]{}€" * 40,
        "x" * 152 + "€" + "y" * 10,
        ("Zażółć gęślą jaźń. " * 8)[:150],
        "ą" * 70,
        "ą" * 71,
        "Plan: 9:00–10:00 … " * 9,
        "Café €5 " * 30,
    ],
)
def test_plan_agrees_with_the_pdus_the_library_builds(text):
    from appliance.testing.modem import decode_submit_pdu  # an independent 23.040 decoder

    for transliterate in (False, True):
        plan = prepare(text, transliterate=transliterate)
        pdus = [decode_submit_pdu(str(p)) for p in encodeSmsSubmitPdu(PATIENT, plan.text, reference=7)]
        assert [p["text"] for p in pdus] == list(plan.parts)
        assert {p["encoding"] for p in pdus} == {plan.encoding}
        if plan.ucs2:
            assert all(len(p["text"]) <= (67 if len(pdus) > 1 else 70) for p in pdus)


def test_templates_fill_placeholders_and_refuse_bad_values():
    tpl = "Dzień dobry {name}, wizyta {day} o {hour}. Odpowiedz {{TAK}}."
    assert (
        render_template(tpl, name="Anna", day="jutro", hour="10:30", extra="ignored")
        == "Dzień dobry Anna, wizyta jutro o 10:30. Odpowiedz {TAK}."
    )
    with pytest.raises(TemplateError, match=r"placeholder \{hour\} has no value"):
        render_template(tpl, name="Anna", day="jutro")
    with pytest.raises(TemplateError, match=r"\{name\} contains a control character"):
        render_template(tpl, name="Anna\nKliknij http://x", day="d", hour="h")
    with pytest.raises(TemplateError, match="not allowed"):
        render_template("{name.__class__}", name="x")
    with pytest.raises(TemplateError, match="format"):
        render_template("{n:>10}", n="x")
    with pytest.raises(TemplateError, match=r"\{name\} must be text or a number"):
        render_template("{name}", name=object())
    assert render_template("{n} osoby", n=3) == "3 osoby"


# --- validation and caps --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "number,rule",
    [
        ("anonymous", "withheld"),
        ("", "withheld"),
        ("555", "internal"),
        ("abc", "invalid number"),
        ("+48 12 345", "invalid number"),
        ("221234567", "mobile only"),
        ("+447911123456", "country"),
        ("+48801123456", "number type"),
        ("+48700123456", "number type"),
    ],
)
def test_refusals_name_the_rule(db, number, rule):
    with pytest.raises(SmsRefused) as info:
        queue_sms(db, number, "Test", now=T0)
    assert info.value.rule == rule
    assert str(info.value).startswith(f"SMS refused ({rule}): ")
    assert db["sms_outbox"].count == 0


def test_national_and_formatted_mobiles_become_e164():
    assert check_number("600 123 456") == PATIENT
    assert check_number("0048-600-123-456") == PATIENT
    assert check_number("221234567", policy(mobile_only=False)) == "+48221234567"


def test_per_number_and_daily_caps_over_a_rolling_day(db):
    for _ in range(5):
        queue_sms(db, "600123456", "Przypomnienie", now=T0)
    with pytest.raises(SmsRefused, match=r"per-number cap.*\+48600123456 already has 5 SMS.*per_number_per_day = 5"):
        queue_sms(db, "600123456", "Jeszcze jedno", now=T0 + 60)
    queue_sms(db, "600123457", "Inny pacjent", now=T0 + 60)  # another number is fine
    queue_sms(db, "600123456", "Następny dzień", now=T0 + 86400 + 1)  # the window rolls

    # In the last 24 h of T0 + 1 day: "Inny pacjent" and "Następny dzień".
    tight = {"per_day": 3}
    queue_sms(db, "600000001", "x", settings=tight, now=T0 + 86400 + 2)
    with pytest.raises(SmsRefused, match=r"daily cap\): 3 SMS were queued in the last 24 hours \(sms.per_day = 3\)"):
        queue_sms(db, "600000002", "x", settings=tight, now=T0 + 86400 + 3)
    assert db["sms_outbox"].count == 8
    cancel(db, 6, now=T0 + 86400 + 4)  # "Inny pacjent": cancelled messages do not count
    queue_sms(db, "600000002", "x", settings=tight, now=T0 + 86400 + 5)


def test_empty_and_too_long_texts_are_refused(db):
    with pytest.raises(SmsRefused, match="empty"):
        queue_sms(db, PATIENT, " 🙂 ", now=T0)
    with pytest.raises(SmsRefused, match=r"too long.*7 parts.*sms.max_parts"):
        queue_sms(db, PATIENT, "ą" * (67 * 6 + 1), now=T0)


def test_dedupe_key_makes_queueing_idempotent(db):
    a = queue_sms(db, PATIENT, "Oddzwonimy dziś do 18:00.", kind="callback", dedupe_key="callback:7", now=T0)
    b = queue_sms(db, PATIENT, "Oddzwonimy dziś do 18:00.", kind="callback", dedupe_key="callback:7", now=T0 + 5)
    assert a == b and db["sms_outbox"].count == 1


# --- sending --------------------------------------------------------------------------------------
def test_each_queued_message_is_sent_once_with_parts_and_mrs(db):
    clock, modem = Clock(), RecordingModem()
    ids = [
        queue_sms(db, PATIENT, "Wizyta jutro o 10:30.", now=T0),
        queue_sms(db, "600123457", ("Zażółć gęślą jaźń. " * 8)[:150], now=T0),
        queue_sms(db, "600123458", "Plain GSM text", now=T0),
    ]
    outbox = Outbox(db, modem, clock=clock)
    assert outbox.send_due() == 3
    assert outbox.send_due() == 0
    assert [m[0] for m in modem.sent] == [PATIENT, "+48600123457", "+48600123458"]
    assert [m[2] for m in modem.sent] == [False, True, False]  # Polish letters -> UCS-2

    long = get_sms(db, ids[1])
    assert (long["state"], long["parts"], long["attempts"]) == ("sent", 3, 1)
    assert [(p["seq"], p["mr"]) for p in long["part_rows"]] == [(1, 1), (2, 2), (3, 3)]
    assert [a["outcome"] for a in long["attempt_rows"]] == ["sent"]
    assert outbox.next_due_in() is None


def test_transient_error_retries_later_with_backoff(db):
    clock = Clock()
    modem = RecordingModem(fail=[SmsSendError("+CMS ERROR: 38 network out of order", transient=True)])
    first = queue_sms(db, PATIENT, "Pierwsza", now=T0)
    second = queue_sms(db, "600123457", "Druga", now=T0)
    outbox = Outbox(db, modem, settings={"retry_min_s": 20, "retry_max_s": 600}, clock=clock, rng=random.Random(1))

    assert outbox.send_due() == 0  # the transient error ends the round: "Druga" keeps its attempts
    row = get_sms(db, first)
    assert row["state"] == "queued" and "network out of order" in row["error"]
    wait = datetime_epoch(row["next_at"]) - T0
    assert 10 <= wait <= 20  # equal jitter: between half and all of retry_min_s
    assert outbox.next_due_in() == 0  # "Druga" is due now
    assert get_sms(db, second)["attempts"] == 0

    clock.advance(wait - 1)
    assert outbox.send_due() == 1 and modem.sent == [("+48600123457", "Druga", False)]
    clock.advance(1)
    assert outbox.send_due() == 1
    assert get_sms(db, first)["state"] == "sent" and get_sms(db, first)["attempts"] == 2
    assert [m[1] for m in modem.sent].count("Pierwsza") == 1


def test_backoff_grows_exponentially_up_to_the_cap(db):
    outbox = Outbox(
        db, RecordingModem(), settings={"retry_min_s": 10, "retry_max_s": 100}, clock=Clock(), rng=random.Random(3)
    )
    for attempt, base in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)]:
        assert base / 2 <= outbox.backoff(attempt) <= base


def test_transient_errors_give_up_after_max_attempts(db):
    clock = Clock()
    modem = RecordingModem(fail=[SmsSendError("no network", transient=True)] * 3)
    sms = queue_sms(db, PATIENT, "Test", now=T0)
    outbox = Outbox(db, modem, settings={"max_attempts": 3, "retry_min_s": 1, "retry_max_s": 1}, clock=clock)
    for _ in range(5):
        outbox.send_due()
        clock.advance(2)
    row = get_sms(db, sms)
    assert row["state"] == "failed" and row["attempts"] == 3
    assert "gave up after 3 attempt(s)" in row["error"] and "no network" in row["error"]
    assert modem.sent == []


def test_permanent_error_fails_that_message_only(db):
    modem = RecordingModem(fail=[SmsSendError("+CMS ERROR: 21 short message transfer rejected", transient=False)])
    bad = queue_sms(db, PATIENT, "Pierwsza", now=T0)
    good = queue_sms(db, "600123457", "Druga", now=T0)
    assert Outbox(db, modem, clock=Clock()).send_due() == 1
    row = get_sms(db, bad)
    assert row["state"] == "failed" and "CMS ERROR: 21" in row["error"] and row["attempts"] == 1
    assert get_sms(db, good)["state"] == "sent"


def test_stale_messages_expire_instead_of_going_out_late(db):
    sms = queue_sms(db, PATIENT, "Oddzwonimy dziś do 18:00.", settings={"max_age_s": 3600}, now=T0)
    modem = RecordingModem()
    assert Outbox(db, modem, clock=Clock(T0 + 3601)).send_due() == 0
    assert get_sms(db, sms)["state"] == "expired" and modem.sent == []


# --- never twice: crashes and unknown outcomes ----------------------------------------------------
class CrashAfterSending(RecordingModem):
    """The modem took the PDU, then the core died before the outbox recorded it."""

    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def send(self, number, text, *, ucs2):
        super().send(number, text, ucs2=ucs2)
        raise self.exc


@pytest.mark.parametrize("exc", [SystemExit(1), KeyboardInterrupt()])
def test_crash_between_sent_and_recorded_never_sends_twice(tmp_path, exc):
    path = tmp_path / "centralka.db"
    db = open_db(path)
    crashed = queue_sms(db, PATIENT, "Potwierdzamy: oddzwonimy dziś.", now=T0)
    waiting = queue_sms(db, "600123457", "Druga wiadomość", now=T0)
    modem = CrashAfterSending(exc)
    with pytest.raises(type(exc)):
        Outbox(db, modem, clock=Clock()).send_due()
    assert len(modem.sent) == 1
    db.conn.close()

    # The restarted core: a new connection, a new Outbox, the same modem (which remembers all).
    db = open_db(path)
    assert get_sms(db, crashed)["state"] == "sending"
    alarms = []
    modem.__class__ = RecordingModem  # the restarted modem works
    outbox = Outbox(db, modem, clock=Clock(T0 + 30), on_alarm=lambda i, t: alarms.append(i))
    assert outbox.recovered == [crashed] and alarms == [crashed]
    row = get_sms(db, crashed)
    assert row["state"] == "uncertain" and "never twice" in row["error"]
    assert [a["outcome"] for a in row["attempt_rows"]] == ["interrupted"]

    assert outbox.send_due() == 1
    assert outbox.send_due() == 0
    texts = [m[1] for m in modem.sent]
    assert texts.count("Potwierdzamy: oddzwonimy dziś.") == 1  # not sent twice
    assert texts.count("Druga wiadomość") == 1
    assert get_sms(db, waiting)["state"] == "sent"

    # A person decides to send it again: exactly one more hand-over, recorded as such.
    resend(db, crashed, reason="receptionist checked: patient has no SMS", now=T0 + 60)
    outbox.clock.t = T0 + 61
    assert outbox.send_due() == 1
    assert [m[1] for m in modem.sent].count("Potwierdzamy: oddzwonimy dziś.") == 2
    assert [a["outcome"] for a in get_sms(db, crashed)["attempt_rows"]] == ["interrupted", "resend", "sent"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from appliance.store.db import open_db
    from appliance.gsm.outbox import Outbox, queue_sms
    db_path, modem_log = sys.argv[1], sys.argv[2]
    db = open_db(db_path)
    for i in range(3):
        queue_sms(db, "60012345%d" % i, "Wiadomość %d" % i)

    class ModemThatGetsKilled:
        def send(self, number, text, *, ucs2):
            with open(modem_log, "a", encoding="utf-8") as f:   # what the network received
                f.write(text + "\\n")
                f.flush()
                os.fsync(f.fileno())
            if text == "Wiadomość 1":
                os.kill(os.getpid(), signal.SIGKILL)           # kill -9 before +CMGS is recorded
            return [len(text)]

    Outbox(db, ModemThatGetsKilled()).send_due()
""")


def test_kill_9_while_sending_then_restart_sends_each_message_at_most_once(tmp_path):
    path, log = tmp_path / "centralka.db", tmp_path / "network.txt"
    script = tmp_path / "core.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(log)], cwd=REPO, capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == -9, proc.stderr
    assert log.read_text().splitlines() == ["Wiadomość 0", "Wiadomość 1"]

    db = open_db(path)
    states = {r["text"]: r["state"] for r in list_outbox(db)}
    assert states == {"Wiadomość 0": "sent", "Wiadomość 1": "sending", "Wiadomość 2": "queued"}

    class Network:
        def send(self, number, text, *, ucs2):
            with open(log, "a", encoding="utf-8") as f:
                f.write(text + "\n")
            return [len(text)]

    outbox = Outbox(db, Network())
    assert outbox.send_due() == 1
    received = log.read_text().splitlines()
    assert sorted(received) == ["Wiadomość 0", "Wiadomość 1", "Wiadomość 2"]  # each exactly once
    states = {r["text"]: r["state"] for r in list_outbox(db)}
    assert states == {"Wiadomość 0": "sent", "Wiadomość 1": "uncertain", "Wiadomość 2": "sent"}


def test_timeout_after_the_pdu_left_is_uncertain_not_retried(db):
    modem = RecordingModem(fail=[SmsSendError("no +CMGS after Ctrl-Z", transient=True, maybe_sent=True)])
    sms = queue_sms(db, PATIENT, "Test", now=T0)
    alarms = []
    outbox = Outbox(db, modem, clock=Clock(), on_alarm=lambda i, t: alarms.append((i, t)))
    assert outbox.send_due() == 0
    assert get_sms(db, sms)["state"] == "uncertain" and alarms and alarms[0][0] == sms
    outbox.clock.advance(10_000)
    assert outbox.send_due() == 0 and modem.sent == []
    cancel(db, sms, now=T0 + 10_000)
    assert get_sms(db, sms)["state"] == "cancelled"


def test_partly_sent_multipart_stays_uncertain_and_a_resend_supersedes_it(db):
    modem = RecordingModem(fail=[SmsSendError("+CMS ERROR: 500 on part 2", transient=True, sent_mrs=[17])])
    sms = queue_sms(db, PATIENT, "ą" * 100, now=T0)  # two parts
    outbox = Outbox(db, modem, clock=Clock())
    assert outbox.send_due() == 0
    row = get_sms(db, sms)
    assert row["state"] == "uncertain" and row["error"].startswith("1 of 2 part(s) went out; maybe sent")
    assert [(p["seq"], p["mr"]) for p in row["part_rows"]] == [(1, 17)]
    # Part 1 reached the phone; that does not say part 2 did: still uncertain.
    assert record_status_report(db, 17, True, number=PATIENT, now=T0 + 5) == sms
    assert get_sms(db, sms)["state"] == "uncertain"

    resend(db, sms, now=T0 + 10)
    outbox.clock.t = T0 + 10
    assert outbox.send_due() == 1
    for mr in (0, 1):
        record_status_report(db, mr, True, number=PATIENT, now=T0 + 20)
    row = get_sms(db, sms)
    assert row["state"] == "delivered"
    assert [p["status"] for p in row["part_rows"]] == ["superseded", "delivered", "delivered"]
    assert record_status_report(db, 17, False, number=PATIENT, now=T0 + 30) is None  # late, old attempt
    assert get_sms(db, sms)["state"] == "delivered"


def test_unexpected_sender_exception_is_treated_as_maybe_sent(db):
    sms = queue_sms(db, PATIENT, "Test", now=T0)
    outbox = Outbox(db, RecordingModem(fail=[OSError(5, "Input/output error")]), clock=Clock())
    assert outbox.send_due() == 0
    assert get_sms(db, sms)["state"] == "uncertain"


def test_a_delivery_report_resolves_an_uncertain_message(tmp_path):
    path = tmp_path / "centralka.db"
    db = open_db(path)
    sms = queue_sms(db, PATIENT, "Potwierdzenie", now=T0)
    other = queue_sms(db, "600123457", "Inny", now=T0)
    modem = RecordingModem()
    Outbox(db, modem, clock=Clock()).send_due(limit=1)  # "Potwierdzenie" is sent with MR 0 ...
    db.execute("UPDATE sms_outbox SET state = 'queued' WHERE id = ?", [other])
    # ... now simulate a crash on the second one: left in 'sending' with an open attempt.
    db.execute("UPDATE sms_outbox SET state = 'sending', attempts = 1 WHERE id = ?", [other])
    db["sms_attempts"].insert({"sms_id": other, "started_at": "2027-01-15T08:00:00.000+00:00"})
    # The report for the lost message was stored by the modem while the core was down.
    record_status_report(db, 42, True, number="+48600123457", now=T0 + 5)
    outbox = Outbox(db, modem, clock=Clock(T0 + 10), on_alarm=lambda *a: pytest.fail("no alarm expected"))
    assert outbox.recovered == []
    row = get_sms(db, other)
    assert row["state"] == "delivered" and "resolved" in row["error"]
    assert [p["mr"] for p in row["part_rows"]] == [42]
    assert get_sms(db, sms)["state"] == "sent"  # MR 42 did not land on the other number's SMS

    # And a report arriving after the restart resolves one that is still uncertain.
    third = queue_sms(db, "600123458", "Trzecia", now=T0)
    db.execute("UPDATE sms_outbox SET state = 'sending' WHERE id = ?", [third])
    db["sms_attempts"].insert({"sms_id": third, "started_at": "2027-01-15T08:00:00.000+00:00"})
    assert Outbox(db, modem, clock=Clock(T0 + 20)).recovered == [third]
    assert record_status_report(db, 7, False, number="600123458", now=T0 + 30) == third
    assert get_sms(db, third)["state"] == "undelivered"


# --- delivery reports -----------------------------------------------------------------------------
def test_delivery_reports_update_parts_and_the_message(db):
    modem = RecordingModem()
    two = queue_sms(db, PATIENT, "ą" * 100, now=T0)  # 2 UCS-2 parts: MR 0 and 1
    one = queue_sms(db, "600123457", "Krótka", now=T0)  # MR 2
    Outbox(db, modem, clock=Clock()).send_due()

    assert record_status_report(db, 0, True, "2027-01-15T08:00:05+00:00", number=PATIENT, now=T0 + 5) == two
    assert get_sms(db, two)["state"] == "sent"  # one part of two
    assert record_status_report(db, 1, None, number=PATIENT, now=T0 + 6) == two  # SMSC still trying
    assert get_sms(db, two)["state"] == "sent"
    record_status_report(db, 1, True, number=PATIENT, now=T0 + 7)
    row = get_sms(db, two)
    assert row["state"] == "delivered" and [p["status"] for p in row["part_rows"]] == ["delivered"] * 2
    record_status_report(db, 1, True, number=PATIENT, now=T0 + 8)  # a repeated report changes nothing
    assert get_sms(db, two)["state"] == "delivered"

    assert record_status_report(db, 2, True, number="+48999999999", now=T0 + 9) is None  # other number
    assert record_status_report(db, 2, delivery_from_tp_status(0x46), number="600123457", now=T0 + 10) == one
    assert get_sms(db, one)["state"] == "undelivered"
    assert db["sms_reports"].count == 6
    assert delivery_from_tp_status(0x00) is True and delivery_from_tp_status(0x21) is None


def test_a_wrapped_mr_goes_to_the_newest_message(db):
    modem = RecordingModem()
    old = queue_sms(db, PATIENT, "Stara", now=T0)
    Outbox(db, modem, clock=Clock()).send_due()
    record_status_report(db, 0, True, number=PATIENT, now=T0 + 1)
    modem.mr = 0  # the modem's 8-bit counter came round again
    new = queue_sms(db, PATIENT, "Nowa", now=T0 + 100)
    Outbox(db, modem, clock=Clock(T0 + 100)).send_due()
    assert record_status_report(db, 0, False, number=PATIENT, now=T0 + 101) == new
    assert get_sms(db, old)["state"] == "delivered" and get_sms(db, new)["state"] == "undelivered"


def test_a_report_that_overtakes_the_sent_record_still_counts(db):
    class FastNetwork(RecordingModem):
        def send(self, number, text, *, ucs2):
            mrs = super().send(number, text, ucs2=ucs2)
            # The modem's report callback runs (another thread, another connection) before
            # send() has returned and the outbox recorded the MR.
            record_status_report(open_db(db_path), mrs[0], True, number=number, now=T0 + 1)
            return mrs

    db_path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    sms = queue_sms(db, PATIENT, "Szybka", now=T0)
    Outbox(db, FastNetwork(), clock=Clock()).send_due()
    assert get_sms(db, sms)["state"] == "delivered"


# --- incoming -------------------------------------------------------------------------------------
PARTS = ["Dzień dobry, proszę o przełożenie ", "wizyty z czwartku na piątek, ", "Jan Kowalski"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_incoming_multipart_is_joined_in_any_order(db, order):
    results = [
        store_incoming(
            db,
            "+48600123456",
            PARTS[i],
            (77, 3, i + 1),
            sent_at=f"2027-01-15T08:00:0{i}+00:00",
            received_at=f"2027-01-15T08:00:1{n}+00:00",
        )
        for n, i in enumerate(order)
    ]
    assert [r.status for r in results] == ["waiting", "waiting", "complete"]
    [msg] = db["sms_incoming"].rows
    assert (msg["text"], msg["parts"], msg["complete"], msg["number"]) == ("".join(PARTS), 3, 1, PATIENT)


def test_incoming_duplicates_are_ignored_and_refs_may_be_reused(db):
    def part(i, *, day="15", ref=77, text=None):
        return store_incoming(
            db,
            "600123456",
            text or PARTS[i],
            {"ref": ref, "total": 3, "seq": i + 1},
            sent_at=f"2027-01-{day}T08:00:0{i}+00:00",
            received_at=f"2027-01-{day}T09:00:0{i}+00:00",
        )

    assert part(0).status == "waiting"
    assert part(0).status == "duplicate"  # the modem delivered a stored part again
    part(1)
    done = part(2)
    assert done.status == "complete"
    assert part(2) == ("duplicate", done.message_id)  # again after completion
    # Single-part: the same SMSC timestamp means the same SMS; a later one is a new message.
    first = store_incoming(db, "600123457", "Tak", sent_at="2027-01-15T10:00:00+00:00")
    assert store_incoming(db, "600123457", "Tak", sent_at="2027-01-15T10:00:00+00:00").status == "duplicate"
    assert store_incoming(db, "600123457", "Tak", sent_at="2027-01-15T10:05:00+00:00").status == "complete"
    assert first.status == "complete"
    # The phone reuses concatenation reference 77 for a new message the next day.
    for i in range(3):
        last = part(i, day="16", text=PARTS[i].upper())
    assert last.status == "complete"
    assert db["sms_incoming"].count == 4
    assert (
        db.execute("SELECT text FROM sms_incoming WHERE id = ?", [last.message_id]).fetchone()[0]
        == "".join(PARTS).upper()
    )


def test_incomplete_multipart_is_kept_not_lost(db):
    store_incoming(db, PATIENT, PARTS[0], (9, 3, 1), received_at="2027-01-15T08:00:00+00:00")
    store_incoming(db, PATIENT, PARTS[2], (9, 3, 3), received_at="2027-01-15T08:00:01+00:00")
    assert flush_incomplete(db, 3600, now=T0 - 10**9) == []  # not yet old enough
    [msg_id] = flush_incomplete(db, 3600, now=datetime_epoch("2027-01-15T09:00:02+00:00"))
    row = db["sms_incoming"].get(msg_id)
    assert row["text"] == PARTS[0] + "[…]" + PARTS[2] and row["complete"] == 0


def datetime_epoch(text):
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


# --- the command line -----------------------------------------------------------------------------
@pytest.fixture
def box_config(tmp_path, monkeypatch):
    monkeypatch.delenv("CENTRALKA_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(f'[box]\ndata_dir = "{tmp_path / "data"}"\n[control]\nsocket = "{tmp_path / "core.sock"}"\n')
    return cfg


def test_cli_sms_send_and_list(box_config, tmp_path, capsys):
    assert main(["--config", str(box_config), "sms", "send", "600123456", "Dzień dobry"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sms #1 queued to +48600123456: 1 part, UCS-2 (11 characters")
    db = open_db(tmp_path / "data" / "centralka.db")
    [row] = db["sms_outbox"].rows
    assert (row["number"], row["text"], row["state"], row["kind"]) == (PATIENT, "Dzień dobry", "queued", "manual")

    assert main(["--config", str(box_config), "sms", "send", "12ab", "Dzień dobry"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "centralka: SMS refused (invalid number): '12ab' is not a valid phone number"
    ]
    assert db["sms_outbox"].count == 1

    assert main(["--config", str(box_config), "sms", "list", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "#1 " in out and "+48600123456" in out and "queued" in out and "UCS-2" in out


def test_cli_transliterates_when_the_admin_says_so(box_config, capsys):
    box_config.write_text(box_config.read_text() + "[sms]\ntransliterate = true\n")
    assert main(["--config", str(box_config), "sms", "send", "600123456", "Zażółć gęślą jaźń"]) == 0
    assert "1 part, GSM-7" in capsys.readouterr().out


# --- against the modem emulator, through the unmodified library -----------------------------------
def test_outbox_through_the_library_and_the_emulator(tmp_path):
    emulator_mod = pytest.importorskip("appliance.testing.modem")
    from gsmmodem.modem import GsmModem

    path = tmp_path / "centralka.db"
    db = open_db(path)
    reports = []

    def on_report(report):  # the library calls this on a thread of its own
        rdb = open_db(path)
        reports.append(
            record_status_report(
                rdb,
                report.reference,
                delivery_from_tp_status(report.deliveryStatus),
                report.timeFinalized,
                number=report.number,
            )
        )
        rdb.conn.close()

    with emulator_mod.ModemEmulator("huawei") as emulator:
        modem = GsmModem(emulator.device, 115200, smsStatusReportCallback=on_report)
        modem.timeout = 0.1
        try:
            modem.connect()
            short = queue_sms(db, PATIENT, "Zażółć gęślą jaźń 🙂")
            long = queue_sms(db, "600123457", ("Zażółć gęślą jaźń. " * 8)[:150])
            assert Outbox(open_db(path), ModemSender(modem)).send_due() == 2

            sent = emulator.sent_sms
            assert [(s["number"], s["encoding"]) for s in sent] == [(PATIENT, "ucs2")] + [("+48600123457", "ucs2")] * 3
            assert sent[0]["text"] == "Zażółć gęślą jaźń" and sent[0]["udh"] is None
            assert [len(s["text"]) for s in sent[1:]] == [67, 67, 16]
            assert [s["udh"]["seq"] for s in sent[1:]] == [1, 2, 3]
            assert all(s["request_status_report"] for s in sent)
            rows = {i: get_sms(db, i) for i in (short, long)}
            assert [p["mr"] for p in rows[short]["part_rows"]] == [sent[0]["mr"]]
            assert [p["mr"] for p in rows[long]["part_rows"]] == [s["mr"] for s in sent[1:]]

            # One report at a time: two +CDSI notices in one read lose the second (a library
            # defect the modem supervisor covers by reading the SR memory; see emulator tests).
            for n, s in enumerate(sent[1:], start=1):
                emulator.status_report(s["mr"], delivered=True)
                deadline = time.monotonic() + 5
                while len(reports) < n and time.monotonic() < deadline:
                    time.sleep(0.02)
            assert reports == [long] * 3
            assert get_sms(db, long)["state"] == "delivered"
            assert get_sms(db, short)["state"] == "sent"
        finally:
            modem.close()


def test_a_silent_modem_is_a_retry_not_a_maybe_sent_sms(tmp_path):
    # No "> " prompt means the PDU never left: retry later, never "uncertain".
    emulator_mod = pytest.importorskip("appliance.testing.modem")
    from gsmmodem.modem import GsmModem

    db = open_db(tmp_path / "centralka.db")
    with emulator_mod.ModemEmulator("simcom") as emulator:
        modem = GsmModem(emulator.device, 115200)
        modem.timeout = 0.1
        try:
            modem.connect()
            sms_id = queue_sms(db, PATIENT, "Oddzwonimy dziś do 18:00.")
            emulator.fault("no_reply")
            clock = [time.time()]
            outbox = Outbox(db, ModemSender(modem), clock=lambda: clock[0])
            assert outbox.send_due() == 0
            row = get_sms(db, sms_id)
            assert row["state"] == "queued" and emulator.sent_sms == []
            emulator.clear_faults()
            clock[0] += 3600
            sent = outbox.send_due()
            assert sent == 1, (get_sms(db, sms_id), emulator.transcript()[-1500:])
            assert [s["text"] for s in emulator.sent_sms] == ["Oddzwonimy dziś do 18:00."]
        finally:
            modem.close()


@pytest.mark.parametrize("code, transient", [(42, True), (38, True), (500, True), (304, False), (1, False)])
def test_modem_refusals_are_classified_for_the_outbox(code, transient):
    from gsmmodem.exceptions import CmsError

    from appliance.gsm.sender import _refused

    err = _refused(CmsError("AT+CMGS=23", code), [7])
    assert err.transient is transient
    assert err.sent_mrs == [7] or list(err.sent_mrs) == [7]
