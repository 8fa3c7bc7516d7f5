"""Every pool of the pjsua2 build, not only call legs (issue 13): the sizes are read or measured at
start, a caller is admitted only while each pool has room for them and their transfer, the one
turned away gets 486 (never a 500), and status names the pool that is full."""

import dataclasses
import json
import time

import pytest

from appliance.sip import limits
from appliance.sip.limits import Pools, callers_room

from .sipkit import Phone, wait_for
from .test_gsm_voice import StackThread


def test_a_raised_build_is_limited_by_its_sockets_before_its_call_legs():
    """pjproject built for 64 calls but with pjlib's 64 ioqueue handles: the 33rd call's media got
    PJ_ETOOMANY (a 500). Counted per caller with their transfer, the sockets admit 14 callers;
    image/config-site.sh 32 sizes every pool so the call legs decide (16 callers)."""
    raised = Pools(calls=64, players=64, recorders=64, conf_ports=256, ioqueue_handles=64)
    room = callers_room(raised)
    assert room["ioqueue_handles"] == 14 and min(room.values()) == 14
    sized = Pools(calls=32, players=72, recorders=36, conf_ports=180, ioqueue_handles=192)
    room = callers_room(sized)
    assert min(room.values()) == room["calls"] == 16
    # A voice message takes a recorder: a build short of them admits as many callers as could
    # each leave one (the self-test's ear kept aside).
    few_recorders = dataclasses.replace(sized, recorders=9)
    assert min(callers_room(few_recorders).values()) == callers_room(few_recorders)["recorders"] == 8


@pytest.fixture
def stack():
    st = StackThread()
    yield st
    st.close()


def test_the_pools_are_read_from_the_build_at_start(stack):
    pools = stack.stack.pools
    assert pools.calls == stack.stack.build_limit
    assert pools.ioqueue_handles >= 64 and pools.conf_ports >= 64
    # Players and recorders: counted up to what the callers the call legs admit could use, or to
    # the build's end when that comes first (then the players may be what limits the box).
    cap = limits.SHARED["players"] + pools.calls * limits.PER_CALLER["players"] + 1  # (this stack: no transfer reserve)
    assert 0 < pools.players <= cap and pools.recorders > 0
    if pools.players < cap:
        assert limits.callers_room(pools)["players"] < pools.calls


def test_a_full_pool_turns_the_next_caller_away_with_486_and_is_named(stack, workdir):
    st = stack.stack
    st.reserve_transfer_leg = True
    # As if the build had only three players: one shared, two for one caller.
    st.pools = dataclasses.replace(st.pools, players=3)
    answered = []

    def incoming(leg, account):
        answered.append(leg)
        leg.answer(200)

    st.on_incoming = incoming
    first = Phone(workdir, "first", answer_after=-1)
    second = Phone(workdir, "second", answer_after=-1)
    try:
        first.call(f"sip:clinic@127.0.0.1:{st.port}")
        first.wait("confirmed")
        second.call(f"sip:clinic@127.0.0.1:{st.port}")
        refused = second.wait("disconnected", timeout=15)
        assert (refused["code"], refused["reason"]) == (486, "Busy Here (call limit reached)")
        status = stack.call(st.pools_status)
        assert (status["full"], status["last_refused_for"], status["callers_limit"]) == ("players", "players", 1)
        assert len(answered) == 1 and st.limit_hits == 1
        first.hangup()
        first.wait("disconnected")
        wait_for(lambda: stack.call(st.pools_status)["full"] is None, 10, "room again")
        second.forget_past()
        second.call(f"sip:clinic@127.0.0.1:{st.port}")
        second.wait("confirmed")  # the pool has room again: the next caller is taken
        second.hangup()
    finally:
        first.stop()
        second.stop()
        stack.call(lambda: [leg.hangup() for leg in answered if leg.alive])


def test_a_caller_whose_prompt_finds_no_player_hears_the_hold_music_and_reaches_a_person(
    make_box, staff, caller, workdir
):
    """The players pool at its real end (every player the build has left is taken as the call
    enters the menu): the menu cannot be played, so the caller hears the shared hold music for
    its length instead of silence or a hang-up, the menu still takes their key, and the
    operator answers — the caller was never dropped (R7)."""
    from .audio import find_occurrences
    from .test_call_journey import heard, operator_answers

    box = make_box(staff=staff, fault_args=("--take-players-at", "menu"))
    caller.call(box.uri("600123456"))
    caller.wait("confirmed")
    failed = box.wait_step("play_failed", prompt="menu")
    assert json.loads(failed["detail"])["instead"] == "hold_music"
    status = box.status()["pools"]
    assert status["in_use"]["players"] >= status["limits"]["players"]  # the pool really is at its end
    time.sleep(3.0)  # three seconds of whatever the caller hears instead of the menu, recorded
    caller.press("0")  # a caller who knows the menu asks for the operator
    operator_answers(staff, caller)
    call = box.wait_call_ended()
    assert (call["outcome"], call["ended_by"]) == ("operator", "caller")
    steps = box.journey(call["id"])
    assert "error" not in [s["step"] for s in steps]
    assert {json.loads(s["detail"])["prompt"] for s in steps if s["step"] == "play_failed"} >= {"menu"}
    rec = caller.recording()
    seq = [h.name for h in heard(box, caller, workdir, "greeting", "menu", staff_users=["operator"], min_coverage=0.5)]
    assert seq == ["greeting", "staff:operator"]  # the greeting (played before), never the menu
    greeting_end = heard(box, caller, workdir, "greeting")[0].at + 2.0
    music = box.dir / "data" / "music" / "default_hold.wav"
    if not music.exists():
        music = next((box.dir / "data").rglob("*hold*.wav"))
    assert any(at >= greeting_end for at, _ in find_occurrences(rec, music)), "no hold music where the menu was"
    assert "fault: took the" in box.log()
