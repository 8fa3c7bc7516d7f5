"""The SIP edges of the box, driven by SIPp (tests/sipp/*.xml) and by hand-made datagrams.

Each test checks what a caller, a provider or an admin would notice: the SIP answers the box
gives, the call and journey it stores, its log and status, and that a normal call still gets
through afterwards. The box is the real process (tests/sipkit.py ``Box``) running the demo
flow, with the ``staff`` phone process answering as operator / rejestracja / poradnia / 555.

Three box bugs these tests found (a CANCEL logged as an internal error, refused malformed
INVITEs counted as call-limit rejections, Content-Length ignored over UDP) are fixed; their
assertions stay.
"""

from __future__ import annotations

import json
import time

import pytest


from .sippkit import RawSip, needs_sipp, run_sipp

# Skipped as a whole, before any box starts, when sipp is missing.
pytestmark = [pytest.mark.sip, needs_sipp]


# --- reading the box's records ---------------------------------------------------------------


def journey(box, call_id: int) -> list[tuple[str, str | None, dict]]:
    """(step, node, detail) for every stored step of a call, in order."""
    return [(s["step"], s["node"], json.loads(s["detail"]) if s["detail"] else {}) for s in box.journey(call_id)]


def steps(box, call_id: int) -> list[str]:
    return [s for s, _, _ in journey(box, call_id)]


def wait_all_ended(box, count: int, timeout: float = 15) -> list[dict]:
    """The box's calls once ``count`` of them exist and every one has ended."""
    deadline = time.monotonic() + timeout
    while True:
        calls = box.calls()
        if len(calls) >= count and all(c["ended_at"] for c in calls):
            return calls
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} ended calls within {timeout} s, got {calls}\n{box.log()}")
        time.sleep(0.1)


def normal_call_gets_through(box, workdir) -> dict:
    """A plain call (INVITE, 200, ACK, 0.5 s, BYE) is answered and stored; returns its row."""
    before = len(box.calls())
    run = run_sipp(box, "basic_call.xml", workdir, pause_ms=500, name="sipp-normal-call-after")
    assert run.codes("invite") == ["200"] and run.codes("bye") == ["200"], run.report()
    calls = wait_all_ended(box, before + 1)
    call = calls[-1]
    assert call["answered_at"] and call["ended_by"] == "caller", call
    return call


# --- 1. CANCEL -------------------------------------------------------------------------------


def test_cancel_right_after_invite_is_stored_as_the_callers_hang_up(box, staff, workdir):
    raw = RawSip(box)
    try:
        invite_code, cancel_code = raw.invite_then_cancel()
    finally:
        raw.close()
    call_codes = {"invite": str(invite_code), "cancel": str(cancel_code)}
    # Either ending is right: the CANCEL won (487 for the INVITE, 200 for the CANCEL) or the box's
    # immediate 200 OK won (then the caller acknowledged it and hung up with BYE).
    if invite_code == 487:
        assert cancel_code == 200, call_codes
    else:
        assert invite_code == 200 and cancel_code in (200, 481), call_codes

    [call] = wait_all_ended(box, 1)
    assert call["ended_by"] == "caller", call
    assert call["outcome"] == "caller_hangup", call
    assert call["transfers"] == 0 and not call["connected_to"], call
    if invite_code == 487:
        assert call["answered_at"] is None, call
    assert steps(box, call["id"])[-1] == "hangup"
    assert journey(box, call["id"])[-1][2] == {"by": "caller"}
    assert not staff.has("incoming"), "a cancelled call rang a staff phone"

    assert box.proc.poll() is None
    assert box.status()["legs_in_use"] == 0
    normal_call_gets_through(box, workdir)

    bogus = [s for s in steps(box, call["id"]) if s in ("error", "operator")]
    assert not bogus and "Traceback" not in box.log(), (
        f"a cancelled call was stored with steps {bogus} and the box logged:\n{box.log()}"
    )


# --- 2. BYE during the greeting --------------------------------------------------------------


def test_bye_during_the_greeting_is_stored_as_the_callers_hang_up(box, staff, workdir):
    run = run_sipp(box, "basic_call.xml", workdir, pause_ms=1000)
    assert run.codes("invite") == ["200"], run.report()
    assert run.codes("bye") == ["200"], run.report()

    [call] = wait_all_ended(box, 1)
    assert call["outcome"] == "caller_hangup", call
    assert call["ended_by"] == "caller", call
    assert call["transfers"] == 0
    trail = journey(box, call["id"])
    assert ("play", "powitanie", {"prompt": "greeting", "seconds": pytest.approx(3.1, abs=1.5)}) in trail, trail
    assert [s for s, _, _ in trail][-1] == "hangup" and trail[-1][2] == {"by": "caller"}, trail
    # One second in, the caller never got past the greeting.
    assert ("enter", "menu", {"type": "menu"}) not in trail, trail
    assert not staff.has("incoming")
    assert box.status()["calls_active"] == 0


