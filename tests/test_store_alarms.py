"""store/alarms.py: the alarms table's queries, on a real in-memory database."""

from __future__ import annotations

import pytest

from appliance.store import alarms
from appliance.store.db import open_db


@pytest.fixture
def db():
    return open_db(None)


def test_an_alarm_is_stored_as_given_and_not_yet_notified_nor_acked(db):
    alarm_id = alarms.add(db, "line_down", "trunk", "critical", "Trunk nie działa", "408", at="T1")
    (row,) = alarms.recent(db)
    assert row == {
        "id": alarm_id,
        "at": "T1",
        "kind": "line_down",
        "source": "trunk",
        "severity": "critical",
        "text": "Trunk nie działa",
        "detail": "408",
        "notified_at": None,
        "acked_at": None,
        "acked_by": None,
        "message": None,
    }


def test_an_alarm_keeps_its_message_id_for_other_languages(db):
    message = {"id": "line.state.down", "params": {"line": {"id": "line.gsm", "params": {}}}}
    alarms.add(db, "line_down", "gsm", "warning", "Modem GSM nie działa", message=message)
    (row,) = alarms.recent(db)
    assert row["message"] == '{"id": "line.state.down", "params": {"line": {"id": "line.gsm", "params": {}}}}'
    other = alarms.add(db, "line_up", "trunk", "info", "Trunk działa")
    row = alarms.recent(db)[0]
    assert (row["id"], row["detail"]) == (other, None) and row["at"] > "2020"


def test_recent_is_newest_first_with_a_limit_and_the_unacked_filter(db):
    ids = [alarms.add(db, "k", "s", "warning", f"a{i}", at=f"T{i}") for i in range(4)]
    assert [r["id"] for r in alarms.recent(db)] == ids[::-1]
    assert [r["id"] for r in alarms.recent(db, 2)] == ids[:1:-1]
    assert alarms.ack(db, ids[3], "admin", at="T9")
    assert [r["id"] for r in alarms.recent(db, unacked_only=True)] == ids[2::-1]
    assert [r["id"] for r in alarms.recent(db, 1, unacked_only=True)] == [ids[2]]


def test_ack_happens_once(db):
    alarm_id = alarms.add(db, "k", "s", "warning", "a")
    assert alarms.ack(db, alarm_id, "ania", at="T2") is True
    assert alarms.ack(db, alarm_id, "basia", at="T3") is False  # the first acknowledgement stays
    row = alarms.recent(db)[0]
    assert (row["acked_at"], row["acked_by"]) == ("T2", "ania")
    assert alarms.ack(db, alarm_id + 1, "ania") is False
    fresh = alarms.add(db, "k", "s", "warning", "b")
    assert alarms.ack(db, fresh, "ania")
    assert alarms.recent(db)[0]["acked_at"] > "2020"


def test_not_notified_oldest_first_until_marked(db):
    ids = [alarms.add(db, "k", "s", "warning", f"a{i}") for i in range(3)]
    assert [r["id"] for r in alarms.not_notified(db)] == ids
    alarms.mark_notified(db, ids[1], at="T5")
    alarms.mark_notified(db, ids[0])
    assert [r["id"] for r in alarms.not_notified(db)] == [ids[2]]
    by_id = {r["id"]: r["notified_at"] for r in alarms.recent(db)}
    assert by_id[ids[1]] == "T5" and by_id[ids[0]] > "2020" and by_id[ids[2]] is None


def test_last_id_before_a_time(db):
    assert alarms.last_id_before(db, "2027-01-01T10:00:00.000+00:00") == 0
    a = alarms.add(db, "k", "s", "warning", "a", at="2027-01-01T09:00:00.000+00:00")
    b = alarms.add(db, "k", "s", "warning", "b", at="2027-01-01T09:59:59.999+00:00")
    alarms.add(db, "k", "s", "warning", "c", at="2027-01-01T10:00:00.000+00:00")  # not before: not counted
    assert alarms.last_id_before(db, "2027-01-01T10:00:00.000+00:00") == b
    assert alarms.last_id_before(db, "2027-01-01T09:30:00.000+00:00") == a


def test_after_an_id_filters_by_severity_oldest_first(db):
    ids = [alarms.add(db, "k", "s", sev, f"a{i}") for i, sev in enumerate(["critical", "warning", "critical", "info"])]
    assert [r["id"] for r in alarms.after(db, 0, ["critical"])] == [ids[0], ids[2]]
    assert [r["id"] for r in alarms.after(db, ids[0], ("critical", "info"))] == [ids[2], ids[3]]
    assert alarms.after(db, ids[3], ["critical", "warning", "info"]) == []
    assert alarms.after(db, ids[0], ["critical"])[0]["text"] == "a2"
