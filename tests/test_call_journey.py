"""A caller's journey through the demo flow, with real SIP phones on loopback.

Each test listens to what the caller heard (the caller phone records it) and reads the journey
the box stored.
"""

from appliance.demo import DEMO_PHONES
from appliance.media.prompts import PromptLibrary

from .audio import heard_sequence, longest_silence, first_sound


def staff_voice(workdir, user):
    return PromptLibrary(workdir / "phone-cache" / "centralka-phone-prompts", rate=8000).synthesise(
        DEMO_PHONES[user], "say")


def heard(box, caller, workdir, *names, staff_users=()):
    refs = {n: box.prompt_file(n) for n in names}
    refs.update({f"staff:{u}": staff_voice(workdir, u) for u in staff_users})
    return [h.name for h in heard_sequence(caller.recording(), refs)]


def test_key_1_reaches_registration_and_caller_hears_them(box, staff, caller, workdir):
    caller.call(box.uri("48221234567"))
    caller.wait("confirmed")
    staff_ring = None
    caller.press("1")
    staff_ring = staff.wait("incoming", timeout=20)
    assert staff_ring["user"] == "rejestracja"
    staff.wait("confirmed")
    import time
    time.sleep(3)
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
    seq = heard(box, caller, workdir, "greeting", "menu", "connecting", staff_users=["rejestracja", "operator"])
    assert seq[0] == "greeting"
    assert "staff:rejestracja" in seq and "staff:operator" not in seq
    assert first_sound(rec) < 1.0
    assert longest_silence(rec) < 15
