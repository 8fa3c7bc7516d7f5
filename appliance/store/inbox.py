"""Incoming SMS: whole messages (``sms_incoming``) and the parts of multipart ones until all have
arrived (``sms_incoming_parts``). Joining and duplicate rules are in appliance/gsm/outbox.py;
the e-mail forwarding marks are used by appliance/notify/mail.py.

Single statements: callers that group them (storing a part and joining its message) do so
inside ``transaction(db)``.
"""

from __future__ import annotations

from .db import dicts as _dicts
from .db import one as _one
from .db import utcnow


# --- whole messages (sms_incoming) ----------------------------------------------------------------
def add_message(db, row: dict) -> int:
    """Insert one whole message (number, number_kind, text, sent_at, received_at, parts, complete)."""
    return db["sms_incoming"].insert(row).last_pk


def get_message(db, message_id: int) -> dict | None:
    rows = _dicts(db, "SELECT * FROM sms_incoming WHERE id = ?", [message_id])
    return rows[0] if rows else None


def find_single_duplicate(db, number: str, sent_at: str, text: str) -> int | None:
    """A single-part message stored before with the same sender, SMSC time and text."""
    row = _one(
        db,
        "SELECT id FROM sms_incoming WHERE number = ? AND sent_at = ? AND text = ? AND parts = 1",
        [number, sent_at, text],
    )
    return row[0] if row else None


def list_messages(db, limit: int = 20) -> list[dict]:
    """Newest first."""
    return _dicts(db, "SELECT * FROM sms_incoming ORDER BY id DESC LIMIT ?", [int(limit)])


def last_id(db) -> int:
    """The highest message id so far (0 when none arrived yet)."""
    return _one(db, "SELECT coalesce(max(id), 0) FROM sms_incoming")[0]


def not_forwarded(db, after_id: int) -> list[dict]:
    """Messages with an id above ``after_id`` not yet e-mailed, oldest first."""
    return _dicts(db, "SELECT * FROM sms_incoming WHERE forwarded_at IS NULL AND id > ? ORDER BY id", [after_id])


def mark_forwarded(db, message_id: int, *, at: str | None = None) -> None:
    db.execute("UPDATE sms_incoming SET forwarded_at = ? WHERE id = ?", [at or utcnow(), message_id])


# --- parts of multipart messages (sms_incoming_parts) ---------------------------------------------
def find_part_duplicate(
    db, number: str, ref: int, total: int, seq: int, text: str, sent_at: str | None, since: str
) -> dict | None:
    """The same part (sender, concat reference, total, position, text, SMSC time — None matching
    None) received at or after ``since``: ``{"id", "message_id"}`` (message_id None while the
    message waits for parts), or None."""
    rows = _dicts(
        db,
        "SELECT id, message_id FROM sms_incoming_parts WHERE number = ? AND ref = ? AND total = ? "
        "AND seq = ? AND text = ? AND sent_at IS ? AND received_at >= ?",
        [number, ref, total, seq, text, sent_at, since],
    )
    return rows[0] if rows else None


def open_group_for(db, number: str, ref: int, total: int, seq: int, since: str) -> int | None:
    """The oldest group of unjoined parts (same sender, reference and total, a part received at or
    after ``since``) that still lacks position ``seq``; None when the part starts a new group."""
    row = _one(
        db,
        "SELECT group_id FROM sms_incoming_parts WHERE number = ? AND ref = ? AND total = ? "
        "AND message_id IS NULL AND received_at >= ? AND group_id NOT IN ("
        "  SELECT group_id FROM sms_incoming_parts WHERE number = ? AND ref = ? AND total = ? "
        "  AND seq = ? AND message_id IS NULL) ORDER BY group_id LIMIT 1",
        [number, ref, total, since, number, ref, total, seq],
    )
    return row[0] if row else None


def add_part(db, row: dict) -> int:
    """Insert one part (number, ref, total, seq, text, sent_at, received_at, group_id)."""
    return db["sms_incoming_parts"].insert(row).last_pk


def set_group(db, part_id: int, group_id: int) -> None:
    db.execute("UPDATE sms_incoming_parts SET group_id = ? WHERE id = ?", [group_id, part_id])


def group_parts(db, group_id: int) -> list[dict]:
    """The group's parts by position."""
    return _dicts(db, "SELECT * FROM sms_incoming_parts WHERE group_id = ? ORDER BY seq", [group_id])


def link_parts(db, part_ids: list[int], message_id: int) -> None:
    """The parts now belong to the whole message ``message_id``."""
    db.execute(
        f"UPDATE sms_incoming_parts SET message_id = ? WHERE id IN ({','.join('?' * len(part_ids))})",
        [message_id] + list(part_ids),
    )


def stale_groups(db, cutoff: str) -> list[tuple[int, int]]:
    """``(group id, total)`` of every unjoined group whose newest part arrived before ``cutoff``."""
    return [
        (r[0], r[1])
        for r in db.execute(
            "SELECT group_id, max(total) FROM sms_incoming_parts WHERE message_id IS NULL "
            "GROUP BY group_id HAVING max(received_at) < ?",
            [cutoff],
        ).fetchall()
    ]