# --- 3. hold and un-hold during the menu -----------------------------------------------------


def test_hold_and_unhold_during_the_menu_then_silence_reaches_the_operator(box, staff, workdir):
    # Greeting ~3 s + menu ~10 s + 5 s without a key + "to_operator" ~2 s: the operator rings
    # about 20 s after the answer. Hold at 5 s, un-hold at 8 s, BYE at 8 + 15 = 23 s.
    run = run_sipp(box, "hold_unhold.xml", workdir, pause_ms=15000, timeout=45)
    got = run.by_call()[1]
    assert got.get("invite") == "200", run.report()
    assert got.get("hold") == "200" and got.get("hold_dir") == "recvonly", run.report()
    assert got.get("unhold") == "200" and got.get("unhold_dir") == "sendrecv", run.report()
    assert got.get("bye") == "200", run.report()

    assert staff.wait("incoming", timeout=1)["user"] == "operator"
    [call] = wait_all_ended(box, 1)
    trail = journey(box, call["id"])
    names = [s for s, _, _ in trail]
    assert "error" not in names, trail
    assert ("no_input", "menu", {}) in trail, trail
    assert names.index("no_input") < names.index("operator") < names.index("connected"), trail
    assert [d for s, _, d in trail if s == "connected"][0]["user"] == "operator"
    assert call["outcome"] == "operator" and call["ended_by"] == "caller", call


# --- 4. any user, OPTIONS, REGISTER ----------------------------------------------------------


def test_a_call_to_any_user_enters_the_demo_flow(box, workdir):
    run = run_sipp(box, "basic_call.xml", workdir, service="nobody-xyz", pause_ms=1500)
    assert run.codes("invite") == ["200"] and run.codes("bye") == ["200"], run.report()
    [call] = wait_all_ended(box, 1)
    assert call["dialled"] == "nobody-xyz", call
    trail = journey(box, call["id"])
    assert [s for s, _, _ in trail][:3] == ["answered", "enter", "play"], trail
    assert trail[1][1] == "powitanie" and trail[2][2]["prompt"] == "greeting", trail
    assert "nobody-xyz" in trail[0][2]["to"]


def test_options_is_answered_and_register_is_not_accepted(box, workdir):
    run = run_sipp(box, "options.xml", workdir)
    assert run.codes("options") == ["200"], run.report()

    # pjsua alone drops a REGISTER without any answer (ARCHITECTURE.md: the box is a user agent;
    # Kamailio is the registrar); the box's last-word module answers 405 with Allow, so no phone
    # believes it is registered with the box and none keeps retrying into silence.
    run = run_sipp(box, "register.xml", workdir, service="201")
    [answer] = run.codes("register")
    assert answer == "405", run.report()
    assert box.calls() == [], box.calls()
    assert box.proc.poll() is None


# --- 5. malformed requests -------------------------------------------------------------------


def test_malformed_invites_get_400_or_no_answer_and_leave_no_calls(box, workdir):
    hits_before = box.status()["limit_hits"]
    raw = RawSip(box)
    try:
        cases = {
            "no Call-ID": raw.invite(call_id=None),
            "To without a URI": raw.invite(to="To: "),
            "To with an empty URI": raw.invite(to="To: <>"),
            "To with garbage": raw.invite(to="To: this is not an address"),
            "Content-Length not a number": raw.invite(content_length="abc"),
            "Content-Length negative": raw.invite(content_length=-5),
            "garbage SDP": raw.invite(body="this is not a session description\r\n"),
            "SDP without a media line": raw.invite(body="v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"),
        }
        replies = {name: raw.send(text, cid, wait=1.0) for name, (text, cid) in cases.items()}
    finally:
        raw.close()
    # pjsip drops what it cannot parse into a request (no Call-ID, bad To); the screen answers
    # the rest before pjsua makes a call of it: 400 for a bad Content-Length or a body that is
    # not SDP, 488 for an SDP that offers no audio stream.
    for name, reply in replies.items():
        assert reply.final_code in (None, 400, 488), f"{name}: {reply.lines}"
        assert set(reply.codes) <= {400, 488}, f"{name}: {reply.lines}"
    assert replies["garbage SDP"].final_code == 400, replies["garbage SDP"].lines
    assert replies["SDP without a media line"].final_code == 488, replies["SDP without a media line"].lines

    assert box.proc.poll() is None, box.log()
    status = box.status()
    assert status["legs_in_use"] == 0 and status["calls_active"] == 0, status
    assert not [c for c in box.calls() if c["answered_at"] or c["outcome"] != "rejected"], box.calls()

    call = normal_call_gets_through(box, workdir)
    assert box.calls()[-1]["id"] == call["id"]

    bogus = [(c["id"], c["outcome"], journey(box, c["id"])) for c in box.calls() if c["id"] != call["id"]]
    hits = box.status()["limit_hits"] - hits_before
    assert not bogus and hits == 0 and "call limit reached" not in box.log(), (
        f"refused requests left call rows {bogus}; limit_hits grew by {hits}; log:\n{box.log()[-1200:]}"
    )


