"""store/staff.py: the imported agents-and-queues file, on a real in-memory database."""

from __future__ import annotations

from appliance.store import staff
from appliance.store.db import open_db


def test_the_newest_import_is_the_current_file():
    db = open_db(None)
    assert staff.latest_text(db) is None
    first = staff.save_text(db, "[agents.anna]\n", at="T1")
    second = staff.save_text(db, "[agents.basia]\n")
    assert second > first
    assert staff.latest_text(db) == "[agents.basia]\n"
    rows = list(db["staff"].rows_where(order_by="id"))
    assert [(r["text"], r["updated_at"] == "T1") for r in rows] == [
        ("[agents.anna]\n", True),
        ("[agents.basia]\n", False),
    ]
    assert rows[1]["updated_at"] > "2020"
