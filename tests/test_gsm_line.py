"""The GSM modem as the box's second line, end to end: ``centralka run`` as its own process with
the emulated modem (appliance/testing/modem/) on ptys, driven by the unmodified
python-gsmmodem-new inside the box.

What a person notices: the SMS that leave the modem (decoded from the PDUs), that a core killed
with -9 in the middle of sending sends every message exactly once after its restart, what a
mobile caller hears and which phone rings, and that outbound calls go over GSM when the trunk
is down — with the alarm stored.
"""

import signal
import time

import pytest

from appliance.cli import main as cli_main
from appliance.testing.modem import ModemEmulator

from .sipkit import free_port, wait_for

FAST_MODEM = (
    "poll_s = 1.0\nping_timeout_s = 1.0\ndrain_s = 0.05\nprobe_s = 0.3\nreset_grace_s = 0.3\n"
    "reset_wait_s = 3.0\nclip_wait_s = 0.5\ncall_poll_s = 0.3\nprobe_slow_s = 1.0\n"
)
ZAZOLC = "Zażółć gęślą jaźń"


def modem_settings(emulator, extra: str = "") -> str:
    return (
        f'\n[modem]\ndevice = "{emulator.device},{emulator.voice_device}"\n{FAST_MODEM}'
        "\n[sms]\nretry_min_s = 1\nretry_max_s = 2\n" + extra
    )


@pytest.fixture
def emulator():
    em = ModemEmulator("huawei", callee_answer_delay=2.0)
    yield em
    em.close()


def gsm_up(box, timeout=20):
    return wait_for(lambda: (box.status().get("gsm") or {}).get("state") == "up", timeout, "GSM line up")


def test_sms_with_polish_letters_leaves_as_ucs2_pdus(make_box, staff, emulator, capsys):
    box = make_box(staff=staff, settings=modem_settings(emulator))
    gsm_up(box)
    assert cli_main(["--config", str(box.config), "sms", "send", "600 123 456", ZAZOLC]) == 0
    long_text = (
        "Dzień dobry, tu rejestracja przychodni. Oddzwonimy dziś między 12:00 a 14:00. "
        "Prosimy mieć pod ręką numer PESEL. Dziękujemy za cierpliwość!"
    )
    assert cli_main(["--config", str(box.config), "sms", "send", "+48600123457", long_text]) == 0
    wait_for(lambda: len(emulator.sent_sms) >= 4, what="both SMS sent")  # 1 + 3 parts
    first = emulator.sent_sms[0]
    assert (first["number"], first["encoding"], first["text"], first["udh"]) == ("+48600123456", "ucs2", ZAZOLC, None)
    # The user data is the UTF-16BE text itself: 17 characters, 34 octets, at the PDU's end.
    assert first["pdu_hex"].endswith("22" + ZAZOLC.encode("utf-16-be").hex().upper())
    assert first["request_status_report"]
    parts = emulator.sent_sms[1:4]
    assert [p["udh"]["seq"] for p in parts] == [1, 2, 3]
    assert len({p["udh"]["ref"] for p in parts}) == 1 and all(p["udh"]["parts"] == 3 for p in parts)
    assert "".join(p["text"] for p in parts) == long_text
    capsys.readouterr()
    wait_for(lambda: all(r["state"] == "sent" for r in box.db()["sms_outbox"].rows), what="outbox sent")
    assert cli_main(["--config", str(box.config), "sms", "list"]) == 0
    out = capsys.readouterr().out
    assert "+48600123456 sent" in out and "1×UCS-2" in out and "3×UCS-2" in out


