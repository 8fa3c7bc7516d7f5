"""The queue with real desk phones: Kamailio registers two pjsua2 phones as agents, callers wait
with hold music and announcements, and the tests check which phone rings, what the caller
hears and what the box stores.
"""

import json
import shutil
import subprocess
import sys
import time

import pytest

from appliance.flow.announce import position_announcement
from appliance.flow.queue import AgentState, QueueManager
from appliance.flow.staff import Agent, load_staff_text
from appliance.media.prompts import PromptLibrary

from .audio import find_occurrences, longest_silence
from .sipkit import ROOT, Phone, free_port
from .test_desk_phones import add_phone

pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is installed by make test")

QUEUE_FLOW = """
name = "kolejka"
start = "powitanie"
operator = "operator"

[prompts]
greeting = "Dzień dobry."
menu = "Rejestracja, jeden."

[nodes.powitanie]
type = "play"
prompt = "greeting"
next = "menu"

[nodes.menu]
type = "menu"
prompt = "menu"
timeout = 5
[nodes.menu.options]
"1" = "rejestracja"

[nodes.rejestracja]
type = "queue"
queue = "rejestracja"
max_wait = {max_wait}
announce_every = 10
leave_key = "*"

[nodes.operator]
type = "operator"
target = "sip:operator@127.0.0.1:{staff_port}"
ring_timeout = 25
"""

STAFF = """
[agents.anna]
name = "Anna"
phones = ["201"]

[agents.basia]
name = "Basia"
phones = ["202"]

[queues.rejestracja]
strategy = "{strategy}"
members = ["anna", "basia"]
ring_timeout = {ring_timeout}
wrapup_s = {wrapup}
announce_min_gap_s = 5
"""


