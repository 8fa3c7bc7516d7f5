"""store/notifications.py: the mail notifier's small facts, on a real in-memory database."""

from __future__ import annotations

from appliance.store import notifications
from appliance.store.db import open_db


def test_a_state_is_set_replaced_and_forgotten():
    db = open_db(None)
    assert notifications.get_state(db, "mail.failing_since") is None
    notifications.set_state(db, "mail.failing_since", "1800000000.0", at="T1")
    notifications.set_state(db, "mail.sms_forward_after_id", "12", at="T1")
    notifications.set_state(db, "mail.failing_since", "1800000060.0", at="T2")
    assert notifications.get_state(db, "mail.failing_since") == "1800000060.0"
    rows = {r["key"]: (r["value"], r["updated_at"]) for r in db["notify_state"].rows}
    assert rows == {"mail.failing_since": ("1800000060.0", "T2"), "mail.sms_forward_after_id": ("12", "T1")}
    notifications.set_state(db, "mail.failing_since", None)
    notifications.set_state(db, "mail.never_set", None)  # forgetting a missing key is fine
    assert notifications.get_state(db, "mail.failing_since") is None
    assert notifications.get_state(db, "mail.sms_forward_after_id") == "12"
    assert db["notify_state"].count == 1


def test_set_state_stamps_the_time_when_none_is_given(tmp_path):
    db = open_db(tmp_path / "c.db")
    notifications.set_state(db, "k", "v")
    db.conn.close()
    db = open_db(tmp_path / "c.db")  # and it survives a reopen
    assert notifications.get_state(db, "k") == "v"
    assert db["notify_state"].get("k")["updated_at"] > "2020"