def test_kill_9_while_sending_then_every_sms_leaves_exactly_once(make_box, staff, workdir):
    # A slow radio (1.5 s per SMS) so the kill lands while the modem holds a PDU it was handed.
    em = ModemEmulator("huawei", send_delay=1.5)
    try:
        box = make_box(staff=staff, settings=modem_settings(em))
        gsm_up(box)
        texts = [f"Przypomnienie {i}: wizyta jutro o {8 + i}:00. Prosimy o potwierdzenie." for i in range(6)]
        for i, text in enumerate(texts):
            assert cli_main(["--config", str(box.config), "sms", "send", f"60012345{i}", text]) == 0

        def handed_over():
            return sum(1 for d, _ in list(em.log) if d == "rx-pdu")

        wait_for(lambda: handed_over() >= 3, 30, "third PDU handed to the modem")
        box.proc.send_signal(signal.SIGKILL)  # the core dies between "handed over" and "+CMGS"
        box.proc.wait()
        # The network delivers what the modem sent; the modem keeps the reports (+CNMI ds=2).
        wait_for(lambda: len(em.sent_sms) >= 3, 10, "the modem finishing the PDU it held")
        for sms in list(em.sent_sms):
            em.status_report(sms["mr"])
        box.restart()
        gsm_up(box)

        def settled():
            for sms in list(em.sent_sms):
                if sms["mr"] not in reported:
                    reported.add(sms["mr"])
                    em.status_report(sms["mr"])
            rows = list(box.db()["sms_outbox"].rows)
            return len(rows) == 6 and all(r["state"] == "delivered" for r in rows)

        reported = {s["mr"] for s in em.sent_sms}
        wait_for(settled, 60, "every SMS delivered")
        sent = [s["text"] for s in em.sent_sms]
        assert sorted(sent) == sorted(texts)  # each exactly once: none lost, none twice
        # The kill did land in the window: one attempt was interrupted, and the delivery report the
        # modem kept proved that message was sent (so it was not sent again).
        interrupted = box.db().execute("SELECT count(*) FROM sms_attempts WHERE outcome = 'interrupted'").fetchone()[0]
        assert interrupted == 1
    finally:
        em.close()


def test_an_incoming_sms_in_two_parts_reaches_the_staff_mailbox(make_box, staff, emulator):
    from .test_notify_mail import MailServer

    mail = MailServer().start()
    try:
        box = make_box(
            staff=staff,
            settings=modem_settings(
                emulator,
                (
                    f'\n[mail]\nhost = "127.0.0.1"\nport = {mail.port}\nsecurity = "none"\n'
                    'from_address = "centralka@przychodnia.test"\nrecipients = ["rejestracja@przychodnia.test"]\n'
                ),
            ),
        )
        gsm_up(box)
        text = (
            "Dzień dobry, nie mogę przyjść jutro na wizytę o 9:00. Proszę o nowy termin. "
            "Pozdrawiam, Józef Żółtowski"
        )  # 105 characters: two UCS-2 parts
        emulator.deliver_sms("+48600123456", text, parts=2)
        received = wait_for(lambda: mail.received, 30, "the forwarded SMS e-mail")
        msg = received[0]
        assert msg.rcpt_tos == ["rejestracja@przychodnia.test"]
        assert "600 123 456" in msg.subject
        assert text in msg.body  # both parts joined, Polish letters intact
        row = next(box.db()["sms_incoming"].rows)
        assert (row["number"], row["text"]) == ("+48600123456", text)
    finally:
        mail.stop()


# --- GSM calls ---------------------------------------------------------------------------------------
def mobile_heard(emulator, workdir, name="mobile.wav"):
    """What the mobile caller heard (the box's audio on the modem's voice port) as a WAV file."""
    import numpy as np

    from appliance.media.prompts import write_wav_atomic

    path = workdir / name
    write_wav_atomic(path, np.frombuffer(emulator.voice_received, dtype="<i2"), 8000)
    return path


def ring_until_answered(emulator, number, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c["state"] == 0 for c in emulator.calls):
            return
        emulator.ring(number)
        for _ in range(30):  # the network repeats RING every 3 s
            if any(c["state"] == 0 for c in emulator.calls):
                return
            time.sleep(0.1)
    raise AssertionError(f"the box did not answer the GSM call: {emulator.calls}")


