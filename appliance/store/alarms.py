"""Alarms (``alarms``): what a person must see (R20); written first, e-mailed and acknowledged later.
Wording, severities and the log line are appliance/alarms.py's."""

from __future__ import annotations

import json

from .db import utcnow


def add(
    db,
    kind: str,
    source: str,
    severity: str,
    text: str,
    detail: str | None = None,
    *,
    at: str | None = None,
    message: dict | None = None,
) -> int:
    """Store one alarm (not yet notified nor acknowledged); returns its id. ``message`` is the
    text's id and parameters (appliance.messages), kept as JSON for other languages."""
    row = {"at": at or utcnow(), "kind": kind, "source": source, "severity": severity, "text": text, "detail": detail}
    if message is not None:
        row["message"] = json.dumps(message, ensure_ascii=False, sort_keys=True)
    return db["alarms"].insert(row).last_pk


def recent(db, limit: int = 50, *, unacked_only: bool = False) -> list[dict]:
    """Newest first; only those nobody acknowledged yet with ``unacked_only``."""
    where = "WHERE acked_at IS NULL " if unacked_only else ""
    return list(db.query(f"SELECT * FROM alarms {where}ORDER BY id DESC LIMIT ?", [limit]))


def ack(db, alarm_id: int, by: str, *, at: str | None = None) -> bool:
    """Acknowledge an alarm once; False when it does not exist or was acknowledged before."""
    cur = db.execute(
        "UPDATE alarms SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL", [at or utcnow(), by, alarm_id]
    )
    return cur.rowcount > 0


def not_notified(db) -> list[dict]:
    """Alarms nobody was told about yet, oldest first."""
    return list(db.query("SELECT * FROM alarms WHERE notified_at IS NULL ORDER BY id"))


def mark_notified(db, alarm_id: int, *, at: str | None = None) -> None:
    db.execute("UPDATE alarms SET notified_at = ? WHERE id = ?", [at or utcnow(), alarm_id])


def last_id_before(db, at: str) -> int:
    """The id of the newest alarm raised before ``at`` (0 when none was)."""
    return db.execute("SELECT max(id) FROM alarms WHERE at < ?", [at]).fetchone()[0] or 0


def after(db, after_id: int, severities) -> list[dict]:
    """Alarms with an id above ``after_id`` of one of the ``severities``, oldest first."""
    severities = list(severities)
    return list(
        db.query(
            f"SELECT * FROM alarms WHERE id > ? AND severity IN ({','.join('?' * len(severities))}) ORDER BY id",
            [after_id, *severities],
        )
    )


def latest_of(db, source: str, kinds) -> dict | None:
    """The newest alarm about ``source`` of one of ``kinds`` (e.g. a failure and its recovery)."""
    kinds = list(kinds)
    marks = ",".join("?" * len(kinds))
    rows = list(
        db.query(
            f"SELECT * FROM alarms WHERE source = ? AND kind IN ({marks}) ORDER BY id DESC LIMIT 1", [source, *kinds]
        )
    )
    return rows[0] if rows else None
