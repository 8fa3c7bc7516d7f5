"""store/ for calls, queues, agents, lines and the migrations: each function on a real database."""

from __future__ import annotations

import sqlite3

from appliance.store import agents, calls, lines, outbound, queue
from appliance.store.db import migrations, open_db


def _call(db, **kw):
    fields = dict(direction="in", line="sip", caller_raw="sip:1@x", caller="+48600123456", caller_kind="e164")
    fields.update(kw)
    return calls.start_call(db, dialled="100", **fields)


def test_a_call_and_its_journey_keep_the_given_times_and_order():
    db = open_db(None)
    cid = _call(db, at="2026-12-03T10:00:00.000+00:00")
    calls.add_step(db, cid, "answered", None, {"to": "ż"}, at="2026-12-03T10:00:01.000+00:00")
    calls.add_step(db, cid, "choice", "menu", {"key": "1"})
    calls.count_transfer(db, cid)
    calls.count_transfer(db, cid)
    calls.update_call(db, cid, outcome="connected")
    row = calls.get_call(db, cid)
    assert (row["started_at"], row["transfers"], row["outcome"]) == ("2026-12-03T10:00:00.000+00:00", 2, "connected")
    steps = calls.journey(db, cid)
    assert [s["step"] for s in steps] == ["answered", "choice"]
    assert steps[0]["at"] == "2026-12-03T10:00:01.000+00:00" and steps[0]["detail"] == '{"to": "ż"}'
    assert steps[1]["at"] > steps[0]["at"]  # (now, as the store writes it)
    assert [c["id"] for c in calls.recent_calls(db)] == [cid]


def test_queue_rows_follow_a_wait_from_join_to_the_end_of_the_agents_call():
    db = open_db(None)
    cid, other = _call(db), _call(db)
    row = queue.record_join(db, cid, "rejestracja", at="T1")
    gave_up = queue.record_join(db, other, "rejestracja", at="T2")
    queue.record_answer(db, row, "ania", 12.345, at="T3")
    queue.record_end(db, row, 200.004, at="T4")
    queue.record_exit(db, gave_up, "caller_hangup", 30.0, at="T5")
    first, second = queue.waits(db, "rejestracja")
    assert (first["joined_at"], first["answered_at"], first["agent"], first["wait_s"]) == ("T1", "T3", "ania", 12.35)
    assert (first["left_at"], first["handle_s"], first["reason"]) == ("T4", 200.0, "answered")
    assert (second["left_at"], second["reason"], second["wait_s"], second["agent"]) == (
        "T5",
        "caller_hangup",
        30.0,
        None,
    )
    assert queue.waits(db, "poradnia") == []


def test_queue_stats_round_trip_and_replace():
    db = open_db(None)
    assert queue.load_stats(db, "q") is None
    queue.save_stats(db, "q", {"mean": 120.5, "count": 3})
    queue.save_stats(db, "q", {"mean": 100.0, "count": 4})
    assert queue.load_stats(db, "q") == {"mean": 100.0, "count": 4}


def test_pause_state_is_one_row_per_agent_and_survives_a_reopen(tmp_path):
    path = tmp_path / "c.db"
    db = open_db(path)
    agents.set_paused(db, "ania", True, at="T1")
    agents.set_paused(db, "ania", False, at="T2")
    agents.set_paused(db, "basia", True)
    db.conn.close()
    db = open_db(path)
    assert agents.paused_agents(db) == {"ania": False, "basia": True}
    agents.clear_states(db)
    assert agents.paused_agents(db) == {}


def test_line_events_newest_first_and_outbound_attempts_finish():
    db = open_db(None)
    lines.record_event(db, "trunk", "registered", "200 OK", at="T1")
    lines.record_event(db, "gsm", "up", "", at="T2")
    lines.record_event(db, "trunk", "failed", "408", at="T3")
    assert [e["state"] for e in lines.events(db, "trunk")] == ["failed", "registered"]
    assert len(lines.events(db)) == 3
    rid = outbound.start_attempt(db, "+48600123456", "test", "trunk", "trying", at="T4")
    outbound.finish_attempt(db, rid, "failed", "503 Service Unavailable")
    outbound.finish_attempt(db, outbound.start_attempt(db, "+48600123456", "test", None, "failed", "no line"), "failed")
    rows = list(db["outbound_calls"].rows)
    assert [(r["line"], r["outcome"], r["detail"]) for r in rows] == [
        ("trunk", "failed", "503 Service Unavailable"),
        (None, "failed", None),
    ]


def test_a_database_that_applied_the_old_second_m008_still_upgrades(tmp_path):
    """Two migrations were once both numbered m008; boxes that applied ``m008_notify`` must
    neither run it again (its table exists) nor miss anything after it."""
    path = tmp_path / "old.db"
    db = open_db(path)
    db["notify_state"].insert({"key": "since", "value": "42", "updated_at": "T"})
    db.execute("UPDATE _sqlite_migrations SET name = 'm008_notify' WHERE name = 'm009_notify'")
    db.conn.close()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT count(*) FROM _sqlite_migrations WHERE name = 'm008_notify'").fetchone() == (1,)
    raw.close()

    db = open_db(path)
    names = [m.name for m in migrations.applied(db)]
    assert names.count("m009_notify") == 1 and "m008_notify" not in names
    assert sorted(names) == sorted(m.name for m in migrations._migrations)
    assert db["notify_state"].get("since")["value"] == "42"  # nothing re-created or lost
    assert len({n[:4] for n in names}) == len(names)  # every number once
