"""Manual overrides of business hours: a person said "closed (or open) until …" or "until lifted"."""

from __future__ import annotations

from .db import dicts


def override(db, schedule: str) -> dict | None:
    rows = dicts(db, "SELECT * FROM hours_override WHERE schedule = ?", [schedule])
    return rows[0] if rows else None


def overrides(db) -> list[dict]:
    return dicts(db, "SELECT * FROM hours_override ORDER BY schedule")


def set_override(db, schedule: str, state: str, *, until: str | None, at: str, by: str = "") -> None:
    db["hours_override"].upsert(
        {"schedule": schedule, "state": state, "until": until, "set_at": at, "set_by": by}, pk="schedule"
    )


def lift(db, schedule: str) -> bool:
    return db.execute("DELETE FROM hours_override WHERE schedule = ?", [schedule]).rowcount == 1