@pytest.mark.skipif(__import__("shutil").which("kamailio") is None, reason="kamailio is installed by make test")
def test_a_gsm_caller_hears_the_greeting_and_reaches_a_queue_agent_by_keys(make_box, staff, workdir, emulator):
    from appliance.media.prompts import PromptLibrary

    from .audio import heard_sequence, longest_silence
    from .test_queue import Clinic

    clinic = Clinic(make_box, staff, workdir, settings=modem_settings(emulator))
    try:
        box = clinic.box
        gsm_up(box)
        ring_until_answered(emulator, "600123456")  # a national caller ID, as Polish networks send it
        time.sleep(2.5)  # "Dzień dobry." and the start of the menu
        emulator.caller_presses("1")  # in-band DTMF, as a mobile phone sends it over GSM
        rang = wait_for(lambda: [p for p in clinic.phones.values() if p.has("incoming")], 30, "an agent's phone")
        agent = rang[0]
        agent.wait("confirmed", timeout=10)
        time.sleep(4)  # the agent says who they are
        emulator.hangup_remote()
        call = box.wait_call_ended(timeout=20)
        assert (call["line"], call["caller"], call["outcome"], call["ended_by"]) == (
            "gsm",
            "+48600123456",
            "connected",
            "caller",
        )
        steps = {s["step"]: s for s in box.journey(call["id"])}
        assert json_detail(steps["choice"])["key"] == "1"
        voice = PromptLibrary(workdir / "phone-cache" / "centralka-phone-prompts", rate=8000).synthesise(
            f"Rejestracja, stanowisko {agent.name[-1]}.", "say"
        )
        heard = [
            h.name
            for h in heard_sequence(
                mobile_heard(emulator, workdir),
                {"greeting": box.prompt_file("greeting"), "menu": box.prompt_file("menu"), "agent": voice},
                min_coverage=0.3,
            )
        ]
        assert heard[0] == "greeting" and heard[-1] == "agent" and "menu" in heard
        assert longest_silence(mobile_heard(emulator, workdir)) < 15
    finally:
        clinic.stop()


def json_detail(step):
    import json

    return json.loads(step["detail"] or "{}")


def test_trunk_down_an_outbound_call_goes_over_gsm_and_the_alarm_is_stored(make_box, staff, workdir, emulator, capsys):
    from .audio import heard_sequence

    dead = free_port()  # nobody listens: the trunk's registrar is unreachable (TCP: refused at once)
    box = make_box(
        staff=staff,
        settings=modem_settings(
            emulator,
            (
                f'\n[trunk]\nenabled = true\nregistrar = "sip:127.0.0.1:{dead};transport=tcp"\nusername = "clinic"\n'
                'password = "Trunk-s3cret"\nretry_min_s = 1\nretry_max_s = 2\n'
                '\n[alarms]\nsms_to = ["+48600999888"]\nsms_severities = ["warning", "critical"]\n'
            ),
        ),
    )
    gsm_up(box)
    wait_for(lambda: box.status()["lines"]["trunk"]["state"] == "down", 20, "trunk down")
    assert cli_main(["--config", str(box.config), "call", "600 123 456"]) == 0
    assert "placed over the gsm line" in capsys.readouterr().out
    assert emulator.dialled == ["+48600123456"]
    call = box.wait_call_ended(timeout=30)  # the callee answers after 2 s; the test prompt; goodbye
    assert (call["direction"], call["line"], call["outcome"]) == ("out", "gsm", "answered")
    heard = heard_sequence(mobile_heard(emulator, workdir), {"test_call": box.prompt_file("test_call")})
    assert [h.name for h in heard] == ["test_call"] and heard[0].coverage > 0.8
    alarms = [(a["kind"], a["source"]) for a in box.db()["alarms"].rows_where(order_by="id")]
    assert ("line_down", "trunk") in alarms
    rows = box.db().execute("SELECT line, outcome FROM outbound_calls ORDER BY id").fetchall()
    assert rows == [("gsm", "answered")]  # a trunk known to be down is not even tried first
    # The admin's mobile got the alarm by SMS (exactly once, though the trunk keeps failing).
    time.sleep(3)
    to_admin = wait_for(lambda: [s for s in emulator.sent_sms if s["number"] == "+48600999888"], 20, "alarm SMS")
    assert all(s["udh"]["ref"] == to_admin[0]["udh"]["ref"] for s in to_admin)  # one message (in parts)
    text = "".join(s["text"] for s in to_admin)
    assert (
        text.startswith("Centralka: Trunk SIP nie działa: rejestracja nie powiodła się: ")
        and text.count("Centralka") == 1
    )


