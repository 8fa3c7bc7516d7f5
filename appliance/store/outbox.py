"""The SMS outbox's tables: messages (``sms_outbox``), hand-overs to the modem (``sms_attempts``),
the parts the network accepted (``sms_parts``) and delivery reports (``sms_reports``).

Only the SQL lives here; the states, the guarantee and the rules are in appliance/gsm/outbox.py.
Functions that change several rows at once run in one transaction of their own (a claim or a
state change is never half-written); the others are single statements, meant to be called inside
``transaction(db)`` when the caller groups them.
"""

from __future__ import annotations

from .db import dicts as _dicts
from .db import one as _one
from .db import transaction


def synchronous(db) -> int:
    """``PRAGMA synchronous`` of this connection (2 = FULL, what the outbox needs)."""
    return _one(db, "PRAGMA synchronous")[0]


# --- messages (sms_outbox) ------------------------------------------------------------------------
def find_by_dedupe_key(db, dedupe_key: str) -> int | None:
    row = _one(db, "SELECT id FROM sms_outbox WHERE dedupe_key = ?", [dedupe_key])
    return row[0] if row else None


def count_since(db, since: str, number: str | None = None) -> int:
    """Messages created at or after ``since`` (to ``number`` when given), cancelled ones not counted."""
    if number is None:
        return _one(db, "SELECT count(*) FROM sms_outbox WHERE created_at >= ? AND state != 'cancelled'", [since])[0]
    return _one(
        db,
        "SELECT count(*) FROM sms_outbox WHERE number = ? AND created_at >= ? AND state != 'cancelled'",
        [number, since],
    )[0]


def add_message(db, row: dict) -> int:
    """Insert one message row (the outbox builds it); returns its id."""
    return db["sms_outbox"].insert(row).last_pk


def get_message(db, sms_id: int) -> dict | None:
    rows = _dicts(db, "SELECT * FROM sms_outbox WHERE id = ?", [sms_id])
    return rows[0] if rows else None


def list_messages(db, limit: int = 20, states: tuple[str, ...] | None = None) -> list[dict]:
    """Newest first; only the given states when ``states`` is not empty."""
    where, params = "", []
    if states:
        where = f"WHERE state IN ({','.join('?' * len(states))})"
        params = list(states)
    return _dicts(db, f"SELECT * FROM sms_outbox {where} ORDER BY id DESC LIMIT ?", params + [int(limit)])


def next_due(db, now: str) -> dict | None:
    """The queued message due first at ``now`` (oldest ``next_at``, then lowest id)."""
    rows = _dicts(
        db, "SELECT * FROM sms_outbox WHERE state = 'queued' AND next_at <= ? ORDER BY next_at, id LIMIT 1", [now]
    )
    return rows[0] if rows else None


def next_queued_at(db) -> str | None:
    """The earliest ``next_at`` of a queued message, None when nothing is queued."""
    row = _one(db, "SELECT min(next_at) FROM sms_outbox WHERE state = 'queued'")
    return None if row is None else row[0]


def ids_in_state(db, state: str) -> list[int]:
    """Ids of the messages in ``state``, oldest first."""
    return [r[0] for r in db.execute("SELECT id FROM sms_outbox WHERE state = ? ORDER BY id", [state])]


def uncertain_messages(db) -> list[dict]:
    """``id`` and ``number`` of every uncertain message, oldest first."""
    return _dicts(db, "SELECT id, number FROM sms_outbox WHERE state = 'uncertain' ORDER BY id")


def newest_uncertain_to(db, number: str) -> int | None:
    row = _one(
        db, "SELECT id FROM sms_outbox WHERE state = 'uncertain' AND number = ? ORDER BY id DESC LIMIT 1", [number]
    )
    return row[0] if row else None


def claim(db, sms_id: int, started_at: str) -> int | None:
    """``queued`` → ``sending`` with one more attempt and an open attempt row, in one committed
    transaction; returns the attempt id, or None when the message was not queued (nothing written)."""
    with transaction(db):
        cur = db.execute(
            "UPDATE sms_outbox SET state = 'sending', attempts = attempts + 1 WHERE id = ? AND state = 'queued'",
            [sms_id],
        )
        if cur.rowcount != 1:
            return None
        return db["sms_attempts"].insert({"sms_id": sms_id, "started_at": started_at}).last_pk


def mark_sent(db, sms_id: int, sent_at: str) -> None:
    db.execute("UPDATE sms_outbox SET state = 'sent', sent_at = ?, error = NULL WHERE id = ?", [sent_at, sms_id])


