"""The modem supervisor against the pty modem emulator and the unmodified python-gsmmodem-new.

What a person would notice: the SMS that leave (decoded PDUs, byte for byte), the calls that
ring with the right number, the SMS that arrive joined, and that every modem fault heals by
itself without an SMS going missing or leaving twice.
"""

import os
import queue
import threading
import time

import pytest
from gsmmodem.exceptions import TimeoutException

from appliance.config import load_settings
from appliance.gsm.discovery import find_modem
from appliance.testing.modem import ModemEmulator
from appliance.gsm.modem import Modem, ModemSmsSender, fix_caller_id, parse_clip
from appliance.gsm.outbox import get_sms, queue_sms
from appliance.gsm.supervisor import ModemSupervisor
from appliance.store.db import open_db

from .test_modem_emulator import wait_for as _poll

PATIENT = "+48600123456"
OTHER = "+48600123457"
FAST = {
    "poll_s": 1.0,
    "ping_timeout_s": 0.5,
    "drain_s": 0.05,
    "probe_s": 0.2,
    "reset_grace_s": 0.3,
    "reset_wait_s": 2.0,
    "sim_busy_reset_s": 0.5,
    "clip_wait_s": 0.5,
    "call_poll_s": 0.3,
    "probe_slow_s": 1.0,
}


def wait_for(predicate, timeout=15.0, interval=0.02):
    return _poll(predicate, timeout, interval)


class Rig:
    """One emulated modem, one supervisor on it, the box's database, and what the box heard."""

    def __init__(
        self, tmp_path, profile="huawei", *, emulator_kw=None, pin=None, start=True, voice=None, **modem_settings
    ):
        self.emulator = ModemEmulator(profile, **(emulator_kw or {}))
        self.dev_dir = os.path.dirname(self.emulator.device)
        self.db_path = tmp_path / "centralka.db"
        self.db = open_db(self.db_path)
        self.settings = load_settings(
            env={}, modem={**FAST, **modem_settings}, sms={"retry_min_s": 1, "retry_max_s": 2}
        )
        self.events = []
        self.resets = 0
        self.supervisor = ModemSupervisor(
            device=self.emulator.device,
            voice_device=voice or self.emulator.voice_device,
            db_path=self.db_path,
            settings=self.settings,
            pin=pin,
            on_event=lambda name, data: self.events.append((name, data)),
            usb_reset=self._usb_reset,
            discover=self.discover,
        )
        if start:
            self.supervisor.start()

    def discover(self):
        return find_modem(None, dev_dir=self.dev_dir, probe_timeout=0.3)

    def _usb_reset(self):
        self.resets += 1
        self.emulator.replug()

    def up(self, timeout=15):
        assert wait_for(lambda: self.supervisor.health()["state"] == "up", timeout), self.supervisor.health()
        return self.supervisor.health()

    def named(self, name, *, with_call=False):
        """The events called ``name``; without the call's number unless ``with_call``."""
        return [
            data if with_call else {k: v for k, v in data.items() if k != "call"}
            for n, data in list(self.events)
            if n == name
        ]

    def queue(self, number, text):
        return queue_sms(self.db, number, text, settings=self.settings)

    def sent_to(self, number):
        return [s for s in self.emulator.sent_sms if s["number"] == number]

    def commands(self, prefix):
        return [c for c in self.emulator.commands if c.startswith(prefix)]

    def close(self):
        self.supervisor.stop()
        self.emulator.close()
        self.db.conn.close()


@pytest.fixture
def rigs(tmp_path):
    made = []

    def make(*args, **kw):
        box = tmp_path / f"box{len(made)}"
        box.mkdir()
        rig = Rig(box, *args, **kw)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


# ------------------------------------------------------------------------------- SMS out


def ucs2_hex(text):
    return text.encode("utf-16-be").hex().upper()


