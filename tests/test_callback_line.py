"""The queue's line with callback requests in it (R12), on a real database and a manual clock:
the dispatcher serves requests and holding callers in the order they joined, and while callers
hold it gives callbacks no more than ``[callbacks] agent_share`` of the agents. The calls are
stood in for by recorders here (tests/test_callbacks.py makes them for real)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from appliance.config import load_settings
from appliance.flow.queue import QueueManager
from appliance.flow.staff import load_staff_text
from appliance.services import Services
from appliance.store import callbacks as store
from appliance.store.db import open_db
from appliance.testing.clock import ManualClock

STAFF = """
[agents.anna]
name = "Anna"
phones = ["201"]
[agents.basia]
name = "Basia"
phones = ["202"]
[queues.rejestracja]
name = "Rejestracja"
strategy = "longest_idle"
members = ["anna", "basia"]
callback_mode = "MODE"
"""


def request(db, number: str, place: str, mode: str = "auto") -> int:
    at = "2026-12-03T09:00:00.000+00:00"
    cb, _ = store.request(
        db, at=at, number=number, number_kind="e164", typed=False, call_id=None, topic="rejestracja",
        team="", queue="rejestracja", mode=mode, place_at=place, position=1, window_from=at,
        window_until=None, promise="", lang="pl", patient=None,
    )  # fmt: skip
    return cb


def run(tmp_path, share: float, mode: str = "auto", holding_at: str = "2026-12-03T09:00:05.000+00:00"):
    """Requests placed at :00 and :01, a caller holding since ``holding_at`` (None: nobody);
    what the dispatcher starts, in order: ("callback", id, agent) / ("caller", agent)."""
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(f'[box]\ndata_dir = "{tmp_path}"\n[callbacks]\nagent_share = {share}\n')
    db = open_db(None)
    first = request(db, "+48600000001", "2026-12-03T09:00:00.000+00:00", mode)
    second = request(db, "+48600000002", "2026-12-03T09:00:01.000+00:00", mode)
    started: list = []

    async def main():
        svc = Services(settings=load_settings(cfg, env={}), db=db, clock=ManualClock("2026-12-03T10:00:00+01:00"))
        mgr = QueueManager(svc, load_staff_text(STAFF.replace("MODE", mode)))

        async def serve(row, agent, **_):
            started.append(("callback", row["id"], agent.agent.id))
            await asyncio.Event().wait()  # on the call until the test ends

        async def ring(q, entry, agents):
            started.append(("caller", agents[0].agent.id))
            await asyncio.Event().wait()

        mgr.caller.serve = serve
        mgr._ring = ring
        q = mgr.get("rejestracja")
        if holding_at:
            q.waiting.append(
                SimpleNamespace(
                    joined_at=holding_at, number="+48600000009", session=SimpleNamespace(call_id=7),
                    ringing=False, done=False, offering=False,
                )
            )  # fmt: skip
        mgr.kick()
        for _ in range(20):
            await asyncio.sleep(0)
        await mgr.stop()

    asyncio.run(main())
    return started, first, second


def test_requests_go_at_their_place_and_within_the_agents_share(tmp_path):
    started, first, second = run(tmp_path, share=0.5)
    # The earliest request first; the second would take the other agent, but with a caller
    # holding only half the agents (one of two) may be on callbacks: the caller goes next.
    assert started == [("callback", first, "anna"), ("caller", "basia")]


def test_with_a_full_share_both_requests_go_before_the_later_caller(tmp_path):
    started, first, second = run(tmp_path, share=1.0)
    assert started == [("callback", first, "anna"), ("callback", second, "basia")]


def test_a_caller_who_joined_earlier_is_served_before_the_requests(tmp_path):
    started, first, _ = run(tmp_path, share=1.0, holding_at="2026-12-03T08:59:00.000+00:00")
    assert started == [("caller", "anna"), ("callback", first, "basia")]


def test_with_nobody_holding_the_share_does_not_hold_callbacks_back(tmp_path):
    started, first, second = run(tmp_path, share=0.0, holding_at=None)
    assert started == [("callback", first, "anna"), ("callback", second, "basia")]


def test_in_list_mode_the_box_calls_nobody_back_by_itself(tmp_path):
    started, _, _ = run(tmp_path, share=1.0, mode="list")
    assert started == [("caller", "anna")]
