"""A caller's journey through the demo flow, with real SIP phones on loopback.

Each test listens to what the caller heard (the caller phone records it) and reads the journey
the box stored.
"""

import json
import time

from appliance.testing.demo import DEMO_PHONES, demo_flow_text
from appliance.media.prompts import PromptLibrary

from .audio import first_sound, heard_sequence, longest_silence
from .sipkit import Phone


def staff_voice(workdir, user):
    return PromptLibrary(workdir / "phone-cache" / "centralka-phone-prompts", rate=8000).synthesise(
        DEMO_PHONES[user], "say"
    )


def into_the_menu(box, count: int = 1):
    """Two seconds into the menu prompt (its ``count``-th playing), where a caller who knows the
    key presses it; enough of the prompt for the recording to show it was heard (and cut)."""
    box.wait_step("play", prompt="menu", count=count)
    time.sleep(2.0)


def heard(box, caller, workdir, *names, staff_users=(), min_coverage=0.7):
    """What the caller heard, in order: prompt names and ``staff:<user>`` for a staff voice."""
    refs = {n: box.prompt_file(n) for n in names}
    refs.update({f"staff:{u}": staff_voice(workdir, u) for u in staff_users})
    return heard_sequence(caller.recording(), refs, min_coverage=min_coverage)


def test_key_2_reaches_the_department_and_caller_hears_them(box, staff, caller, workdir):
    caller.call(box.uri("48221234567"))
    caller.wait("confirmed")
    into_the_menu(box)
    caller.press("2")
    assert staff.wait("incoming", timeout=20)["user"] == "poradnia"
    staff.wait("confirmed")
    staff.wait("said", timeout=20)  # the department said who they are
    caller.hangup()
    caller.wait("disconnected")
    call = box.wait_call_ended()
    assert call["outcome"] == "connected"
    assert call["ended_by"] == "caller"
    assert call["transfers"] == 1
    steps = [s["step"] for s in box.journey(call["id"])]
    assert steps[:3] == ["answered", "enter", "play"]
    assert "choice" in steps and steps[-1] == "hangup"
    rec = caller.recording()
    seq = heard(
        box, caller, workdir, "greeting", "menu", "connecting", staff_users=["poradnia", "operator"], min_coverage=0.1
    )
    assert [h.name for h in seq][:4] == ["greeting", "menu", "connecting", "staff:poradnia"]
    assert seq[0].coverage > 0.8 and seq[0].at < 1.0  # the whole greeting, starting at once (R1)
    assert seq[1].coverage < 0.5  # the menu was cut short by the key press
    assert "staff:operator" not in [h.name for h in seq]
    assert first_sound(rec) < 1.0
    assert longest_silence(rec) < 15


def operator_answers(staff, caller):
    ring = staff.wait("incoming", timeout=40)
    assert ring["user"] == "operator", f"{ring['user']} rang instead of the operator"
    staff.wait("confirmed")
    # The operator's phone has played its phrase through once; a moment more for it to arrive.
    staff.wait("said", timeout=20, user="operator")
    time.sleep(0.5)
    caller.hangup()
    caller.wait("disconnected")


def test_no_key_pressed_goes_to_operator_without_long_silence(box, staff, caller, workdir):
    caller.call(box.uri("600123456"))
    caller.wait("confirmed")
    operator_answers(staff, caller)
    call = box.wait_call_ended()
    assert call["outcome"] == "operator" and call["caller"] == "caller"
    steps = [s["step"] for s in box.journey(call["id"])]
    assert "no_input" in steps and "operator" in steps
    seq = [
        h.name
        for h in heard(box, caller, workdir, "greeting", "menu", "to_operator", staff_users=["operator", "rejestracja"])
    ]
    assert seq == ["greeting", "menu", "to_operator", "staff:operator"]
    assert longest_silence(caller.recording()) < 15  # R8


def test_wrong_keys_get_one_repeat_then_the_operator(box, staff, caller, workdir):
    caller.call(box.uri())
    caller.wait("confirmed")
    into_the_menu(box)
    caller.press("7")
    box.wait_step("invalid")
    into_the_menu(box, count=2)  # the menu again after "wrong choice"
    caller.press("8")
    operator_answers(staff, caller)
    call = box.wait_call_ended()
    invalid = [s for s in box.journey(call["id"]) if s["step"] == "invalid"]
    assert [json.loads(s["detail"])["entered"] for s in invalid] == ["7", "8"]
    # "Nie ma takiej opcji." is three 0.4 s chunks: one lost to a jitter buffer under load leaves
    # 0.67 of it, still far above what another prompt scores (about 0.1).
    names = [
        h.name
        for h in heard(
            box, caller, workdir, "invalid_choice", "to_operator", staff_users=["operator"], min_coverage=0.5
        )
    ]
    assert names == ["invalid_choice", "to_operator", "staff:operator"]


