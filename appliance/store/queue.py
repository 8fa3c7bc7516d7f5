"""Queue records: one ``queue_calls`` row per caller's wait, and the handling-time statistics
each queue's wait estimate is built from (``queue_stats``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .db import utcnow


def record_join(db, call_id: int, queue: str, *, at: str | None = None) -> int:
    """A caller joined ``queue``; returns the row that follows their wait."""
    return db["queue_calls"].insert({"call_id": call_id, "queue": queue, "joined_at": at or utcnow()}).last_pk


def record_exit(db, row_id: int, reason: str, wait_s: float, *, at: str | None = None) -> None:
    """The caller left without an agent: timeout, hung up, left by key, no agents."""
    db["queue_calls"].update(row_id, {"left_at": at or utcnow(), "reason": reason, "wait_s": round(wait_s, 2)})


def record_answer(db, row_id: int, agent: str, wait_s: float, *, at: str | None = None) -> None:
    db["queue_calls"].update(
        row_id, {"answered_at": at or utcnow(), "agent": agent, "reason": "answered", "wait_s": round(wait_s, 2)}
    )


def record_end(db, row_id: int, handle_s: float, *, at: str | None = None) -> None:
    """The agent's call ended; ``handle_s`` is talk plus wrap-up."""
    db["queue_calls"].update(row_id, {"left_at": at or utcnow(), "handle_s": round(handle_s, 2)})


def load_stats(db, queue: str) -> dict | None:
    row = next(iter(db["queue_stats"].rows_where("queue = ?", [queue])), None)
    return json.loads(row["stats"]) if row else None


def save_stats(db, queue: str, stats: dict) -> None:
    db["queue_stats"].upsert({"queue": queue, "stats": json.dumps(stats)}, pk="queue")


def waits(db, queue: str | None = None) -> list[dict]:
    """Every recorded wait, oldest first (reports, the estimate benchmark)."""
    where, args = ("queue = ?", [queue]) if queue else (None, [])
    return list(db["queue_calls"].rows_where(where, args, order_by="id"))


def add_stays(db, rows: list[dict]) -> None:
    """Whole stays at once (queue, joined_at, answered_at, left_at, reason, wait_s, agent,
    handle_s): the EWT bench's simulated days, written as the engine would have."""
    if rows:
        db["queue_calls"].insert_all(rows)


def waits_in_file(path: str | Path) -> list[dict]:
    """Every wait recorded in the database file at ``path``, by the time each caller joined,
    read without changing the file (the bench replays a copy of a box's records). Records from
    before the exit reason was kept have no ``reason``. Raises sqlite3.Error when the file has
    no ``queue_calls``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cur = conn.execute("SELECT * FROM queue_calls ORDER BY joined_at")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    finally:
        conn.close()
