"""Time-dependent rules driven by a set clock (appliance.testing.clock.ManualClock), not sleeps."""

from __future__ import annotations

import asyncio
import types

import pytest

from appliance.config import load_settings
from appliance.flow.queue import QueueManager
from appliance.flow.staff import load_staff_text
from appliance.lines import Lines
from appliance.services import Services
from appliance.store import calls as store_calls
from appliance.store import queue as store_queue
from appliance.store.db import open_db
from appliance.testing.clock import ManualClock
from appliance.tollguard import DestinationRefused

STAFF = """
[agents.anna]
name = "Anna"
phones = ["201"]

[queues.rejestracja]
name = "Rejestracja"
strategy = "ring_all"
members = ["anna"]
ring_timeout = 15
wrapup_s = 30
"""


@pytest.fixture
def settings(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[box]\ndata_dir = "{tmp_path}"\n[outbound]\nper_hour = 30\nper_number_per_hour = 2\n')
    return load_settings(cfg, env={})


def test_an_agent_is_offered_calls_again_only_after_the_wrap_up_time(settings):
    clock = ManualClock("2026-12-03T10:00:00+01:00")
    db = open_db(None)

    async def scenario():
        svc = Services(settings=settings, db=db, clock=clock)
        queues = QueueManager(svc, load_staff_text(STAFF))
        try:
            q = queues.get("rejestracja")
            call_id = store_calls.start_call(
                db, direction="in", line="sip", caller_raw="", caller="+48600123456", caller_kind="e164", dialled=""
            )
            session = types.SimpleNamespace(call_id=call_id)
            entry = queues.join(q, session)
            agent = queues.agents["anna"]
            agent.busy, agent.call_started = True, clock.time()
            q.waiting.remove(entry)
            clock.advance(12)
            queues.answered(entry, agent)
            clock.advance(90)
            queues.call_ended(entry, agent, talk_s=90)
            seen = [queues.status()["agents"]["anna"]["available"]]
            clock.advance(29.9)
            seen.append(queues.status()["agents"]["anna"]["available"])
            clock.advance(0.2)
            seen.append(queues.status()["agents"]["anna"]["available"])
            return seen, store_queue.waits(db)
        finally:
            await queues.stop()

    seen, rows = asyncio.run(scenario())
    assert seen == [False, False, True]
    (row,) = rows
    # What the admin's report will show: the times the clock said, not the machine's.
    assert row["joined_at"] == "2026-12-03T09:00:00.000+00:00"
    assert row["answered_at"] == "2026-12-03T09:00:12.000+00:00"
    assert row["left_at"] == "2026-12-03T09:01:42.000+00:00"
    assert (row["wait_s"], row["handle_s"]) == (12.0, 120.0)  # talk 90 s + wrap-up 30 s


def test_the_hourly_outbound_cap_counts_only_the_last_hour(settings):
    clock = ManualClock("2026-12-03T10:00:00+01:00")
    db = open_db(None)
    lines = Lines(db, settings, clock=clock)

    async def dial_twice_then_once_more():
        async def dialer(e164):
            return types.SimpleNamespace(sip_call_id="x")

        lines.set_dialer("trunk", dialer)
        lines.update("trunk", "up", "test")
        for _ in range(2):
            await lines.dial("+48600123456", "test")
            clock.advance(60)
        with pytest.raises(DestinationRefused):
            await lines.dial("+48600123456", "test")
        clock.advance(3600 - 119)  # the first attempt is now just over an hour old
        await lines.dial("+48600123456", "test")

    asyncio.run(dial_twice_then_once_more())
    rows = list(db["outbound_calls"].rows)
    assert [r["at"] for r in rows] == [
        "2026-12-03T09:00:00.000+00:00",
        "2026-12-03T09:01:00.000+00:00",
        "2026-12-03T10:00:01.000+00:00",
    ]


def test_a_line_reports_since_when_by_the_clock(settings):
    clock = ManualClock(1_800_000_000)
    lines = Lines(open_db(None), settings, clock=clock)
    clock.advance(5)
    lines.update("trunk", "down", "registration failed: 408")
    assert lines.snapshot()["trunk"]["since"] == 1_800_000_005


def test_after_a_restart_only_alarms_of_the_last_hour_are_texted_and_each_once(tmp_path):
    from appliance.alarms import raise_alarm
    from appliance.gsm.outbox import list_outbox
    from appliance.messages import msg
    from appliance.notify.worker import AlarmTexter

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[box]\ndata_dir = "{tmp_path}"\n[alarms]\nsms_to = ["+48600123456"]\n')
    settings = load_settings(cfg, env={})
    clock = ManualClock("2026-12-03T08:00:00+01:00")
    db = open_db(None)
    gone = msg("modem.gone")
    raise_alarm(db, "modem_gone", "gsm", gone, severity="critical", at=clock.stamp())
    clock.advance(2 * 3600 - 30 * 60)  # 09:30
    raise_alarm(db, "modem_gone", "gsm", gone, severity="critical", at=clock.stamp())
    raise_alarm(db, "line_up", "trunk", msg("line.state.up", line=msg("line.trunk")), severity="info", at=clock.stamp())
    clock.advance(30 * 60)  # 10:00: the box restarts

    texter = AlarmTexter(settings, clock)
    texter.start_from(db)
    assert texter.run_once(db) == 1  # the critical alarm of the last hour (info is not for SMS)
    texter.start_from(db)  # another restart at once: the same alarms are looked at again
    texter.run_once(db)
    sent = list_outbox(db)
    assert [(s["number"], s["kind"]) for s in sent] == [("+48600123456", "alarm")]  # #2 only, once
    assert sent[0]["text"].startswith("Centralka: Modem GSM przestał odpowiadać")