@pytest.mark.parametrize("profile", ["huawei", "simcom", "quectel"])
def test_polish_sms_leaves_as_one_ucs2_pdu(rigs, profile):
    rig = rigs(profile)
    rig.up()
    sms_id = rig.queue(PATIENT, "Zażółć gęślą jaźń")
    rig.supervisor.wake()
    assert wait_for(lambda: get_sms(rig.db, sms_id)["state"] == "sent")

    [sent] = rig.emulator.sent_sms
    assert sent["pdu_hex"] == (
        "0021010B918406103254F6000822005A0061017C00F301420107002000670119015B006C01050020006A0061017A0144"
    )
    assert (sent["text"], sent["encoding"], sent["udh"]) == ("Zażółć gęślą jaźń", "ucs2", None)
    assert rig.commands("AT+CMGS=") == ["AT+CMGS=47"]
    # The box's own idea of the TE character set is still plain text afterwards.
    assert rig.emulator.cscs == "IRA"


def test_long_polish_sms_leaves_as_three_concatenated_parts(rigs):
    rig = rigs("simcom")
    rig.up()
    text = ("Zażółć gęślą jaźń. " * 8)[:150]
    sms_id = rig.queue(PATIENT, text)
    rig.supervisor.wake()
    assert wait_for(lambda: get_sms(rig.db, sms_id)["state"] == "sent")

    parts = rig.emulator.sent_sms
    assert len(parts) == 3
    chunks = [text[:67], text[67:134], text[134:]]
    for seq, (part, chunk) in enumerate(zip(parts, chunks), start=1):
        pdu = part["pdu_hex"]
        body = ucs2_hex(chunk)
        udh = f"050003{1:02X}03{seq:02X}"  # 8-bit reference 1 (the box's first message), 3 parts
        udl = f"{6 + len(chunk) * 2:02X}"
        assert pdu == "0061010B918406103254F60008" + udl + udh + body
        assert part["udh"] == {"raw": udh[2:], "ref": 1, "parts": 3, "seq": seq}
    assert "".join(p["text"] for p in parts) == text
    assert rig.commands("AT+CMGS=") == ["AT+CMGS=153", "AT+CMGS=153", "AT+CMGS=51"]
    # Each part's own +CMGS reference is kept, so every part's delivery report finds its message.
    mrs = [r[0] for r in rig.db.execute("SELECT mr FROM sms_parts WHERE sms_id = ? ORDER BY seq", [sms_id])]
    assert mrs == [p["mr"] for p in parts]


def test_delivery_report_lands_on_the_right_sms(rigs):
    rig = rigs("quectel")
    rig.up()
    first, second = rig.queue(PATIENT, "Wizyta jutro o 10:00"), rig.queue(OTHER, "Wizyta jutro o 11:00")
    rig.supervisor.wake()
    assert wait_for(lambda: get_sms(rig.db, second)["state"] == "sent")
    rig.emulator.status_report(rig.sent_to(OTHER)[0]["mr"], delivered=True)
    assert wait_for(lambda: get_sms(rig.db, second)["state"] == "delivered")
    assert get_sms(rig.db, first)["state"] == "sent"
    rig.emulator.status_report(rig.sent_to(PATIENT)[0]["mr"], delivered=False)
    assert wait_for(lambda: get_sms(rig.db, first)["state"] == "undelivered")


# ------------------------------------------------------------------------------- faults


def queue_two_then(rig, fault, **kw):
    """Two SMS wait in the outbox when the modem breaks; then the box is told to send them.
    (The fault comes first: a supervisor quick enough to send between the queueing and the
    fault would test the working modem instead.)"""
    rig.emulator.fault(fault, **kw)
    ids = [rig.queue(PATIENT, "Przypominamy o wizycie jutro."), rig.queue(OTHER, "Prosimy o kontakt z rejestracją.")]
    rig.supervisor.wake()
    return ids