def test_invite_whose_content_length_disagrees_with_the_datagram_is_refused(box, workdir):
    raw = RawSip(box)
    try:
        sdp_len = len(raw.sdp.encode())
        replies = {
            "Content-Length past the datagram": raw.send(*raw.invite(content_length=sdp_len + 100)),
            "Content-Length cutting the SDP": raw.send(*raw.invite(content_length=20)),
        }
    finally:
        raw.close()
    for name, reply in replies.items():
        assert reply.final_code is not None, f"{name}: no answer at all"
    # Whatever it answered, the box survives and a normal call still gets through.
    assert box.proc.poll() is None
    wait_all_ended(box, sum(r.final_code == 200 for r in replies.values()))
    normal_call_gets_through(box, workdir)

    # RFC 3261 §18.3: a body shorter than Content-Length is an error (400); bytes past it are
    # discarded, so a Content-Length cutting the SDP leaves an offer without audio (488).
    assert replies["Content-Length past the datagram"].final_code == 400, replies
    assert replies["Content-Length cutting the SDP"].final_code == 488, replies


# --- 6. DTMF by SIP INFO ---------------------------------------------------------------------


def test_key_0_sent_as_sip_info_reaches_the_operator(box, staff, workdir):
    run = run_sipp(box, "info_dtmf.xml", workdir, pause_ms=5000, extra=("-key", "digit", "0"))
    got = run.by_call()[1]
    assert got.get("invite") == "200" and got.get("info") == "200" and got.get("bye") == "200", run.report()

    assert staff.wait("incoming", timeout=1)["user"] == "operator"
    [call] = wait_all_ended(box, 1)
    trail = journey(box, call["id"])
    assert ("choice", "menu", {"key": "0", "to": "operator"}) in trail, trail
    assert "no_input" not in [s for s, _, _ in trail], trail
    assert call["outcome"] == "operator" and call["ended_by"] == "caller", call


# --- 7. a flood beyond the call limit --------------------------------------------------------


def test_a_flood_of_calls_beyond_the_limit_gets_486_and_the_box_keeps_working(make_box, staff, workdir):
    # The flood gate (30 new requests in 2 s from one source) is another test's subject: on a
    # build with 64 call legs this flood is 68 INVITEs from one SIPp.
    box = make_box(staff=staff, settings="flood_max_requests = 100000")
    status = box.status()
    limit, hits_before = status["call_limit"], status["limit_hits"]
    # Every limit from the build (issue 13): callers are admitted while every pool has room for
    # them and their transfer (on the wheel the 4 call legs decide: 2 callers); the flood offers
    # the build's call limit plus four.
    admitted = status["pools"]["callers_limit"]
    assert admitted <= limit // 2
    flood = limit + 4

    run = run_sipp(box, "basic_call.xml", workdir, calls=flood, limit=flood, rate=50, pause_ms=6000, timeout=40)
    per_call = run.by_call()
    codes = sorted(c.get("invite") for c in per_call.values())
    assert len(per_call) == flood, run.report()
    assert run.successful == flood and run.failed == 0, run.report()
    assert codes == ["200"] * admitted + ["486"] * (flood - admitted), run.report()
    assert run.codes("bye") == ["200"] * admitted, run.report()
    assert "Busy Here (call limit reached)" in run.messages

    calls = wait_all_ended(box, flood)
    outcomes = sorted(c["outcome"] for c in calls)
    assert outcomes == ["caller_hangup"] * admitted + ["rejected"] * (flood - admitted), calls
    for c in calls:
        if c["outcome"] == "rejected":
            assert c["ended_by"] == "box" and c["answered_at"] is None, c
            assert journey(box, c["id"])[0][:1] == ("rejected",)
            assert journey(box, c["id"])[0][2]["code"] == 486
    assert "call limit reached" in box.log()
    assert box.status()["limit_hits"] - hits_before == flood - admitted
    # Each caller turned away is a missed call the staff see (R13), marked as refused busy.
    refused = {c["id"] for c in calls if c["outcome"] == "rejected"}
    missed = [m for m in box.db()["missed_calls"].rows if m["call_id"] in refused]
    assert len(missed) == flood - admitted and {m["gave_up"] for m in missed} == {"busy"}

    # The flood is over: the box has every leg back and answers the next caller.
    assert box.status()["legs_in_use"] == 0
    normal_call_gets_through(box, workdir)