def mark_resolved(db, sms_id: int, sent_at: str, note: str) -> None:
    """An uncertain message proved sent: ``sent`` since ``sent_at``, ``note`` saying how we know."""
    db.execute("UPDATE sms_outbox SET state = 'sent', sent_at = ?, error = ? WHERE id = ?", [sent_at, note, sms_id])


def set_final_state(db, sms_id: int, state: str, finished_at: str | None) -> None:
    """The state its parts' reports give (sent, delivered, undelivered) and when it was settled."""
    db.execute("UPDATE sms_outbox SET state = ?, finished_at = ? WHERE id = ?", [state, finished_at, sms_id])


def finish(
    db,
    sms_id: int,
    state: str,
    reason: str,
    finished_at: str,
    *,
    only_from: str | None = None,
    attempt_id: int | None = None,
    outcome: str | None = None,
    ended_at: str | None = None,
) -> None:
    """A final state (failed, expired...) with its reason, and the attempt closed, in one transaction.

    ``only_from``: change the message only while it is in that state. The attempt row (when
    given) is closed at ``ended_at`` with ``outcome`` and the reason as its detail."""
    with transaction(db):
        sql = "UPDATE sms_outbox SET state = ?, error = ?, finished_at = ? WHERE id = ?"
        params = [state, reason, finished_at, sms_id]
        if only_from:
            sql += " AND state = ?"
            params.append(only_from)
        db.execute(sql, params)
        if attempt_id is not None:
            end_attempt(db, attempt_id, ended_at, outcome, reason)


def requeue(db, sms_id: int, next_at: str, error: str, attempt_id: int, outcome: str, detail: str, ended_at: str):
    """Back to ``queued`` for a later try at ``next_at``, and the attempt closed, in one transaction."""
    with transaction(db):
        db.execute(
            "UPDATE sms_outbox SET state = 'queued', next_at = ?, error = ? WHERE id = ?", [next_at, error, sms_id]
        )
        end_attempt(db, attempt_id, ended_at, outcome, detail)


def mark_uncertain(
    db, sms_id: int, error: str, sent_mrs, sent_at: str, attempt_id: int, detail: str, ended_at: str
) -> None:
    """``uncertain`` (maybe sent), the parts known to have gone out (``sent_mrs``, in order, sent
    at ``sent_at``) and the attempt closed as ``maybe_sent`` at ``ended_at``, in one transaction."""
    with transaction(db):
        db.execute("UPDATE sms_outbox SET state = 'uncertain', error = ? WHERE id = ?", [error, sms_id])
        for i, mr in enumerate(sent_mrs):
            add_part(db, sms_id, i + 1, mr, sent_at)
        end_attempt(db, attempt_id, ended_at, "maybe_sent", detail)


def mark_interrupted(db, sms_id: int, reason: str, ended_at: str) -> None:
    """A message a previous run left in ``sending`` becomes ``uncertain``; its open attempts are
    closed as ``interrupted``; one transaction."""
    with transaction(db):
        db.execute(
            "UPDATE sms_outbox SET state = 'uncertain', error = ? WHERE id = ? AND state = 'sending'",
            [reason, sms_id],
        )
        db.execute(
            "UPDATE sms_attempts SET ended_at = ?, outcome = 'interrupted', detail = ? "
            "WHERE sms_id = ? AND outcome IS NULL",
            [ended_at, reason, sms_id],
        )


def admin_change(
    db,
    sms_id: int,
    allowed: tuple[str, ...],
    fields: dict,
    outcome: str,
    reason: str,
    at: str,
    *,
    supersede: bool = False,
) -> str | None:
    """A person's decision: set ``fields`` (``state`` among them) and log an attempt row with
    ``outcome``, in one transaction — only if the message is in one of the ``allowed`` states.
    ``supersede``: the earlier parts become ``superseded`` in the same transaction (a resend).

    Returns the state the message was in (None: no such message); nothing is written unless it
    was allowed."""
    with transaction(db):
        row = _one(db, "SELECT state FROM sms_outbox WHERE id = ?", [sms_id])
        if row is None or row[0] not in allowed:
            return None if row is None else row[0]
        db.execute(
            f"UPDATE sms_outbox SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
            list(fields.values()) + [sms_id],
        )
        add_attempt(db, sms_id, at, at, outcome, reason)
        if supersede:
            supersede_parts(db, sms_id)
        return row[0]


# --- attempts (sms_attempts) ----------------------------------------------------------------------
def attempts_of(db, sms_id: int) -> list[dict]:
    return _dicts(db, "SELECT * FROM sms_attempts WHERE sms_id = ? ORDER BY id", [sms_id])