def assert_each_left_once(rig, ids):
    assert wait_for(lambda: all(get_sms(rig.db, i)["state"] == "sent" for i in ids), timeout=30), [
        get_sms(rig.db, i) for i in ids
    ]
    assert len(rig.sent_to(PATIENT)) == 1 and len(rig.sent_to(OTHER)) == 1
    assert rig.sent_to(OTHER)[0]["text"] == "Prosimy o kontakt z rejestracją."


def test_hung_modem_is_reset_and_the_queue_still_leaves_once(rigs):
    rig = rigs("huawei")
    old = rig.up()["device"]
    ids = queue_two_then(rig, "no_reply")
    assert wait_for(lambda: rig.supervisor.health()["state"] != "up")
    assert_each_left_once(rig, ids)
    health = rig.up()
    # Reopening and AT+CFUN=1,1 reach a hung modem no better than anything else: the USB reset
    # did it, and the modem came back under another ttyUSB number that discovery found.
    assert "AT+CFUN=1,1" in rig.emulator.commands  # tried first, swallowed by the hung modem
    assert rig.resets == 1
    assert health["device"] != old and health["device"].startswith(rig.dev_dir)
    assert [get_sms(rig.db, i)["attempts"] for i in ids] == [1, 1]


def test_health_is_readable_while_the_modem_hangs(rigs):
    rig = rigs("quectel", reset_wait_s=30.0)
    rig.up()
    rig.emulator.fault("no_reply")
    rig.supervisor.wake()
    rig.queue(PATIENT, "Test")
    rig.supervisor.wake()
    slowest = 0.0
    sampled_until = time.monotonic() + 3  # the modem thread sits in AT timeouts meanwhile
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        started = time.monotonic()
        health = rig.supervisor.health()
        slowest = max(slowest, time.monotonic() - started)
        if time.monotonic() >= sampled_until and health["state"] != "up":
            break
        time.sleep(0.01)
    # Never waits for the modem: far below the seconds an AT timeout takes (a margin for load).
    assert slowest < 0.5
    assert health["state"] in ("down", "connecting", "degraded") and health["reason"]


def test_late_reply_is_drained_without_reconnecting(rigs):
    rig = rigs("quectel")
    rig.up()
    ids = queue_two_then(rig, "late_reply")
    assert_each_left_once(rig, ids)
    assert rig.emulator.commands.count("ATZ") == 1  # the same connection all along
    assert wait_for(lambda: rig.supervisor.health()["operator"] == "Plus")
    health = rig.supervisor.health()
    assert (health["signal"], health["state"]) == (20, "up")


def test_late_reply_never_reaches_the_next_command(tmp_path):
    with ModemEmulator("quectel") as emulator:
        modem = Modem(emulator.device, on_urc=lambda lines: None, ping_timeout=0.5, drain_s=0.05)
        try:
            modem.start(lambda m, state: None)
            emulator.fault("late_reply")
            with pytest.raises(TimeoutException):
                modem.write("AT+CSQ", timeout=0.3)
            assert modem.write("AT+CGMI") == ["Quectel", "OK"]
            assert modem.write("AT+CGMM") == ["EC25", "OK"]
            assert modem.signal() == 20
        finally:
            modem.close()


def test_emoji_out_does_not_raise_and_charset_is_put_back(tmp_path):
    with ModemEmulator("simcom") as emulator:
        modem = Modem(emulator.device, on_urc=lambda lines: None, ping_timeout=0.5, drain_s=0.05)
        try:
            modem.start(lambda m, state: None)
            modem.sendSms(PATIENT, "Dziękujemy 😀")
            assert emulator.sent_sms[0]["text"] == "Dziękujemy 😀"
            assert emulator.cscs == "IRA" and modem.operator() == "Plus"
            ModemSmsSender(modem).send(PATIENT, "Do zobaczenia 👋", ucs2=True)
            assert emulator.sent_sms[1]["text"] == "Do zobaczenia 👋"
        finally:
            modem.close()