def test_post_dial_digits_during_greeting_reach_extension_555(box, staff, caller, workdir):
    # tel:+48221234567,555 — the phone sends 555 as soon as the call is answered.
    caller.call(box.uri("48221234567"))
    caller.wait("confirmed")
    caller.press("555")
    ring = staff.wait("incoming", timeout=20)
    assert ring["user"] == "555"
    staff.wait("confirmed")
    staff.wait("said", timeout=20)
    caller.hangup()
    caller.wait("disconnected")
    call = box.wait_call_ended()
    ext = [s for s in box.journey(call["id"]) if s["step"] == "extension"]
    assert ext and json.loads(ext[0]["detail"]) == {"number": "555", "to": "gabinet_555"}
    seq = heard(box, caller, workdir, "greeting", "menu", staff_users=["555"], min_coverage=0.1)
    assert "menu" not in [h.name for h in seq]  # digits typed early skip the menu prompt
    assert [h.name for h in seq][-1] == "staff:555"


def test_dtmf_by_sip_info_is_understood(box, staff, caller):
    caller.call(box.uri())
    caller.wait("confirmed")
    into_the_menu(box)
    caller.press("2", method="info")
    assert staff.wait("incoming", timeout=20)["user"] == "poradnia"
    caller.hangup()
    box.wait_call_ended()


def test_dead_destination_phone_ends_at_the_operator(make_box, staff, caller, workdir):
    poradnia = Phone(workdir, "poradnia", answer_after=0.5, say={"poradnia": DEMO_PHONES["poradnia"]})
    flow = demo_flow_text(f"127.0.0.1:{staff.port}").replace(
        f'target = "sip:poradnia@127.0.0.1:{staff.port}"\nprompt = "connecting"\nring_timeout = 25',
        f'target = "sip:poradnia@127.0.0.1:{poradnia.port}"\nprompt = "connecting"\nring_timeout = 6',
    )
    assert f"{poradnia.port}" in flow
    box = make_box(flow)
    poradnia.kill()  # the department's phone is unplugged
    caller.call(box.uri())
    caller.wait("confirmed")
    into_the_menu(box)
    caller.press("2")
    operator_answers(staff, caller)
    call = box.wait_call_ended()
    steps = box.journey(call["id"])
    failed = [json.loads(s["detail"]) for s in steps if s["step"] == "transfer_failed"]
    assert failed and failed[0]["target"].startswith("sip:poradnia@")
    assert call["outcome"] == "operator" and call["transfers"] == 2
    assert longest_silence(caller.recording()) < 15


def test_error_inside_the_engine_ends_at_the_operator(make_box, staff, caller, workdir):
    box = make_box(staff=staff, raise_at="menu")
    caller.call(box.uri())
    caller.wait("confirmed")
    operator_answers(staff, caller)
    call = box.wait_call_ended()
    steps = box.journey(call["id"])
    errors = [json.loads(s["detail"]) for s in steps if s["step"] == "error"]
    assert errors and "injected fault at node menu" in errors[0]["error"]
    assert [s["step"] for s in steps if s["step"] == "operator"]
    assert "InjectedFault" in box.log()


def test_caller_hanging_up_during_greeting_is_stored(box, workdir):
    patient = Phone(workdir, "patient", answer_after=-1, user="600123456")
    try:
        patient.call(box.uri("48221234567"))
        patient.wait("confirmed")
        time.sleep(1)
        patient.hangup()
        patient.wait("disconnected")
    finally:
        patient.stop()
    call = box.wait_call_ended()
    assert (call["outcome"], call["ended_by"]) == ("caller_hangup", "caller")
    assert (call["caller"], call["caller_kind"]) == ("+48600123456", "e164")  # national ID -> E.164
    assert call["dialled"] == "48221234567"
    last = box.journey(call["id"])[-1]
    assert last["step"] == "hangup" and json.loads(last["detail"]) == {"by": "caller"}
