"""Callback requests (R12): one open request per number, every try to call back, the outcome.

A request is ``open`` until someone reached the caller (``done``); while the box is dialling it
is ``calling``. A second request from a number that already has an open one is merged into it
(``requests`` counts them): the caller keeps the earlier place in line, and the window is the
later of the two promises (the one they heard last).
"""

from __future__ import annotations

from .db import dicts, one, transaction

OPEN_STATES = ("open", "calling")


def open_for_number(db, number: str) -> dict | None:
    rows = dicts(
        db,
        "SELECT * FROM callbacks WHERE number = ? AND state IN ('open', 'calling') ORDER BY id LIMIT 1",
        [number],
    )
    return rows[0] if rows else None


def request(db, *, at: str, **fields) -> tuple[int, bool]:
    """Store a confirmed request, merged into an open one of the same number; ``(id, merged)``.

    ``fields``: number, number_kind, typed, call_id, topic, team, queue, mode, place_at,
    position, window_from, window_until, promise, lang, patient.
    """
    with transaction(db):
        old = open_for_number(db, fields["number"])
        if old is None:
            row = {**fields, "created_at": at, "updated_at": at, "state": "open", "requests": 1, "attempts": 0}
            row["typed"] = int(bool(row.get("typed")))
            return db["callbacks"].insert(row).last_pk, False
        change = {"updated_at": at, "requests": (old["requests"] or 1) + 1}
        if fields.get("place_at") and (not old["place_at"] or fields["place_at"] < old["place_at"]):
            change["place_at"], change["position"] = fields["place_at"], fields.get("position")
        if fields.get("window_until") and (not old["window_until"] or fields["window_until"] > old["window_until"]):
            change["window_until"], change["promise"] = fields["window_until"], fields.get("promise")
        if fields.get("patient") and not old["patient"]:
            change["patient"] = fields["patient"]
        db["callbacks"].update(old["id"], change)
        return old["id"], True


def get(db, callback_id: int) -> dict | None:
    rows = dicts(db, "SELECT * FROM callbacks WHERE id = ?", [callback_id])
    return rows[0] if rows else None


def open_requests(db, queue: str | None = None) -> list[dict]:
    """Open requests in the order their callers would have been served: by place in line."""
    where, args = "state IN ('open', 'calling')", []
    if queue is not None:
        where += " AND queue = ?"
        args.append(queue)
    return dicts(db, f"SELECT * FROM callbacks WHERE {where} ORDER BY COALESCE(place_at, created_at), id", args)


def update(db, callback_id: int, **fields) -> None:
    db["callbacks"].update(callback_id, fields)


def add_attempt(db, callback_id: int, *, at: str, result: str, agent: str = "", line: str = "", detail: str = ""):
    with transaction(db):
        db.execute("UPDATE callbacks SET attempts = attempts + 1, updated_at = ? WHERE id = ?", [at, callback_id])
        return (
            db["callback_attempts"]
            .insert(
                {"callback_id": callback_id, "at": at, "agent": agent, "line": line, "result": result, "detail": detail}
            )
            .last_pk
        )


def attempts(db, callback_id: int) -> list[dict]:
    return dicts(db, "SELECT * FROM callback_attempts WHERE callback_id = ? ORDER BY id", [callback_id])


def mark_done(db, callback_id: int, *, at: str, by: str, note: str = "", turnaround_s: float | None = None) -> bool:
    """Close a request; False when it was not open (already done, or no such request)."""
    cur = db.execute(
        "UPDATE callbacks SET state = 'done', done_at = ?, done_by = ?, note = ?, turnaround_s = ?, updated_at = ?"
        " WHERE id = ? AND state IN ('open', 'calling')",
        [at, by, note, turnaround_s, at, callback_id],
    )
    return cur.rowcount == 1


def overdue(db, now: str) -> list[dict]:
    """Open requests whose promised window has ended and which were not escalated yet."""
    return dicts(
        db,
        "SELECT * FROM callbacks WHERE state IN ('open', 'calling') AND window_until IS NOT NULL"
        " AND window_until < ? AND escalated_at IS NULL ORDER BY id",
        [now],
    )


def due(db, queue: str, now: str) -> list[dict]:
    """Requests the box calls back itself (``auto``) for ``queue`` that may be tried now: open,
    not given up, their window begun and their next try due; in line order."""
    return dicts(
        db,
        "SELECT * FROM callbacks WHERE state = 'open' AND mode = 'auto' AND queue = ? AND gave_up_at IS NULL"
        " AND (window_from IS NULL OR window_from <= ?) AND (next_try_at IS NULL OR next_try_at <= ?)"
        " ORDER BY COALESCE(place_at, created_at), id",
        [queue, now, now],
    )


def next_due_at(db, now: str) -> str | None:
    """The earliest moment after ``now`` an automatic request becomes due (a retry, a window opening)."""
    row = one(
        db,
        "SELECT MIN(MAX(COALESCE(window_from, ''), COALESCE(next_try_at, ''))) FROM callbacks"
        " WHERE state = 'open' AND mode = 'auto' AND gave_up_at IS NULL"
        " AND MAX(COALESCE(window_from, ''), COALESCE(next_try_at, '')) > ?",
        [now],
    )
    return row[0] if row else None


def claim(db, callback_id: int, *, at: str) -> bool:
    """Take an open request for calling; False when someone else did (or it is closed)."""
    cur = db.execute(
        "UPDATE callbacks SET state = 'calling', updated_at = ? WHERE id = ? AND state = 'open'", [at, callback_id]
    )
    return cur.rowcount == 1


def release(db, callback_id: int, *, at: str, **fields) -> None:
    """A call back that did not reach the caller: open again (with ``next_try_at``, ``gave_up_at``...)."""
    sets = ", ".join(f"{k} = ?" for k in fields)
    db.execute(
        f"UPDATE callbacks SET state = 'open', updated_at = ?{', ' + sets if sets else ''}"
        " WHERE id = ? AND state = 'calling'",
        [at, *fields.values(), callback_id],
    )


def reopen_interrupted(db, *, at: str) -> int:
    """At start: requests left ``calling`` by a stopped box are open again (nobody is dialling)."""
    return db.execute("UPDATE callbacks SET state = 'open', updated_at = ? WHERE state = 'calling'", [at]).rowcount