def add_attempt(db, sms_id: int, started_at: str, ended_at: str, outcome: str, detail: str) -> int:
    """A closed attempt row: an admin decision or a resolution, not a hand-over to the modem."""
    row = {"sms_id": sms_id, "started_at": started_at, "ended_at": ended_at, "outcome": outcome, "detail": detail}
    return db["sms_attempts"].insert(row).last_pk


def end_attempt(db, attempt_id: int, ended_at: str, outcome: str, detail: str | None) -> None:
    db.execute(
        "UPDATE sms_attempts SET ended_at = ?, outcome = ?, detail = ? WHERE id = ?",
        [ended_at, outcome, detail, attempt_id],
    )


def attempt_started_at(db, attempt_id: int) -> str:
    return _one(db, "SELECT started_at FROM sms_attempts WHERE id = ?", [attempt_id])[0]


def last_doubtful_start(db, sms_id: int) -> str | None:
    """When the newest attempt whose fate is unknown (``interrupted``/``maybe_sent``) started."""
    return _one(
        db,
        "SELECT max(started_at) FROM sms_attempts WHERE sms_id = ? AND outcome IN ('interrupted', 'maybe_sent')",
        [sms_id],
    )[0]


# --- parts (sms_parts) ----------------------------------------------------------------------------
def parts_of(db, sms_id: int) -> list[dict]:
    return _dicts(db, "SELECT * FROM sms_parts WHERE sms_id = ? ORDER BY seq, id", [sms_id])


def add_part(db, sms_id: int, seq: int | None, mr: int, sent_at: str | None) -> int:
    """A part the network took (status ``sent``) with its message reference; returns its id."""
    row = {"sms_id": sms_id, "seq": seq, "mr": mr, "status": "sent", "sent_at": sent_at}
    return db["sms_parts"].insert(row).last_pk


def set_part_status(db, part_id: int, status: str, report_at: str) -> None:
    db.execute("UPDATE sms_parts SET status = ?, report_at = ? WHERE id = ?", [status, report_at, part_id])


def supersede_parts(db, sms_id: int) -> None:
    """Every part of the message becomes ``superseded`` (a resend: late reports only stored)."""
    db.execute("UPDATE sms_parts SET status = 'superseded' WHERE sms_id = ?", [sms_id])


def live_part_statuses(db, sms_id: int) -> list[str]:
    """The statuses of the message's parts that are not superseded."""
    return [
        r[0]
        for r in db.execute(
            "SELECT status FROM sms_parts WHERE sms_id = ? AND status != 'superseded'", [sms_id]
        ).fetchall()
    ]


def part_for_report(db, mr: int, sent_since: str, number: str | None = None) -> tuple[int, int] | None:
    """``(part id, sms id)`` a report for ``mr`` belongs to: a part not superseded, sent at or after
    ``sent_since`` (or with no time), to ``number`` when given; still ``sent`` ones first, then
    the newest."""
    sql = (
        "SELECT p.id, p.sms_id FROM sms_parts p JOIN sms_outbox o ON o.id = p.sms_id "
        "WHERE p.mr = ? AND p.status != 'superseded' AND (p.sent_at IS NULL OR p.sent_at >= ?)"
    )
    params: list = [mr, sent_since]
    if number:
        sql += " AND o.number = ?"
        params.append(number)
    row = _one(db, sql + " ORDER BY (p.status = 'sent') DESC, p.id DESC LIMIT 1", params)
    return (row[0], row[1]) if row else None


# --- delivery reports (sms_reports) ---------------------------------------------------------------
def add_report(db, received_at: str, mr: int, number: str | None, status: str, at: str | None) -> int:
    row = {"received_at": received_at, "mr": mr, "number": number, "status": status, "at": at}
    return db["sms_reports"].insert(row).last_pk


def link_report(db, report_id: int, sms_id: int, part_id: int) -> None:
    db.execute("UPDATE sms_reports SET sms_id = ?, part_id = ? WHERE id = ?", [sms_id, part_id, report_id])


def early_report(db, mr: int, number: str, since: str) -> dict | None:
    """The newest unmatched report for ``mr`` received at or after ``since`` naming ``number`` or no
    number: one that overtook the record of its message being sent."""
    rows = _dicts(
        db,
        "SELECT id, status, at FROM sms_reports WHERE sms_id IS NULL AND mr = ? AND "
        "(number IS NULL OR number = ?) AND received_at >= ? ORDER BY id DESC LIMIT 1",
        [mr, number, since],
    )
    return rows[0] if rows else None


def unmatched_reports_to(db, number: str, since: str) -> list[dict]:
    """Unmatched reports naming ``number`` received at or after ``since``, oldest first."""
    return _dicts(
        db,
        "SELECT * FROM sms_reports WHERE sms_id IS NULL AND number = ? AND received_at >= ? ORDER BY id",
        [number, since],
    )
