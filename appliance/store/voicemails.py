"""Voice messages left after hours (R15): the recording's file, who, how long, handled or not."""

from __future__ import annotations

from .db import dicts


def add(db, **fields) -> int:
    return db["voicemails"].insert({**fields, "state": "new"}).last_pk


def paths(db) -> set[str]:
    """Every stored message's file (what a folder sweep must not touch)."""
    return {r[0] for r in db.execute("SELECT path FROM voicemails WHERE path IS NOT NULL")}


def handled_before(db, before: str) -> list[dict]:
    """Messages marked done before ``before`` whose recording is still kept (retention)."""
    return dicts(db, "SELECT * FROM voicemails WHERE state = 'done' AND done_at < ? AND path != ''", [before])


def forget_recording(db, vm_id: int) -> None:
    """The recording was removed (retention): the row stays for the reports, without audio."""
    db.execute("UPDATE voicemails SET path = '' WHERE id = ?", [vm_id])


def for_number(db, number: str) -> list[dict]:
    return dicts(db, "SELECT * FROM voicemails WHERE number = ?", [number])


def for_call(db, call_id: int) -> list[dict]:
    return dicts(db, "SELECT * FROM voicemails WHERE call_id = ?", [call_id])


def get(db, vm_id: int) -> dict | None:
    rows = dicts(db, "SELECT * FROM voicemails WHERE id = ?", [vm_id])
    return rows[0] if rows else None


def new_messages(db) -> list[dict]:
    return dicts(db, "SELECT * FROM voicemails WHERE state = 'new' ORDER BY at, id")


def mark_done(db, vm_id: int, *, at: str, note: str = "") -> bool:
    cur = db.execute(
        "UPDATE voicemails SET state = 'done', done_at = ?, note = ? WHERE id = ? AND state = 'new'", [at, note, vm_id]
    )
    return cur.rowcount == 1