def test_stopping_the_box_during_a_gsm_call_ends_it_cleanly(make_box, staff, emulator):
    box = make_box(staff=staff, settings=modem_settings(emulator))
    gsm_up(box)
    ring_until_answered(emulator, "600123456")
    time.sleep(2)
    emulator.caller_presses("0")  # to the operator: the GSM leg is bridged to a SIP leg
    assert staff.wait("incoming", timeout=20)["user"] == "operator"
    staff.wait("confirmed")
    time.sleep(1)
    assert box.stop() == 0
    assert "Assertion" not in box.log() and "Traceback" not in box.log()
    wait_for(lambda: not emulator.calls, 10, "the modem's call ended")


@pytest.mark.skipif(__import__("shutil").which("sipp") is None, reason="sipp is installed by make test")
def test_gsm_network_lost_an_outbound_call_goes_over_the_trunk(make_box, staff, emulator, workdir, capsys):
    from .test_outbound import Provider, trunk_settings

    provider = Provider(workdir, "provider_answers")
    try:
        box = make_box(
            staff=staff,
            settings=modem_settings(
                emulator, trunk_settings(provider.port) + '\n[outbound]\nprefer = ["gsm", "trunk"]\n'
            ),
        )
        gsm_up(box)
        wait_for(lambda: box.status()["lines"]["trunk"]["state"] == "up", 20, "trunk up")
        emulator.fault("network_lost")  # the SIM loses the network: the GSM line is no good
        wait_for(lambda: box.status()["lines"]["gsm"]["state"] != "up", 20, "GSM line not up")
        assert cli_main(["--config", str(box.config), "call", "600123456"]) == 0
        assert "placed over the trunk line" in capsys.readouterr().out
        assert provider.invites() == [f"sip:+48600123456@127.0.0.1:{provider.port}"]
        assert emulator.dialled == []
        call = box.wait_call_ended(timeout=30)
        assert (call["line"], call["outcome"]) == ("trunk", "answered")
        kinds = [(a["kind"], a["source"]) for a in box.db()["alarms"].rows_where(order_by="id")]
        assert any(source == "gsm" and kind in ("line_down", "line_degraded") for kind, source in kinds), kinds
    finally:
        provider.stop()


@pytest.mark.skipif(__import__("shutil").which("sipp") is None, reason="sipp is installed by make test")
def test_a_busy_patient_is_not_called_again_over_gsm(make_box, staff, emulator, workdir, capsys):
    from .test_outbound import Provider, trunk_settings

    provider = Provider(workdir, "provider_busy")
    try:
        box = make_box(staff=staff, settings=modem_settings(emulator, trunk_settings(provider.port)))
        gsm_up(box)
        wait_for(lambda: box.status()["lines"]["trunk"]["state"] == "up", 20, "trunk up")
        assert cli_main(["--config", str(box.config), "call", "600123456"]) != 0
        assert "486 Busy Here (not tried on another line)" in capsys.readouterr().err
        time.sleep(1)
        assert emulator.dialled == []  # ringing a busy patient again from another number: no
        assert box.status()["lines"]["trunk"]["state"] == "up"  # and the trunk is fine
        assert list(box.db()["alarms"].rows) == []
        rows = box.db().execute("SELECT line, outcome FROM outbound_calls").fetchall()
        assert rows == [("trunk", "busy")]
    finally:
        provider.stop()