class Clinic:
    def __init__(
        self,
        make_box,
        staff,
        workdir,
        *,
        strategy="round_robin",
        wrapup=1,
        ring_timeout=10,
        max_wait=120,
        answer_after=(0.5, 0.5),
        settings="",
    ):
        self.kport = free_port()
        self.box = make_box(
            QUEUE_FLOW.format(max_wait=max_wait, staff_port=staff.port),
            settings=f"\n[kamailio]\nenabled = true\nport = {self.kport}\n{settings}",
        )
        self.box.kport = self.kport
        staff_file = workdir / "staff.toml"
        staff_file.write_text(STAFF.format(strategy=strategy, ring_timeout=ring_timeout, wrapup=wrapup))
        self.cli("staff", "import", str(staff_file))
        self.phones = {}
        for ext, delay in zip(("201", "202"), answer_after):
            password = add_phone(self.box, ext)
            self.phones[ext] = Phone(
                workdir,
                f"agent{ext}",
                answer_after=delay,
                user=ext,
                say={ext: f"Rejestracja, stanowisko {ext[-1]}."},
                extra=["--register", f"127.0.0.1:{self.kport}", f"--password={password}"],
            )
        for phone in self.phones.values():
            phone.wait("registration", state="registered", timeout=20)

    def cli(self, *args):
        return subprocess.run(
            [sys.executable, "-m", "appliance.cli", "--config", str(self.box.config), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout

    def queue_calls(self):
        return list(self.box.db()["queue_calls"].rows_where(order_by="id"))

    def stop(self):
        for p in self.phones.values():
            p.stop()


@pytest.fixture
def clinic(make_box, staff, workdir):
    made = []

    def make(**kw):
        c = Clinic(make_box, staff, workdir, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def call_into_queue(caller, box):
    caller.call(box.uri())
    caller.wait("confirmed")
    time.sleep(1.5)
    caller.press("1")


def answered_by(clinic, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ext, phone in clinic.phones.items():
            if phone.has("confirmed") and not getattr(phone, "_seen_confirmed", 0) == len(
                [e for e in phone.events if e["event"] == "confirmed"]
            ):
                phone._seen_confirmed = len([e for e in phone.events if e["event"] == "confirmed"])
                return ext
        time.sleep(0.1)
    raise AssertionError("no agent answered")


@pytest.mark.parametrize("strategy", ["round_robin", "longest_idle", "fewest_calls"])
def test_receptionists_take_turns_and_wrapup_is_respected(clinic, caller, workdir, strategy):
    # With two receptionists each of these strategies alternates; test_strategy_choice below
    # shows where they differ.
    c = clinic(strategy=strategy, wrapup=4)
    first = []
    for n in range(2):
        call_into_queue(caller, c.box)
        first.append(answered_by(c))
        time.sleep(1)
        caller.hangup()
        caller.wait("disconnected")
        c.box.wait_call_ended()
    assert first == ["201", "202"]  # the second call goes to the other receptionist
    rows = c.queue_calls()
    assert [r["agent"] for r in rows] == ["anna", "basia"]
    assert all(r["reason"] == "answered" and r["handle_s"] > 4 for r in rows)
    # A third call: anna's wrap-up is over; she is next again (next in turn, idle longest,
    # and of two with one call each the one whose call ended first).
    call_into_queue(caller, c.box)
    assert answered_by(c) == "201"
    caller.hangup()
    c.box.wait_call_ended()


def test_ring_all_rings_both_and_the_first_to_answer_takes_it(clinic, caller):
    c = clinic(strategy="ring_all", answer_after=(4, 0.5))
    call_into_queue(caller, c.box)
    c.phones["201"].wait("incoming", timeout=20)
    c.phones["202"].wait("incoming", timeout=20)
    assert answered_by(c) == "202"
    time.sleep(4.5)
    assert not c.phones["201"].has("confirmed")  # its ringing was cancelled when 202 answered
    caller.hangup()
    call = c.box.wait_call_ended()
    assert c.queue_calls()[-1]["agent"] == "basia"
    assert call["outcome"] == "connected"


def test_second_caller_hears_position_and_wait_and_music(clinic, caller, workdir):
    # Nobody answers for a while: both callers wait.
    c = clinic(strategy="ring_all", answer_after=(-1, -1), ring_timeout=30)
    first = Phone(workdir, "first", answer_after=-1, user="600100200")
    try:
        call_into_queue(first, c.box)
        time.sleep(2)
        call_into_queue(caller, c.box)
        time.sleep(14)
        caller.hangup()
        caller.wait("disconnected")
        first.hangup()
    finally:
        first.stop()
    calls = c.box.calls()
    second = calls[-1] if calls[-1]["caller"] == "caller" else calls[-2]
    steps = c.box.journey(second["id"])
    announce = [json.loads(s["detail"]) for s in steps if s["step"] == "announce"]
    assert announce and announce[0]["ahead"] == 1
    text = position_announcement(1, announce[0]["wait_s"], lang="pl")
    assert "jest przed Panem lub Panią jedna osoba" in text  # R10 wording, read well by espeak-ng
    spoken = PromptLibrary(c.box.dir / "data" / "prompts", rate=8000).synthesise(text, "queue_position")
    heard = find_occurrences(caller.recording(), spoken)
    # Most of it, in order (a loaded machine running the parallel suite drops a frame now and
    # then: 0.78 was seen; a caller who heard no announcement gives 0).
    assert heard and max(cov for _, cov in heard) > 0.7
    music = c.box.dir / "data" / "music" / "default_hold.wav"
    if not music.exists():
        music = next((c.box.dir / "data").rglob("*hold*.wav"))
    assert any(cov > 0 for _, cov in find_occurrences(caller.recording(), music))
    assert longest_silence(caller.recording()) < 15
    # The first caller is next and is told so (R8 holds for every caller), with the wait.
    first_said = [json.loads(s["detail"]) for s in c.box.journey(calls[0]["id"]) if s["step"] == "announce"]
    # (the desks ring for them all along: the position is said, no whole call's wait)
    assert first_said and first_said[0]["ahead"] == 0 and first_said[0]["wait_s"] is None
    told = position_announcement(0, first_said[0]["wait_s"], lang="pl")
    assert "pierwszą osobą w kolejce" in told
    spoken_first = PromptLibrary(c.box.dir / "data" / "prompts", rate=8000).synthesise(told, "queue_position")
    assert max((cov for _, cov in find_occurrences(first.recording(), spoken_first)), default=0) > 0.7
    assert {r["reason"] for r in c.queue_calls()} == {"caller_hangup"}


def test_all_agents_paused_goes_to_the_operator(clinic, staff, caller):
    c = clinic()
    c.cli("pause", "anna")
    c.cli("pause", "basia")
    call_into_queue(caller, c.box)
    assert staff.wait("incoming", timeout=20)["user"] == "operator"
    assert not c.phones["201"].has("incoming") and not c.phones["202"].has("incoming")
    caller.hangup()
    c.box.wait_call_ended()
    assert c.queue_calls()[-1]["reason"] == "no_agents"
    assert c.box.status()["queues"]["agents"]["anna"]["paused"] is True


def test_leaving_by_key_and_max_wait_go_to_the_operator(clinic, staff, caller):
    c = clinic(answer_after=(-1, -1), max_wait=8, ring_timeout=30)
    call_into_queue(caller, c.box)
    time.sleep(3)
    caller.press("*")
    assert staff.wait("incoming", timeout=20)["user"] == "operator"
    caller.hangup()
    caller.wait("disconnected")
    c.box.wait_call_ended()
    call_into_queue(caller, c.box)
    assert staff.wait("incoming", timeout=30)["user"] == "operator"
    caller.hangup()
    c.box.wait_call_ended()
    assert [r["reason"] for r in c.queue_calls()] == ["left_by_key", "timeout"]
    assert c.queue_calls()[1]["wait_s"] >= 8


@pytest.mark.parametrize(
    "strategy, expect",
    [("longest_idle", "basia"), ("fewest_calls", "anna"), ("ring_all", "anna,basia"), ("round_robin", "anna")],
)
def test_strategy_choice(strategy, expect):
    staff = load_staff_text(STAFF.format(strategy=strategy, ring_timeout=10, wrapup=0))

    qm = QueueManager.__new__(QueueManager)
    qm.agents = {
        "anna": AgentState(Agent("anna", "Anna", ("201",)), last_call_end=100.0, calls_today=1),
        "basia": AgentState(Agent("basia", "Basia", ("202",)), last_call_end=50.0, calls_today=3),
    }
    q = type("Q", (), {"cfg": staff.queues["rejestracja"], "last_rung": None})()
    chosen = qm._choose(q, list(qm.agents.values()))
    assert ",".join(a.agent.id for a in chosen) == expect


def test_wrapup_keeps_the_next_call_away_from_the_agent(clinic, caller):
    c = clinic(strategy="round_robin", wrapup=6)
    c.cli("pause", "basia")
    call_into_queue(caller, c.box)
    assert answered_by(c) == "201"
    caller.hangup()
    caller.wait("disconnected")
    first = c.box.wait_call_ended()
    call_into_queue(caller, c.box)
    assert answered_by(c) == "201"
    caller.hangup()
    second = c.box.wait_call_ended()
    rings = [s for s in c.box.journey(second["id"]) if s["step"] == "agent_ringing"]
    gap = _seconds(rings[0]["at"]) - _seconds(first["ended_at"])
    assert gap >= 5.9, f"anna was rung {gap:.1f} s after her last call; wrap-up is 6 s"


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