def test_unplugged_modem_comes_back_under_a_new_name(rigs):
    rig = rigs("simcom")
    old = rig.up()["device"]
    ids = queue_two_then(rig, "unplug")
    assert_each_left_once(rig, ids)
    health = rig.up()
    assert health["device"] != old and not os.path.exists(old)
    assert health["voice_device"] == rig.emulator.voice_device  # simcom: AT ttyUSB(n), voice n+2


def test_sim_asking_for_its_pin_again_gets_it_once(rigs):
    rig = rigs("simcom", pin="1234")
    rig.up()
    ids = queue_two_then(rig, "pin_required")  # the emulator's SIM now wants 1234
    assert_each_left_once(rig, ids)
    assert rig.commands("AT+CPIN=") == ['AT+CPIN="1234"']


def test_wrong_pin_is_tried_once_and_reported(rigs):
    rig = rigs("huawei", pin="0000")
    rig.up()
    ids = queue_two_then(rig, "pin_required")  # the SIM's PIN is 1234
    assert wait_for(lambda: rig.supervisor.health()["state"] == "pin_error")
    time.sleep(5 * FAST["poll_s"])  # give it every chance to try again
    assert rig.commands("AT+CPIN=") == ['AT+CPIN="0000"']
    assert rig.emulator.pin_tries == 2
    assert [a["kind"] for a in rig.named("alarm")] == ["modem_pin"]
    stored = rig.db.execute("SELECT kind, severity FROM alarms").fetchall()
    assert ("modem_pin", "critical") in stored
    assert [get_sms(rig.db, i)["state"] for i in ids] == ["queued", "queued"]

    # A restart with the same PIN does not try it either (a crash loop must not lock the SIM).
    rig.supervisor.stop()
    rig.supervisor.start()
    assert wait_for(lambda: rig.supervisor.health()["state"] == "pin_error")
    assert rig.commands("AT+CPIN=") == ['AT+CPIN="0000"']
    # The admin fixes the PIN: everything waiting leaves, once.
    rig.supervisor.stop()
    rig.supervisor.start(pin="1234")
    assert_each_left_once(rig, ids)
    assert rig.commands("AT+CPIN=") == ['AT+CPIN="0000"', 'AT+CPIN="1234"']


def test_pin_needed_at_start_but_none_configured(rigs):
    rig = rigs("quectel", emulator_kw={"pin": "1234"})
    assert wait_for(lambda: rig.supervisor.health()["state"] == "pin_error")
    assert "PIN" in rig.supervisor.health()["reason"]
    assert rig.commands("AT+CPIN=") == []


def test_lost_network_holds_sms_until_coverage_returns(rigs):
    rig = rigs("huawei")
    rig.up()
    ids = queue_two_then(rig, "network_lost")
    assert wait_for(lambda: rig.supervisor.health()["registered"] is False)
    health = rig.supervisor.health()
    assert health["state"] == "down" and health["signal"] is None
    time.sleep(2 * FAST["poll_s"])
    assert rig.commands("AT+CMGS") == []
    rig.emulator.clear_faults()
    assert_each_left_once(rig, ids)
    assert [get_sms(rig.db, i)["attempts"] for i in ids] == [1, 1]


def test_sim_busy_for_good_is_cured_by_a_modem_reset(rigs):
    rig = rigs("quectel", emulator_kw={"reset_delay": 0.3})
    old = rig.up()["device"]
    ids = queue_two_then(rig, "sim_busy")
    assert wait_for(lambda: rig.supervisor.health()["sim"] == "SIM BUSY")
    assert_each_left_once(rig, ids)
    assert "AT+CFUN=1,1" in rig.emulator.commands
    assert rig.resets == 0
    assert rig.up()["device"] != old


