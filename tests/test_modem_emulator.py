"""The modem emulator against the unmodified python-gsmmodem-new.

Two things are checked at once: that the emulator answers like the three modems closely enough
for the library to work, and what the library really does — including its defects, which the
gsm/ layer has to work around. A test named ``..._defect`` asserts the library's *wrong*
behaviour on purpose: when it starts failing, the library changed and gsm/ can drop a fix.
"""

import queue
import threading
import time

import pytest
import serial
from gsmmodem.exceptions import (
    CmeError,
    CmsError,
    CommandError,
    IncorrectPinError,
    PinRequiredError,
    PukRequiredError,
    TimeoutException,
)
from gsmmodem.modem import GsmModem, SentSms
from gsmmodem.pdu import Concatenation

from appliance.testing.modem import FRAME_BYTES, PROFILES, ModemEmulator, dtmf_pcm

PATIENT = "+48600123456"
ALL_PROFILES = sorted(PROFILES)


def wait_for(predicate, timeout=10.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Lab:
    """Emulators and library modems made by one test; the fixture closes them all."""

    def __init__(self):
        self.emulators, self.modems = [], []

    def emulator(self, profile="huawei", **kw):
        emulator = ModemEmulator(profile, **kw)
        self.emulators.append(emulator)
        return emulator

    def modem(self, device, **kw):
        modem = GsmModem(device, 115200, **kw)
        # pyserial's read timeout; it only bounds how long close() waits for the reader thread.
        modem.timeout = 0.1
        self.modems.append(modem)
        return modem

    def connected(self, profile="huawei", *, pin=None, emulator=None, **modem_kw):
        emulator = emulator or self.emulator(profile, pin=pin)
        modem = self.modem(emulator.device, **modem_kw)
        modem.connect(pin=pin)
        return emulator, modem

    def close(self):
        for modem in self.modems:
            try:
                modem.close()
            except Exception:  # never opened, or the port is already gone
                pass
        for emulator in self.emulators:
            emulator.close()


@pytest.fixture
def lab():
    lab = Lab()
    yield lab
    lab.close()


def collector():
    """A callback for the library that hands what it gets to the test thread."""
    got = queue.Queue()
    return got, got.put


# -------------------------------------------------------------------------- connect


EXPECTED = {
    # profile: (revision as the library reads it, does the library probe commands one by one?)
    "huawei": ("11.126.85.00.209", False),
    "simcom": ("+CGMR: LE20B04SIM7600M22", True),
    "quectel": ("EC25EFAR06A06M4G", False),
}


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_connect_reads_back_identity_and_network(lab, profile):
    emulator = lab.emulator(profile, operator="Orange", signal=17)
    _, modem = lab.connected(emulator=emulator)

    assert modem.signalStrength == 17
    assert modem.networkName == "Orange"
    assert modem.imei == PROFILES[profile].imei
    assert modem.imsi == "260031234567890"
    assert modem.manufacturer == PROFILES[profile].manufacturer
    revision, probes = EXPECTED[profile]
    assert modem.revision == revision
    # What connect() left the modem set to, as the emulator saw it.
    assert (emulator.echo, emulator.cmee, emulator.cmgf) == (False, 1, 0)
    assert emulator.cnmi[:4] == [2, 1, 0, 2]
    assert emulator.cpms == ["ME", "ME", "ME"]
    assert (emulator.clip, emulator.crc) == (1, 1)
    assert ("AT+VTS=?" in emulator.commands) is probes  # SIMCom refuses AT+CLAC


def test_connect_with_the_right_pin(lab):
    emulator, modem = lab.connected("quectel", pin="4321")
    assert emulator.pin_state == "READY"
    assert 'AT+CPIN="4321"' in emulator.commands
    assert modem.imsi == "260011234567890"


def test_connect_without_a_pin_the_sim_wants_is_refused(lab):
    emulator = lab.emulator("huawei", pin="4321")
    modem = lab.modem(emulator.device)
    with pytest.raises(PinRequiredError):
        modem.connect()
    assert emulator.pin_state == "SIM PIN"


def test_three_wrong_pins_lock_the_sim_behind_its_puk(lab):
    emulator = lab.emulator("simcom", pin="4321")
    for attempt in range(3):
        modem = lab.modem(emulator.device)
        with pytest.raises(IncorrectPinError):
            modem.connect(pin="1111")
        modem.close()
    assert emulator.pin_state == "SIM PUK"
    modem = lab.modem(emulator.device)
    with pytest.raises(PukRequiredError):  # even the right PIN is no use now
        modem.connect(pin="4321")
    assert [c for c in emulator.commands if c.startswith("AT+CPIN=")] == ['AT+CPIN="1111"'] * 3 + ['AT+CPIN="4321"']


# -------------------------------------------------------------------------- SMS out

# SMS-SUBMIT for "Zażółć gęślą jaźń" to +48600123456, computed by hand (3GPP TS 23.040):
POLISH_PDU = (
    "00"  # no SMSC address: the modem uses the SIM's
    "21"  # SMS-SUBMIT, TP-SRR (status report requested), no validity period
    "00"  # TP-MR: the library's reference counter, 0 on a fresh connection
    "0B91"  # destination: 11 digits, international
    "8406103254F6"  # 48 60 01 23 45 6  -> nibble-swapped, F-padded
    "00"  # TP-PID
    "08"  # TP-DCS: UCS-2
    "22"  # TP-UDL: 17 characters x 2 octets
    "005A0061017C00F3014201070020"  # Z a ż ó ł ć ␠
    "00670119015B006C01050020"  # g ę ś l ą ␠
    "006A0061017A0144"  # j a ź ń
)


def test_polish_sms_leaves_as_one_ucs2_pdu_byte_for_byte(lab):
    emulator, modem = lab.connected("huawei")
    sms = modem.sendSms(PATIENT, "Zażółć gęślą jaźń")

    [sent] = emulator.sent_sms
    assert sent["pdu_hex"] == POLISH_PDU
    assert "AT+CMGS=47" in emulator.commands  # TPDU length, SMSC octet excluded
    assert (sent["number"], sent["text"], sent["encoding"]) == (PATIENT, "Zażółć gęślą jaźń", "ucs2")
    assert sent["udh"] is None and sent["request_status_report"]
    assert sms.reference == sent["mr"]


def test_gsm7_packing_matches_the_textbook_example(lab):
    emulator, modem = lab.connected("quectel")
    modem.sendSms(PATIENT, "hellohello")
    # 23.040's own example: "hellohello" packs to E8329BFD4697D9EC37.
    assert emulator.sent_sms[0]["pdu_hex"] == "0021000B918406103254F600000A" + "E8329BFD4697D9EC37"


def test_150_polish_characters_go_as_three_concatenated_parts(lab):
    emulator, modem = lab.connected("simcom")
    text = ("Zażółć gęślą jaźń. " * 8)[:150]
    modem.sendSms(PATIENT, text)

    parts = emulator.sent_sms
    assert [p["udh"]["seq"] for p in parts] == [1, 2, 3]
    assert {(p["udh"]["ref"], p["udh"]["parts"]) for p in parts} == {(0, 3)}
    assert [len(p["text"]) for p in parts] == [67, 67, 16]
    assert "".join(p["text"] for p in parts) == text
    assert all(p["encoding"] == "ucs2" and p["number"] == PATIENT for p in parts)
    # SMS-SUBMIT with UDHI, UDL 6 + 134 octets, 8-bit concatenation IE: ref 0, 3 parts, part 1.
    assert parts[0]["pdu_hex"].startswith("0061000B918406103254F600088C05000300030100")
    assert [c for c in emulator.commands if c.startswith("AT+CMGS=")] == ["AT+CMGS=153"] * 2 + ["AT+CMGS=51"]
    # Defect: every part carries the same TP-MR, and the library files the SMS under the last
    # part's +CMGS reference only, so reports on the other parts match nothing.
    assert [p["reference"] for p in parts] == [0, 0, 0]
    assert [p["mr"] for p in parts] == [0, 1, 2]


def test_160_gsm7_characters_fit_one_pdu(lab):
    emulator, modem = lab.connected("huawei")
    text = ("Przypominamy o wizycie jutro o 10:30. " * 5)[:160]
    modem.sendSms(PATIENT, text)

    [sent] = emulator.sent_sms
    assert (sent["encoding"], sent["text"], sent["udh"]) == ("gsm7", text, None)
    assert sent["pdu_hex"][24:28] == "00A0"  # DCS GSM-7, UDL 160 septets
    assert "AT+CMGS=153" in emulator.commands  # 13 header octets + 140 packed


def test_161_gsm7_characters_split_with_fill_bits(lab):
    emulator, modem = lab.connected("huawei")
    text = "".join(chr(ord("a") + i % 26) for i in range(161))
    modem.sendSms(PATIENT, text)

    assert [len(p["text"]) for p in emulator.sent_sms] == [153, 8]
    assert "".join(p["text"] for p in emulator.sent_sms) == text


def test_backtick_becomes_section_sign_defect(lab):
    # The library's GSM-7 table has "`" where 23.038 has "§" (0x5F): the phone shows "§".
    emulator, modem = lab.connected("huawei")
    modem.sendSms(PATIENT, "a`b")
    assert emulator.sent_sms[0]["text"] == "a§b"


def test_emoji_cannot_be_sent_defect(lab):
    emulator, modem = lab.connected("huawei")
    with pytest.raises(ValueError):
        modem.sendSms(PATIENT, "Dziękujemy 😀")
    assert not any(c.startswith("AT+CMGS") for c in emulator.commands)


def test_request_delivery_false_still_asks_for_a_report_defect(lab):
    emulator, modem = lab.connected("huawei", requestDelivery=False)
    modem.sendSms(PATIENT, "Test")
    assert "AT+CSMP=17,167,0,0" in emulator.commands  # only the text-mode setting obeys
    assert emulator.sent_sms[0]["request_status_report"] is True


def test_polish_sms_leaves_the_te_charset_at_ucs2(lab):
    emulator, modem = lab.connected("simcom")
    modem.sendSms(PATIENT, "Zażółć")
    assert emulator.cscs == "UCS2"
    # String replies follow +CSCS (27.007), so the operator name now arrives hex-encoded.
    assert modem.networkName == "0050006C00750073"


def test_delivery_report_reaches_the_library(lab):
    reports, on_report = collector()
    emulator, modem = lab.connected("quectel", smsStatusReportCallback=on_report)
    sms = modem.sendSms(PATIENT, "Wizyta potwierdzona")
    emulator.status_report(sms.reference, delivered=True)

    report = reports.get(timeout=3)
    assert (report.reference, report.number, report.deliveryStatus) == (sms.reference, PATIENT, 0)
    assert sms.status == SentSms.DELIVERED
    assert emulator.stored_sms("SR") == {}  # read and deleted by the library


# -------------------------------------------------------------------------- calls in


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_incoming_call_carries_the_caller_id(lab, profile):
    calls, on_call = collector()
    emulator, modem = lab.connected(profile, incomingCallCallbackFunc=on_call)
    emulator.ring(PATIENT)

    call = calls.get(timeout=3)
    assert (call.number, call.ton, call.type) == (PATIENT, "145", 0)
    assert call.ringing and call.active


def test_national_caller_id_gets_a_bogus_plus_defect(lab):
    calls, on_call = collector()
    emulator, modem = lab.connected("huawei", incomingCallCallbackFunc=on_call)
    emulator.ring("600123456", ton=129)
    assert calls.get(timeout=3).number == "+600123456"  # gsm/ must make this +48600123456


def test_caller_id_in_a_separate_read_is_lost_defect(lab):
    calls, on_call = collector()
    emulator, modem = lab.connected("quectel", incomingCallCallbackFunc=on_call)
    emulator.ring(PATIENT, clip_in_separate_write=True)
    assert calls.get(timeout=3).number is None


def test_withheld_caller_has_no_number(lab):
    calls, on_call = collector()
    emulator, modem = lab.connected("simcom", incomingCallCallbackFunc=on_call)
    emulator.ring("")
    assert calls.get(timeout=3).number is None


@pytest.mark.parametrize("profile, reported", [("huawei", True), ("simcom", False), ("quectel", False)])
def test_caller_hanging_up_before_answer(lab, profile, reported):
    calls, on_call = collector()
    emulator, modem = lab.connected(profile, incomingCallCallbackFunc=on_call)
    emulator.ring(PATIENT)
    call = calls.get(timeout=3)
    emulator.hangup_remote()
    # Only Huawei's ^CEND ends the call; plain NO CARRIER is ignored (defect on SIMCom, Quectel).
    assert wait_for(lambda: not call.active, timeout=0.5 if not reported else 3) is reported
    if not reported:
        assert call in modem.activeCalls.values()


def test_answering_a_call_the_caller_left_hangs_until_timeout_defect(lab):
    calls, on_call = collector()
    emulator, modem = lab.connected("simcom", incomingCallCallbackFunc=on_call)
    emulator.ring(PATIENT)
    calls.get(timeout=3)
    emulator.hangup_remote()
    time.sleep(0.2)  # the box gets round to answering a moment later
    # The modem answers ATA with NO CARRIER, which the library does not take as a final result.
    with pytest.raises(TimeoutException) as caught:
        modem.write("ATA", timeout=0.5)
    assert caught.value.data == ["NO CARRIER"]


VOICE_ON = {"huawei": "AT^DDSETEX=2", "simcom": "AT+CPCMREG=1", "quectel": "AT+QPCMV=1,0"}


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_answered_call_carries_pcm_both_ways(lab, profile):
    calls, on_call = collector()
    emulator = lab.emulator(profile, caller_tone_hz=440)
    _, modem = lab.connected(emulator=emulator, incomingCallCallbackFunc=on_call)
    voice = serial.Serial(emulator.voice_device, 115200, timeout=0.05)
    try:
        emulator.ring(PATIENT)
        calls.get(timeout=3).answer()
        modem.write(VOICE_ON[profile])
        assert wait_for(lambda: emulator.voice_streaming)

        heard = bytearray()
        deadline = time.monotonic() + 2
        while len(heard) < 5 * FRAME_BYTES and time.monotonic() < deadline:
            heard += voice.read(FRAME_BYTES)
        assert len(heard) >= 5 * FRAME_BYTES and any(heard)  # the test tone, not silence

        emulator.caller_presses("5")
        pressed = dtmf_pcm("5")[: 4 * FRAME_BYTES]
        deadline = time.monotonic() + 2
        while pressed not in heard and time.monotonic() < deadline:
            heard += voice.read(FRAME_BYTES)
        assert pressed in heard

        spoken = bytes(range(256)) * 5
        voice.write(spoken)
        assert wait_for(lambda: spoken in emulator.voice_received)

        emulator.hangup_remote()
        assert wait_for(lambda: not emulator.voice_streaming)
    finally:
        voice.close()


def test_simcom_takes_cpcmreg_only_in_a_call(lab):
    emulator, modem = lab.connected("simcom")
    with pytest.raises(CommandError):
        modem.write("AT+CPCMREG=1")


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_outgoing_call_is_placed_and_answered(lab, profile):
    # The callee answers well after the library's first 0.5 s poll even on a loaded machine
    # (answering before it is a library defect, tested below), and where the library polls
    # AT+CLCC, just after a poll's reply: SIMCom's "VOICE CALL: BEGIN" arriving inside a reply
    # would be taken as the reply (test_urc_during_a_command_is_taken_as_its_reply_defect).
    emulator = lab.emulator(profile, callee_answer_delay=2.5, answer_between_polls=profile != "huawei")
    _, modem = lab.connected(emulator=emulator)
    call = modem.dial(PATIENT, timeout=10)
    assert wait_for(lambda: call.answered, timeout=10)
    assert emulator.dialled == [PATIENT]
    emulator.hangup_remote()
    # Huawei says ^CEND; SIMCom and Quectel say nothing the library knows, but it polls AT+CLCC.
    assert wait_for(lambda: not call.active, timeout=10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_call_answered_before_the_first_poll_is_lost_defect(lab):
    # Without call-state lines the library polls AT+CLCC every 0.5 s and only takes "dialing" or
    # "alerting" as the sign that the call started; a callee (voicemail, an IVR) answering
    # before the first poll leaves dial() timing out on a call that is up and never hung up.
    emulator = lab.emulator("quectel", callee_answer_delay=0.0)
    _, modem = lab.connected(emulator=emulator)
    with pytest.raises(TimeoutException):
        modem.dial(PATIENT, timeout=1)
    assert [c["state"] for c in emulator.calls] == [0]  # 0 = active
    # Its polling thread gives up a moment later, with the same exception, in the background.
    assert wait_for(lambda: not any("_pollCallStatus" in t.name for t in threading.enumerate()))


# -------------------------------------------------------------------------- SMS in


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_incoming_sms_reaches_the_library(lab, profile):
    received, on_sms = collector()
    emulator, modem = lab.connected(profile, smsReceivedCallbackFunc=on_sms)
    emulator.deliver_sms(PATIENT, "Dzień dobry, potwierdzam wizytę.")

    sms = received.get(timeout=3)
    assert (sms.number, sms.text) == (PATIENT, "Dzień dobry, potwierdzam wizytę.")
    assert wait_for(lambda: emulator.stored_sms("ME") == {})  # deleted after the callback


def test_multipart_sms_arrives_unjoined_defect(lab):
    received, on_sms = collector()
    emulator, modem = lab.connected("huawei", smsReceivedCallbackFunc=on_sms)
    text = ("Proszę o przełożenie wizyty na przyszły tydzień. " * 3)[:130]
    emulator.deliver_sms(PATIENT, text, parts=2)

    parts = sorted((received.get(timeout=3) for _ in range(2)), key=lambda s: s.udh[0].number)
    assert [p.text for p in parts] == [text[:65], text[65:]]
    assert all(isinstance(p.udh[0], Concatenation) and p.udh[0].parts == 2 for p in parts)


def test_two_sms_notices_in_one_read_lose_the_second_defect(lab):
    received, on_sms = collector()
    emulator, modem = lab.connected("simcom", smsReceivedCallbackFunc=on_sms)
    emulator.deliver_sms(PATIENT, "Część pierwsza i część druga", parts=2, notify_together=True)

    received.get(timeout=3)
    with pytest.raises(queue.Empty):
        received.get(timeout=0.5)
    assert len(emulator.stored_sms("ME")) == 1  # still on the modem, never read


def test_emoji_arrives_as_surrogate_pairs_defect(lab):
    received, on_sms = collector()
    emulator, modem = lab.connected("quectel", smsReceivedCallbackFunc=on_sms)
    emulator.deliver_sms(PATIENT, "Dziękuję 😀")
    assert received.get(timeout=3).text == "Dziękuję \ud83d\ude00"


# -------------------------------------------------------------------------- faults


def test_no_reply_times_out_then_recovers(lab):
    emulator, modem = lab.connected("huawei")
    emulator.fault("no_reply")
    with pytest.raises(TimeoutException):
        modem.write("AT", timeout=0.3)
    emulator.clear_faults()
    assert modem.write("AT") == ["OK"]


def test_late_reply_lands_on_the_next_command_defect(lab):
    emulator, modem = lab.connected("quectel")
    emulator.fault("late_reply")
    with pytest.raises(TimeoutException):
        modem.write("AT+CSQ", timeout=0.3)
    assert modem.write("AT+CGMI") == ["+CSQ: 20,99", "OK"]  # the previous command's reply
    # CGMI's own reply follows at once. A command sent straight away would take it in turn (the
    # library stays one reply behind); only after a pause does it go astray as a notification.
    time.sleep(0.2)
    assert modem.write("AT+CGMM") == ["EC25", "OK"]

    emulator.fault("late_reply")
    with pytest.raises(TimeoutException):
        modem.write("AT+CGMI", timeout=0.3)
    with pytest.raises(CommandError):  # signalStrength parses "Quectel" as a +CSQ line
        modem.signalStrength  # noqa: B018


def test_unplug_gives_serial_exception_and_replug_a_new_device(lab):
    fatal, on_fatal = collector()
    emulator, modem = lab.connected("simcom", fatalErrorCallbackFunc=on_fatal)
    old = emulator.device
    emulator.fault("unplug")

    assert isinstance(fatal.get(timeout=3), serial.SerialException)
    with pytest.raises(serial.SerialException):
        modem.write("AT")
    new = emulator.replug()
    assert new != old and emulator.stable_device
    _, again = lab.connected(emulator=emulator)
    assert again.signalStrength == 20


def test_reset_reenumerates_under_a_new_name(lab):
    emulator = lab.emulator("quectel", reset_delay=0.2)
    _, modem = lab.connected(emulator=emulator)
    old = emulator.device
    assert modem.write("AT+CFUN=1,1") == ["OK"]
    assert wait_for(lambda: emulator.replugged.is_set() and emulator.device != old)
    assert emulator.echo is True  # settings are back to power-on
    _, again = lab.connected(emulator=emulator)
    assert again.networkName == "Plus"


def test_sim_busy_is_retried_by_the_library(lab):
    emulator, modem = lab.connected("huawei")
    emulator.fault("sim_busy", times=2)
    assert modem.imsi == "260011234567890"
    assert emulator.commands.count("AT+CIMI") == 3


def test_sim_busy_for_good_blocks_the_caller_defect(lab):
    # CME 14 never reaches the caller as CmeError: write() retries it forever with a growing
    # sleep. Only parseError=False shows the modem's answer.
    emulator, modem = lab.connected("huawei")
    emulator.fault("sim_busy")
    assert modem.write("AT+CIMI", parseError=False) == ["+CME ERROR: 14"]
    result = []
    worker = threading.Thread(target=lambda: result.append(modem.imsi), daemon=True)
    worker.start()
    worker.join(1.0)
    assert worker.is_alive() and emulator.commands.count("AT+CIMI") >= 3
    emulator.clear_faults()
    worker.join(5)
    assert result == ["260011234567890"]


def test_pin_required_after_power_cut(lab):
    emulator, modem = lab.connected("simcom")
    emulator.fault("pin_required")
    with pytest.raises(PinRequiredError):
        modem.imsi  # noqa: B018
    modem.write('AT+CPIN="1234"')
    assert modem.imsi == "260011234567890"


def test_network_lost(lab):
    emulator, modem = lab.connected("huawei")
    emulator.fault("network_lost")
    assert modem.signalStrength == -1
    assert modem.networkName is None
    assert modem.write("AT+CREG?") == ["+CREG: 0,0", "OK"]
    with pytest.raises(CmsError) as caught:
        modem.sendSms(PATIENT, "Test")
    assert caught.value.code == 331
    emulator.clear_faults()
    assert modem.signalStrength == 20


def test_other_cme_errors_reach_the_caller(lab):
    emulator, modem = lab.connected("quectel")
    with pytest.raises(CmeError) as caught:
        modem.write("AT+CPIN=1234")  # the SIM is not asking for a PIN
    assert caught.value.code == 3


def test_verbose_errors_are_not_seen_as_a_final_result_defect(lab):
    emulator, modem = lab.connected("simcom")
    modem.write("AT+CMEE=2")
    with pytest.raises(TimeoutException) as caught:
        modem.write("AT+CPIN=1234", timeout=0.3)
    assert caught.value.data == ["+CME ERROR: operation not allowed"]


def test_urc_during_a_command_is_taken_as_its_reply_defect(lab):
    emulator, modem = lab.connected("huawei")
    emulator.unsolicited("^RSSI:17", with_next_reply=True)  # Huawei reports these unasked
    with pytest.raises(CommandError):
        modem.signalStrength  # noqa: B018
    assert modem.signalStrength == 20


def test_cli_prints_the_device_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.testing.modem", "--profile", "quectel"], stdout=subprocess.PIPE, text=True
    )
    try:
        device = proc.stdout.readline().strip()
        voice = proc.stdout.readline().strip()
        assert device.endswith("ttyUSB2") and voice.endswith("ttyUSB1")
        with serial.Serial(device, 115200, timeout=2) as port:
            port.write(b"ATE0\r")
            assert b"OK" in port.read_until(b"OK\r\n")
            port.write(b"AT+CGMM\r")
            assert b"EC25" in port.read_until(b"OK\r\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
