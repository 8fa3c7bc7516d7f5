"""Nobody forgotten (issue 11), end to end with real peers: the box as its own process, pjsua2
phones (the caller, the receptionists' desk phones registered at Kamailio), the emulated GSM
modem the confirming SMS leaves through, and a real SMTP server the team's e-mail reaches.

What a person notices: the promise the caller hears, the SMS PDU that left the modem, the
e-mail the team gets, the line on `centralka callbacks`, the closed message on a holiday.
"""

import json
import shutil
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from appliance.flow.model import load_flow_file
from appliance.flow.promise import closed_message, promise_for
from appliance.media.prompts import PromptLibrary
from appliance.messages import msg
from appliance.testing.demo import demo_staff_text
from appliance.testing.modem import ModemEmulator

from .audio import find_occurrences
from .sipkit import ROOT, Phone, free_port, wait_for
from .test_desk_phones import add_phone
from .test_gsm_line import gsm_up, modem_settings
from .test_notify_mail import MailServer

pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is installed by make test")

TEAM = "rejestracja@przychodnia.test"
ADMIN = "admin@przychodnia.test"


def mail_settings(server) -> str:
    return (
        f'\n[mail]\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\n'
        f'from_address = "centralka@przychodnia.test"\nrecipients = ["{ADMIN}"]\n'
        f'teams = {{ rejestracja = ["{TEAM}"] }}\nretry_min_s = 1\n'
    )


