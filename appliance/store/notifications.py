"""The e-mail notifier's own small facts (``notify_state``), kept across restarts: from which
incoming SMS on forwarding started, since when the mail server has been failing, whether that
outage was alarmed. Keys are the notifier's (appliance/notify/mail.py)."""

from __future__ import annotations

from .db import utcnow


def get_state(db, key: str) -> str | None:
    row = db.execute("SELECT value FROM notify_state WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def set_state(db, key: str, value: str | None, *, at: str | None = None) -> None:
    """Store ``value`` under ``key`` (replacing it); None forgets the key."""
    if value is None:
        db.execute("DELETE FROM notify_state WHERE key = ?", [key])
    else:
        db.execute(
            "INSERT INTO notify_state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [key, value, at or utcnow()],
        )
