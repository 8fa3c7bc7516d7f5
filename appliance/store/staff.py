"""The agents-and-queues file (``staff``) as the admin imported it: every import is a new row,
the newest counts (appliance/flow/staff.py reads it)."""

from __future__ import annotations

from .db import utcnow


def save_text(db, text: str, *, at: str | None = None) -> int:
    """Store an imported file as the current one; returns its row id."""
    return db["staff"].insert({"text": text, "updated_at": at or utcnow()}).last_pk


def latest_text(db) -> str | None:
    """The file last imported, or None when none was."""
    row = next(iter(db["staff"].rows_where(order_by="id desc", limit=1)), None)
    return row["text"] if row else None
