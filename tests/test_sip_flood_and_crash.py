"""The edge of the core's SIP port under pressure (issue 9): a flood of INVITEs from one address
is cut off without starving the call in progress, and a core that dies leaves no Kamailio behind
— the next start has its ports and answers calls."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from .sipkit import Phone, free_port, wait_for
from .sippkit import RawSip, needs_sipp
from .test_sip_torture import caller_reaches_a_human, key_0_reaches_the_operator, no_leftover_legs

pytestmark = [pytest.mark.sip, needs_sipp]

FLOOD = 300
LIMIT = 20


def test_a_flood_from_one_address_is_cut_off_and_the_call_in_progress_goes_on(make_box, staff, workdir):
    box = make_box(staff=staff, settings=f"flood_max_requests = {LIMIT}\nflood_window_s = 2\nflood_ban_s = 60")
    caller = Phone(workdir, "patient", answer_after=-1)
    # 127.0.0.2 is another host to the box: the flood's ban must not touch the patient on .1.
    flooder = RawSip(box, source="127.0.0.2")
    try:
        caller.call(box.uri("600123456"))
        caller.wait("confirmed", timeout=15)
        requests = {}
        for i in range(FLOOD):
            text, cid = flooder.invite(user=f"4822{i:07d}")
            requests[f"flood-{i}"] = (text, cid)
        started = time.monotonic()
        replies = flooder.burst(requests, wait=4)
        answered = [n for n, r in replies.items() if r.lines]
        # The patient's call is still up and still served: a key takes them to the operator.
        assert not caller.has("disconnected"), "the call in progress was dropped by the flood"
        key_0_reaches_the_operator(caller, staff)
    finally:
        flooder.close()
        caller.stop()
    # Every request up to the limit was handled; the rest went unanswered (nothing to learn).
    assert 1 <= len(answered) <= LIMIT, f"{len(answered)} of {FLOOD} flood requests were answered"
    assert time.monotonic() - started < 30
    status = box.status()
    assert status["sip_guard"]["banned"] == ["127.0.0.2"], status["sip_guard"]
    # (The kernel drops part of a burst this fast before the box reads it: counted is what arrived.)
    assert status["sip_guard"]["dropped_flood"] > 0, status["sip_guard"]
    assert f"banned 127.0.0.2 for 60 s: more than {LIMIT} new requests in 2 s" in box.log()
    # Still banned: a new request from .2 gets nothing, while .1 is served.
    again = RawSip(box, source="127.0.0.2")
    try:
        assert again.send(*again.invite(), wait=1.0).lines == []
    finally:
        again.close()
    no_leftover_legs(box)
    caller_reaches_a_human(box, staff, workdir)


def test_the_allow_list_ignores_strangers_and_serves_the_listed_network(make_box, staff, workdir):
    box = make_box(staff=staff, settings='allow_from = ["127.0.0.1/32"]')
    stranger = RawSip(box, source="127.0.0.3")
    try:
        assert stranger.send(*stranger.invite(), wait=1.5).lines == [], "a stranger got an answer"
    finally:
        stranger.close()
    assert box.calls() == []
    assert "dropped INVITE from 127.0.0.3" in box.log() and "not in [sip] allow_from" in box.log()
    caller_reaches_a_human(box, staff, workdir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is installed by make test")
def test_a_core_killed_by_sigabrt_takes_kamailio_with_it_and_the_next_start_answers(make_box, staff, workdir):
    kport = free_port()
    box = make_box(staff=staff, settings=f"\n[kamailio]\nenabled = true\nport = {kport}\n")
    assert box.status()["desk_phones"]["running"]
    pid_file = box.dir / "data" / "kamailio" / "run" / "kamailio.pid"
    kamailio_pid = int(pid_file.read_text().strip())
    assert _pid_alive(kamailio_pid)

    os.kill(box.proc.pid, signal.SIGABRT)
    assert box.proc.wait(15) == -signal.SIGABRT
    wait_for(lambda: not _pid_alive(kamailio_pid), 10, "Kamailio gone with the core")
    wait_for(lambda: _udp_port_free(kport) and _udp_port_free(box.port), 10, "the core's ports free")

    # What systemd does (Restart=always): start it again, on the same ports and data.
    box.restart()
    status = box.status()
    assert status["desk_phones"]["running"], status
    assert int(pid_file.read_text().strip()) != kamailio_pid
    raw = RawSip(box)
    try:
        reply = raw.send(*raw.invite(), wait=4, stop_at_final=True)
    finally:
        raw.close()
    assert reply.final_code == 200, reply.lines
    box.wait_call_ended()
    caller_reaches_a_human(box, staff, workdir)


def test_a_stranger_who_never_acknowledges_cannot_take_every_line(make_box, staff, workdir):
    """INVITEs whose 200 OK is never acknowledged each hold a call leg for half a minute; on the
    wheel's 4 legs two would keep the clinic's line busy. From one address, only one such call
    at a time: the next is refused, and a patient from elsewhere still gets through."""
    box = make_box(staff=staff)
    ghost = RawSip(box, source="127.0.0.2")
    try:
        text, cid = ghost.invite()
        ghost.sock.sendto(text.encode(), ("127.0.0.1", box.port))
        first = next(m for m in ghost._responses(cid, 5) if not m.startswith("SIP/2.0 1"))
        assert first.startswith("SIP/2.0 200"), first  # answered; the ghost never sends its ACK
        wait_for(lambda: box.status()["legs"] and box.status()["legs"][0]["age_s"] > 2.5, 10, "an overdue ACK")
        text, cid = ghost.invite()
        ghost.sock.sendto(text.encode(), ("127.0.0.1", box.port))
        second = next(m for m in ghost._responses(cid, 5) if not m.startswith("SIP/2.0 1"))
        assert second.startswith("SIP/2.0 486 Busy Here (unacknowledged call from this address)"), second
        [leg] = box.status()["legs"]
        assert leg["source"].startswith("127.0.0.2:") and leg["state"] == "setting up", leg
        caller_reaches_a_human(box, staff, workdir)
    finally:
        ghost.close()
    assert "already has a call that was never acknowledged" in box.log()