def cli(box, *args) -> str:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "--config", str(box.config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout


def hear_out(box, prompt: str, timeout: float = 30):
    """Wait until the box has played ``prompt`` to its end (its journey step says how long)."""
    import time

    from appliance.clock import parse_stamp

    # What the box says to the people it calls back is on its own outbound call.
    direction = "out" if prompt in ("callback_whisper", "callback_patient") else "in"
    row = box.wait_step("play", prompt=prompt, timeout=timeout, direction=direction)
    ends = parse_stamp(row["at"]) + json.loads(row["detail"])["seconds"] + 0.3
    time.sleep(max(0.0, ends - box.now()))


def heard(phone, box, text, name, n: int = 1) -> float:
    """How much of the spoken ``text`` the phone's ``n``-th call's recording holds (0..1)."""
    spoken = PromptLibrary(box.dir / "data" / "prompts", rate=8000).synthesise(text, name)
    found = find_occurrences(phone.recording(n), spoken)
    return max((cov for _, cov in found), default=0.0)


@pytest.fixture
def emulator():
    em = ModemEmulator("huawei", callee_answer_delay=2.0)
    yield em
    em.close()


@pytest.fixture
def mailbox():
    server = MailServer().start()
    yield server
    server.stop()


def clinic_box(make_box, staff, workdir, emulator, mailbox, mode: str = "auto"):
    """The demo's flow and staff (the registration queue in callback ``mode``), Kamailio for the
    desk phones, the emulated modem and the team's mailbox; ``(box, Kamailio's port)``."""
    kport = free_port()
    box = make_box(
        staff=staff,
        settings=(
            f"\n[kamailio]\nenabled = true\nport = {kport}\n" + modem_settings(emulator) + mail_settings(mailbox)
        ),
    )
    staff_file = workdir / "staff.toml"
    staff_file.write_text(demo_staff_text().replace('callback_mode = "auto"', f'callback_mode = "{mode}"'))
    cli(box, "staff", "import", str(staff_file))
    return box, kport


def desk_phone(box, workdir, kport, ext: str, name: str, answer_after: float):
    password = add_phone(box, ext)
    return Phone(
        workdir,
        name,
        answer_after=answer_after,
        user=ext,
        extra=["--register", f"127.0.0.1:{kport}", f"--password={password}"],
    )


@pytest.fixture
def demo_clinic(make_box, staff, workdir, emulator, mailbox):
    """The demo clinic with two desk phones that ring and never answer."""
    box, kport = clinic_box(make_box, staff, workdir, emulator, mailbox)
    desks = [desk_phone(box, workdir, kport, ext, f"agent{ext}", -1) for ext in ("201", "202")]
    for desk in desks:
        desk.wait("registration", state="registered", timeout=20)
    gsm_up(box)
    yield box
    for desk in desks:
        desk.stop()


def test_a_caller_in_the_queue_presses_1_1_1_and_is_promised_a_callback_by_sms_and_email(
    demo_clinic, workdir, emulator, mailbox
):
    box = demo_clinic
    patient = Phone(workdir, "patient", answer_after=-1, user="600123456")
    try:
        to_the_menu(patient, box)
        patient.press("1")  # registration: the queue
        box.wait_step("enter", type="queue", direction="in")
        patient.press("1")  # a callback, please
        hear_out(box, "callback_offer")
        patient.press("1")  # confirmed
        requested = json.loads(box.wait_step("callback_requested", direction="in")["detail"])
        patient.wait("disconnected", timeout=30)  # the box said goodbye and hung up (R7 b)
    finally:
        patient.stop()
    call = box.wait_call_ended(direction="in")
    assert (call["outcome"], call["ended_by"]) == ("callback", "box")
    assert requested["number"] == "+48600123456" and requested["topic"] == "rejestracja"

    # What the caller heard: the concrete promise and the confirmation.
    schedule = load_flow_file(box.dir / "flow.toml").schedule("demo")
    promise = promise_for(schedule, datetime.now(ZoneInfo("Europe/Warsaw")))
    offer = msg("callback.offer", promise=promise.spoken(), key="1").text("pl")
    assert heard(patient, box, offer, "offer") > 0.7
    confirmed = " ".join(
        m.text("pl")
        for m in (
            msg("callback.confirmed", promise=promise.spoken()),
            msg("callback.sms_follows"),
            msg("callback.goodbye"),
        )
    )
    assert heard(patient, box, confirmed, "confirmed") > 0.7

    # The SMS that left the modem: to the caller, the promise in it, in Polish (UCS-2).
    [sms] = wait_for(lambda: list(emulator.sent_sms), 30, "the confirming SMS")
    assert (sms["number"], sms["encoding"], sms["udh"]) == ("+48600123456", "ucs2", None)  # one SMS, not two
    assert sms["text"] == f"Przychodnia: oddzwonimy {promise.text()}. Nie trzeba dzwonić ponownie."

    # The team's e-mail: who called, about what, the promise, how to close it.
    received = wait_for(lambda: [m for m in mailbox.received if TEAM in m.rcpt_tos], 30, "the team's e-mail")
    mail = received[0]
    assert mail.rcpt_tos == [TEAM]
    assert "600 123 456" in mail.subject and "Rejestracja" in mail.subject
    assert promise.text() in mail.body and f"centralka callbacks done {requested['callback']}" in mail.body

    # The list staff work from: one line, number, topic, state.
    listing = cli(box, "callbacks")
    [line] = [x for x in listing.splitlines() if x.startswith("c")]
    assert line.split()[0] == f"c{requested['callback']}"
    # (open, or "calling" while the box already rings a desk for it: the demo queue is auto)
    assert "600 123 456" in line and "rejestracja" in line and any(w in line.split() for w in ("open", "calling"))
    # Not a missed call: the caller asked for a callback.
    assert not any(x.startswith("m") for x in listing.splitlines())
    # A receptionist called back from her own phone and says so: off the list, the note kept.
    cli(box, "callbacks", "done", f"c{requested['callback']}", "--note", "umówiona na wtorek")
    assert not any(x.startswith("c") for x in cli(box, "callbacks").splitlines())
    assert box.db()["callbacks"].get(requested["callback"])["note"] == "umówiona na wtorek"


def test_the_same_number_asking_again_is_merged_and_texted_once(demo_clinic, workdir, emulator):
    box = demo_clinic
    patient = Phone(workdir, "patient", answer_after=-1, user="600123456")
    try:
        for n in (1, 2):
            to_the_menu(patient, box)
            patient.press("1")
            box.wait_step("enter", type="queue", direction="in")
            patient.press("1")
            box.wait_step("play", prompt="callback_offer", timeout=30, direction="in")
            patient.press("1")
            box.wait_step("callback_requested", direction="in")
            patient.wait("disconnected", timeout=30)
            box.wait_call_ended(direction="in")
            if n == 1:
                wait_for(lambda: emulator.sent_sms, 30, "the first SMS")
    finally:
        patient.stop()
    rows = list(box.db()["callbacks"].rows)
    assert len(rows) == 1 and rows[0]["requests"] == 2
    # The second caller heard that the request is already booked, and no second SMS left.
    steps = box.journey([c for c in box.calls() if c["direction"] == "in"][-1]["id"])
    assert json.loads(next(s for s in steps if s["step"] == "callback_requested")["detail"])["merged"] is True
    assert len(emulator.sent_sms) == 1


HOURS_FLOW = (ROOT / "tests" / "flows" / "hours_good.toml").read_text(encoding="utf-8")


@pytest.mark.long
def test_on_easter_monday_the_caller_hears_the_closed_message_and_can_leave_a_message(
    make_box, staff, workdir, mailbox
):
    easter_monday = "2027-03-29T10:00:00+02:00"  # computed, not written in any table of ours
    box = make_box(
        HOURS_FLOW.replace("127.0.0.1:5070", f"127.0.0.1:{staff.port}"),
        settings=mail_settings(mailbox),
        clock_at=easter_monday,
    )
    patient = Phone(workdir, "patient", answer_after=-1, user="600123456")
    try:
        patient.call(box.uri())
        patient.wait("confirmed")
        entered = json.loads(box.wait_step("enter", type="time", direction="in")["detail"])
        hear_out(box, "callback_offer", timeout=40)
        patient.press("2")  # no callback: leave a message instead
        box.wait_step("voicemail_recording", timeout=30, direction="in")
        patient.speak("Dzień dobry, proszę o receptę na leki na nadciśnienie. Dziękuję.")
        patient.press("#")
        saved = json.loads(box.wait_step("voicemail_saved", timeout=30, direction="in")["detail"])
        patient.hangup()
    finally:
        patient.stop()
    box.wait_call_ended(direction="in")
    assert entered["open"] is False
    flow = load_flow_file(box.dir / "flow.toml")
    closed = closed_message(flow.schedule("przychodnia"), datetime.fromisoformat(easter_monday))
    assert closed.startswith("Dzisiaj jest święto: Poniedziałek Wielkanocny.")
    assert "Zapraszamy jutro od ósmej." in closed
    assert heard(patient, box, closed, "closed") > 0.7
    assert saved["ended"] == "key"

    vm = next(box.db()["voicemails"].rows)
    assert vm["mime"] == "audio/mpeg" and vm["number"] == "+48600123456" and vm["seconds"] > 2
    received = wait_for(lambda: list(mailbox.received), 30, "the voice message e-mail")
    mail = received[0]
    assert "600 123 456" in mail.subject
    [attachment] = [p for p in mail.message.walk() if p.get_content_disposition() == "attachment"]
    assert attachment.get_content_type() == "audio/mpeg"
    assert attachment.get_payload(decode=True) == open(vm["path"], "rb").read()
    assert f"v{vm['id']}" in cli(box, "callbacks")


@pytest.fixture
def one_receptionist(request, make_box, staff, workdir, emulator, mailbox):
    """The demo clinic with one receptionist at work (Anna, whose phone answers) and Barbara
    away; the patients' mobiles are reached through the emulated modem (no SIP trunk)."""
    box, kport = clinic_box(make_box, staff, workdir, emulator, mailbox, getattr(request, "param", "auto"))
    cli(box, "pause", "basia")
    anna = desk_phone(box, workdir, kport, "201", "anna", 0.5)
    anna.wait("registration", state="registered", timeout=20)
    gsm_up(box)
    yield box, anna
    anna.stop()


def to_the_menu(phone, box):
    """Call the box and wait until its menu starts."""
    phone.call(box.uri())
    phone.wait("confirmed")
    box.wait_step("play", prompt="menu", direction="in")


def into_the_queue(phone, box):
    to_the_menu(phone, box)
    phone.press("1")
    return box.wait_step("enter", type="queue", direction="in")


@pytest.mark.long
def test_with_an_agent_free_the_box_calls_the_patient_back_at_their_place_in_line(one_receptionist, workdir, emulator):
    box, anna = one_receptionist
    first = Phone(workdir, "first", answer_after=-1, user="601000001")
    patient = Phone(workdir, "patient", answer_after=-1, user="600123456")
    third = Phone(workdir, "third", answer_after=-1, user="602000002")
    try:
        # Anna is talking to the first caller.
        into_the_queue(first, box)
        anna.wait("confirmed", timeout=20)
        # The patient waits behind, asks for a callback (1, 1, 1) and hangs up happy.
        into_the_queue(patient, box)
        patient.press("1")
        hear_out(box, "callback_offer")
        patient.press("1")
        requested = json.loads(box.wait_step("callback_requested", direction="in")["detail"])
        patient.wait("disconnected", timeout=30)
        # A third caller joins after them: the request stands ahead of them in the line.
        into_the_queue(third, box)
        third_call = [c for c in box.calls() if c["direction"] == "in"][-1]["id"]
        told = json.loads(box.wait_step("announce", timeout=30, direction="in")["detail"])
        assert told["ahead"] == 1

        # Anna's call ends: the box rings her for the callback, not for the third caller.
        first.hangup()
        anna.wait("incoming", timeout=30, n=2)
        whisper = json.loads(box.wait_step("callback_whisper", timeout=30, direction="out")["detail"])
        assert whisper["callback"] == requested["callback"]
        hear_out(box, "callback_whisper")
        anna.press("1")
        dialled = json.loads(box.wait_step("callback_dial", timeout=30, line="gsm", direction="out")["detail"])
        assert dialled["number"] == "+48600123456"
        hear_out(box, "callback_patient", timeout=40)
        emulator.caller_presses("1")
        connected = json.loads(box.wait_step("callback_connected", timeout=30, direction="out")["detail"])
        # Meanwhile the third caller still holds: served at their place, after the request.
        assert "queue_answered" not in [s["step"] for s in box.journey(third_call)]
        anna.hangup()
        # Then Anna (after her wrap-up) takes the third caller.
        wait_for(
            lambda: "queue_answered" in [s["step"] for s in box.journey(third_call)], 40, "the third caller answered"
        )
        third.hangup()
    finally:
        for p in (first, patient, third):
            p.stop()

    # The agent heard who was waiting and why; the patient heard the clinic and the key.
    whisper_text = whisper["text"]
    assert "Oddzwonienie: sześć zero zero, jeden dwa trzy, cztery pięć sześć, Rejestracja" in whisper_text
    assert heard(anna, box, whisper_text, "whisper", n=2) > 0.7
    from .test_gsm_line import mobile_heard

    said = msg("callback.patient", clinic="Przychodnia", key="1").text("pl")
    mobile = mobile_heard(emulator, workdir)
    spoken = PromptLibrary(box.dir / "data" / "prompts", rate=8000).synthesise(said, "patient")
    assert max((cov for _, cov in find_occurrences(mobile, spoken)), default=0) > 0.7

    row = box.db()["callbacks"].get(requested["callback"])
    assert row["state"] == "done" and row["done_by"] == "agent:anna" and row["turnaround_s"] > 0
    assert connected["turnaround_s"] == row["turnaround_s"]
    assert [a["result"] for a in box.db()["callback_attempts"].rows] == ["connected"]
    assert not any(x.startswith("c") for x in cli(box, "callbacks").splitlines())


def missed_lines(box) -> list[str]:
    return [x for x in cli(box, "callbacks").splitlines() if x.startswith("m")]


def test_a_caller_who_gave_up_stays_on_the_list_until_someone_talked_to_them(demo_clinic, workdir, emulator):
    box = demo_clinic
    patient = Phone(workdir, "patient", answer_after=-1, user="600123456")
    try:
        # Hangs up in the menu: a missed call, where and after how long.
        to_the_menu(patient, box)
        patient.hangup()
        box.wait_call_ended(direction="in")
        [line] = missed_lines(box)
        assert "600 123 456" in line and "gave up in the menu" in line
        # Calls again and reaches a person (the operator, key 0): settled.
        to_the_menu(patient, box)
        patient.press("0")
        box.wait_step("connected", timeout=30, direction="in")
        patient.hangup()
        box.wait_call_ended(direction="in")
        assert missed_lines(box) == []
        first = box.db()["missed_calls"].get(1)
        assert first["closed_by"] == "called_again"
        # Hangs up while waiting in the queue; then the clinic calls the number (over GSM).
        into_the_queue(patient, box)
        box.wait_step("agent_ringing", timeout=20, direction="in")
        patient.hangup()
        box.wait_call_ended(direction="in")
    finally:
        patient.stop()
    [line] = missed_lines(box)
    assert "gave up in the queue" in line and "rejestracja" in line
    ref = line.split()[0]
    cli(box, "call", "600123456")
    wait_for(lambda: missed_lines(box) == [], 40, "the missed call closed by the outbound call")
    assert box.db()["missed_calls"].get(int(ref[1:]))["closed_by"] == "outbound"
    assert "+48600123456" in "".join(emulator.dialled) or "600123456" in "".join(emulator.dialled)


@pytest.mark.long
@pytest.mark.parametrize("one_receptionist", ["list"], indirect=True)
def test_in_list_mode_a_receptionist_calls_back_from_the_list(one_receptionist, workdir, emulator):
    box, anna = one_receptionist
    cli(box, "pause", "anna")  # nobody at the desk: the queue sends the caller to the callback offer
    patient = Phone(workdir, "patient", answer_after=-1, user="600123456")
    try:
        to_the_menu(patient, box)
        patient.press("1")
        hear_out(box, "callback_offer", timeout=30)
        patient.press("1")
        requested = json.loads(box.wait_step("callback_requested", direction="in")["detail"])
        patient.wait("disconnected", timeout=30)
    finally:
        patient.stop()
    ref = f"c{requested['callback']}"
    assert box.db()["callbacks"].get(requested["callback"])["mode"] == "list"
    cli(box, "unpause", "anna")
    # Staff asking for what cannot be done hear why.
    bad = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "--config", str(box.config), "callbacks", "call", "c999"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "c999 is not an open callback request" in bad.stderr
    busy = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "--config",
            str(box.config),
            "callbacks",
            "call",
            ref,
            "--agent",
            "basia",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert busy.returncode != 0 and "basia is not free now" in busy.stderr
    # The box did not call by itself (list mode): the receptionist does, from the list.
    assert not anna.has("incoming")
    assert f"{ref}: ringing anna" in cli(box, "callbacks", "call", ref)
    anna.wait("incoming", timeout=20)
    hear_out(box, "callback_whisper", timeout=30)
    anna.press("1")
    hear_out(box, "callback_patient", timeout=40)
    emulator.caller_presses("1")
    box.wait_step("callback_connected", timeout=30, direction="out")
    anna.hangup()
    wait_for(lambda: box.db()["callbacks"].get(requested["callback"])["state"] == "done", 20, "the request done")
    assert box.db()["callbacks"].get(requested["callback"])["done_by"] == "agent:anna"
