"""Missed calls (R13): an inbound call that reached no human and left no callback request.

Each stays ``open`` until it is settled: an outbound call to the number connected
(``outbound``), the number called again and reached a person (``called_again``), it asked for
a callback (``callback``), or staff marked it done with a note (``staff``).
"""

from __future__ import annotations

from .db import dicts, one


def add(db, **fields) -> int | None:
    """Record a missed call (once per call); None when the call is already recorded."""
    if one(db, "SELECT 1 FROM missed_calls WHERE call_id = ?", [fields["call_id"]]):
        return None
    return db["missed_calls"].insert({**fields, "state": "open"}).last_pk


def get(db, missed_id: int) -> dict | None:
    rows = dicts(db, "SELECT * FROM missed_calls WHERE id = ?", [missed_id])
    return rows[0] if rows else None


def open_items(db) -> list[dict]:
    return dicts(db, "SELECT * FROM missed_calls WHERE state = 'open' ORDER BY started_at, id")


def close_for_number(db, number: str, *, at: str, by: str, note: str = "") -> int:
    """Settle every open missed call from ``number``; returns how many."""
    cur = db.execute(
        "UPDATE missed_calls SET state = 'done', closed_at = ?, closed_by = ?, note = ?"
        " WHERE number = ? AND state = 'open'",
        [at, by, note, number],
    )
    return cur.rowcount


def mark_done(db, missed_id: int, *, at: str, note: str = "", by: str = "staff") -> bool:
    cur = db.execute(
        "UPDATE missed_calls SET state = 'done', closed_at = ?, closed_by = ?, note = ?"
        " WHERE id = ? AND state = 'open'",
        [at, by, note, missed_id],
    )
    return cur.rowcount == 1