def test_missing_modem_is_absent_then_found(tmp_path):
    emulator = ModemEmulator("quectel")
    emulator.fault("unplug")
    dev_dir = os.path.dirname(emulator.device)
    settings = load_settings(env={}, modem=FAST)
    states = queue.Queue()
    supervisor = ModemSupervisor(
        device=None,
        voice_device=None,
        db_path=tmp_path / "c.db",
        settings=settings,
        on_event=lambda n, d: states.put(d["state"]) if n == "health" else None,
        discover=lambda: find_modem(None, dev_dir=dev_dir, probe_timeout=0.3),
    )
    try:
        supervisor.start()  # never raises for a missing modem
        assert wait_for(lambda: supervisor.health()["state"] == "absent")
        with pytest.raises(Exception):
            supervisor.dial(PATIENT).result(timeout=5)
        emulator.replug()
        assert wait_for(lambda: supervisor.health()["state"] == "up")
        assert supervisor.health()["profile"] == "quectel"
    finally:
        supervisor.stop()
        emulator.close()


# ------------------------------------------------------------------------------- calls


def test_caller_id_fixes():
    assert fix_caller_id("600123456", 129) == "600123456"
    assert fix_caller_id("48600123456", 145) == "+48600123456"
    assert parse_clip('+CLIP: "600123456",129,,,,0') == ("600123456", 129)
    assert parse_clip('+CLIP: "",128,"",0,"",1') == ("", 128)
    assert parse_clip('+CLIP: "002B00340038003600300030",145', ucs2=True) == ("+48600", 145)


@pytest.mark.parametrize("profile", ["huawei", "simcom", "quectel"])
def test_national_and_international_caller_ids(rigs, profile):
    rig = rigs(profile)
    rig.up()
    rig.emulator.ring("600123456", ton=129)
    assert wait_for(lambda: rig.named("ring"))
    assert rig.named("ring")[0] == {"caller": "600123456", "ton": 129}  # no bogus "+"
    rig.emulator.hangup_remote()
    assert wait_for(lambda: rig.named("call_ended"))
    rig.emulator.ring(PATIENT)
    assert wait_for(lambda: len(rig.named("ring")) == 2)
    assert rig.named("ring")[1] == {"caller": PATIENT, "ton": 145}


def test_caller_id_in_a_separate_read_still_arrives(rigs):
    rig = rigs("quectel")
    rig.up()
    rig.emulator.ring(PATIENT, clip_in_separate_write=True)
    assert wait_for(lambda: rig.named("ring"))
    assert rig.named("ring") == [{"caller": PATIENT, "ton": 145}]


def test_repeated_rings_announce_one_call(rigs):
    rig = rigs("huawei")
    rig.up()
    for _ in range(3):
        rig.emulator.ring(PATIENT)
    assert wait_for(lambda: rig.named("ring"))
    rig.emulator.hangup_remote()
    assert wait_for(lambda: rig.named("call_ended"))
    assert len(rig.named("ring")) == 1


@pytest.mark.parametrize("profile", ["huawei", "simcom", "quectel"])
def test_caller_hanging_up_before_answer_is_reported(rigs, profile):
    rig = rigs(profile)
    rig.up()
    rig.emulator.ring(PATIENT)
    assert wait_for(lambda: rig.named("ring"))
    rig.emulator.hangup_remote()
    assert wait_for(lambda: rig.named("call_ended"), timeout=5)
    assert rig.named("call_ended") == [{"reason": "caller hung up before answer", "direction": "in"}]


VOICE_ON = {"huawei": "AT^DDSETEX=2", "simcom": "AT+CPCMREG=1", "quectel": "AT+QPCMV=1,0"}


@pytest.mark.parametrize("profile", ["huawei", "simcom", "quectel"])
def test_answered_call_switches_the_voice_channel_on(rigs, profile):
    rig = rigs(profile)
    rig.up()
    rig.emulator.ring(PATIENT)
    assert wait_for(lambda: rig.named("ring"))
    rig.supervisor.answer().result(timeout=10)
    assert rig.named("call_connected") == [{"direction": "in"}]
    assert wait_for(lambda: rig.emulator.voice_streaming)
    assert VOICE_ON[profile] in rig.emulator.commands
    rig.supervisor.send_dtmf("12").result(timeout=10)
    assert rig.emulator.dtmf_sent == ["1", "2"]
    rig.emulator.hangup_remote()
    assert wait_for(lambda: rig.named("call_ended"))
    assert rig.named("call_ended") == [{"reason": "remote hangup", "direction": "in"}]


