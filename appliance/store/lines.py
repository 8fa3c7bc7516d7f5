"""What happened on the lines: every health change (``line_events``). Outbound attempts on
them are store/outbound.py's."""

from __future__ import annotations

from .db import utcnow


def record_event(db, line: str, state: str, detail: str = "", *, at: str | None = None) -> None:
    db["line_events"].insert({"at": at or utcnow(), "line": line, "state": state, "detail": detail})


def events(db, line: str | None = None, limit: int = 100) -> list[dict]:
    """The newest events first."""
    where, args = ("line = ?", [line]) if line else (None, [])
    return list(db["line_events"].rows_where(where, args, order_by="id desc", limit=limit))
