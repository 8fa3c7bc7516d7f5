"""Outbound attempts (``outbound_calls``): one row per try on a line (which line, for what, how
it ended), written by appliance/lines.py and counted by the toll-fraud guard's hourly caps."""

from __future__ import annotations

from .db import utcnow


def count_since(db, since: str, number: str | None = None) -> int:
    """Attempts at or after ``since`` on every line (only those to ``number`` when given)."""
    if number is None:
        return db.execute("SELECT count(*) FROM outbound_calls WHERE at >= ?", [since]).fetchone()[0]
    return db.execute("SELECT count(*) FROM outbound_calls WHERE at >= ? AND number = ?", [since, number]).fetchone()[0]


def start_attempt(
    db,
    number: str,
    purpose: str,
    line: str | None,
    outcome: str,
    detail: str = "",
    call_id: int | None = None,
    *,
    at: str | None = None,
) -> int:
    row = {
        "at": at or utcnow(),
        "number": number,
        "purpose": purpose,
        "line": line,
        "outcome": outcome,
        "detail": detail or None,
        "call_id": call_id,
    }
    return db["outbound_calls"].insert(row).last_pk


def finish_attempt(db, row_id: int, outcome: str, detail: str = "") -> None:
    db["outbound_calls"].update(row_id, {"outcome": outcome, "detail": detail or None})