def test_answering_a_caller_who_just_left(rigs):
    rig = rigs("simcom", clip_wait_s=0.2)
    rig.up()
    rig.emulator.ring(PATIENT)
    assert wait_for(lambda: rig.named("ring"))
    with rig.emulator._lock:  # the caller gives up and the NO CARRIER line is lost on the way
        rig.emulator._calls.clear()
    with pytest.raises(Exception):
        rig.supervisor.answer().result(timeout=10)
    assert wait_for(lambda: rig.named("call_ended"))
    assert rig.named("call_ended")[0]["reason"] == "caller hung up before answer"


@pytest.mark.parametrize("profile", ["quectel", "simcom"])
def test_outgoing_call_connects_and_ends(rigs, profile):
    rig = rigs(profile, emulator_kw={"callee_answer_delay": 1.0})
    rig.up()
    rig.supervisor.dial(PATIENT).result(timeout=10)
    assert wait_for(lambda: rig.named("call_connected"))
    assert rig.named("call_connected") == [{"direction": "out"}]
    assert wait_for(lambda: rig.emulator.voice_streaming)
    rig.supervisor.hangup().result(timeout=10)
    assert rig.named("call_ended") == [{"reason": "local hangup", "direction": "out"}]
    assert rig.emulator.calls == []


def test_every_call_event_names_its_call(rigs):
    """Issue 12 item 7: the glue matches events to legs by the call's number; one call's events
    share it (the ATD's ``dialled`` before any other), the next call has another."""
    rig = rigs("huawei", emulator_kw={"callee_answer_delay": 0.5})
    rig.up()
    placed = rig.supervisor.dial(PATIENT).result(timeout=10)
    assert wait_for(lambda: rig.named("call_connected"))
    rig.supervisor.hangup().result(timeout=10)
    rig.emulator.ring(PATIENT)
    assert wait_for(lambda: rig.named("ring"))
    rig.emulator.hangup_remote()
    assert wait_for(lambda: len(rig.named("call_ended")) == 2)
    calls = [(n, d["call"]) for n, d in list(rig.events) if n in ("dialled", "ring", "call_connected", "call_ended")]
    first, second = placed["call"], calls[-1][1]
    assert calls == [
        ("dialled", first),
        ("call_connected", first),
        ("call_ended", first),
        ("ring", second),
        ("call_ended", second),
    ]
    assert second != first


# ------------------------------------------------------------------------------- SMS in


@pytest.mark.parametrize("profile, together", [("huawei", False), ("simcom", True)])
def test_incoming_two_part_sms_is_joined_and_announced(rigs, profile, together):
    rig = rigs(profile)
    rig.up()
    text = ("Proszę o przełożenie wizyty na przyszły tydzień. " * 3)[:130]
    rig.emulator.deliver_sms(PATIENT, text, parts=2, notify_together=together)
    assert wait_for(lambda: rig.named("sms_in"))
    [announced] = rig.named("sms_in")
    assert (announced["number"], announced["text"]) == (PATIENT, text)
    row = rig.db.execute(
        "SELECT number, text, parts, complete FROM sms_incoming WHERE id = ?", [announced["message_id"]]
    ).fetchone()
    assert tuple(row) == (PATIENT, text, 2, 1)
    assert wait_for(lambda: rig.emulator.stored_sms("ME") == {})


def test_incoming_emoji_is_stored(rigs):
    rig = rigs("quectel")
    rig.up()
    rig.emulator.deliver_sms(PATIENT, "Dziękuję 😀")
    assert wait_for(lambda: rig.named("sms_in"))
    assert rig.named("sms_in")[0]["text"] == "Dziękuję 😀"


def test_sms_waiting_on_the_modem_are_read_at_start(rigs):
    rig = rigs("huawei", start=False)
    rig.emulator.cpms = ["ME", "ME", "ME"]  # as the box left it; +CNMI is off after power-on
    rig.emulator.deliver_sms(PATIENT, "Wysłane, gdy centralka była wyłączona")
    rig.supervisor.start()
    assert wait_for(lambda: rig.named("sms_in"))
    assert rig.named("sms_in")[0]["text"] == "Wysłane, gdy centralka była wyłączona"


def test_events_come_from_one_thread(rigs):
    rig = rigs("huawei")
    seen = set()
    rig.supervisor.on_event = lambda name, data: seen.add(threading.current_thread().name)
    rig.up()
    rig.emulator.deliver_sms(PATIENT, "Test")
    rig.emulator.ring(PATIENT)
    assert wait_for(lambda: len(seen) >= 1 and rig.emulator.stored_sms("ME") == {})
    assert seen == {"modem-supervisor"}


# ------------------------------------------------------------------------------- discovery


def test_discovery_order(tmp_path):
    dev = tmp_path / "dev"
    (dev / "serial" / "by-id").mkdir(parents=True)
    at, voice = dev / "ttyUSB7", dev / "ttyUSB6"
    at.touch()
    voice.touch()
    # CENTRALKA_MODEM: "AT" or "AT,VOICE", used as given while the AT port exists.
    assert find_modem(f"{at},{voice}", dev_dir=str(dev)).at == str(at)
    assert find_modem(f"{at},{voice}", dev_dir=str(dev)).voice == str(voice)
    assert find_modem(str(dev / "ttyUSB9"), dev_dir=str(dev)) is None
    # udev's by-id names, when sysfs has nothing to say, by the maker's name and interface 02.
    (dev / "serial" / "by-id" / "usb-Quectel_EC25-if02-port0").symlink_to(at)
    found = find_modem(None, dev_dir=str(dev))
    assert (found.at.endswith("-if02-port0"), found.profile) == (True, "quectel")
    # Our own udev links come first.
    (dev / "centralka-modem-at").symlink_to(at)
    (dev / "centralka-modem-voice").symlink_to(voice)
    found = find_modem(None, dev_dir=str(dev))
    assert (found.at, found.voice) == (str(dev / "centralka-modem-at"), str(dev / "centralka-modem-voice"))


def test_discovery_probe_finds_the_emulated_modem_and_its_voice_port():
    with ModemEmulator("simcom") as emulator:
        found = find_modem(None, dev_dir=os.path.dirname(emulator.device), probe_timeout=0.3)
        assert (found.at, found.voice, found.profile) == (emulator.device, emulator.voice_device, "simcom")


def test_a_quectel_with_its_sound_card_as_voice_port_is_switched_to_usb_audio(tmp_path):
    rig = Rig(tmp_path, "quectel", voice="alsa:plughw:CARD=Android")
    try:
        rig.up()
        rig.emulator.ring("+48600123456")
        assert wait_for(lambda: rig.named("ring"))
        rig.supervisor.answer().result(10)
        assert wait_for(lambda: "AT+QPCMV=1,2" in rig.commands("AT+QPCMV"))
    finally:
        rig.close()


def test_discovery_asks_another_serial_device_only_once(tmp_path):
    # A clinic's USB-serial printer or UPS is not a modem: it hears one ATI, not one every 5 s.
    import select as _select

    from appliance.gsm import discovery

    master, slave = os.openpty()
    try:
        os.symlink(os.ttyname(slave), tmp_path / "ttyUSB0")

        def written():
            data = b""
            while _select.select([master], [], [], 0.3)[0]:
                data += os.read(master, 1024)
            return data

        assert discovery.find_modem(None, dev_dir=str(tmp_path), probe_timeout=0.2) is None
        assert b"ATI" in written()
        assert discovery.find_modem(None, dev_dir=str(tmp_path), probe_timeout=0.2) is None
        assert written() == b""
    finally:
        discovery._NOT_A_MODEM.clear()
        os.close(master)
        os.close(slave)
