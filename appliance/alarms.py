"""Alarms: what a person must see (R20). Stored first; notifying (e-mail/SMS) happens later.

``raise_alarm`` only writes the row and logs it, so it is safe from any thread that has its own
database connection; the core's notifier picks up rows with ``notified_at IS NULL``.
"""

from __future__ import annotations

import logging

from .store.db import utcnow

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")


def raise_alarm(db, kind: str, source: str, text: str, *, severity: str = "warning",
                detail: str = "") -> int:
    """Store one alarm; returns its id. ``kind`` is a short machine word (``line_down``,
    ``line_up``, ``sms_uncertain``, ``modem_pin``...), ``source`` what it is about (``trunk``,
    ``gsm``, ``sms #12``), ``text`` one sentence for a person (in the box's language)."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown alarm severity {severity!r}")
    row = {"at": utcnow(), "kind": kind, "source": source, "severity": severity, "text": text,
           "detail": detail or None}
    alarm_id = db["alarms"].insert(row).last_pk
    getattr(log, "error" if severity == "critical" else "warning")("alarm #%s [%s] %s: %s",
                                                                   alarm_id, kind, source, text)
    return alarm_id


def list_alarms(db, limit: int = 50, *, unacked_only: bool = False) -> list[dict]:
    where = "WHERE acked_at IS NULL " if unacked_only else ""
    return list(db.query(f"SELECT * FROM alarms {where}ORDER BY id DESC LIMIT ?", [limit]))


def ack_alarm(db, alarm_id: int, by: str) -> bool:
    cur = db.execute("UPDATE alarms SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL",
                     [utcnow(), by, alarm_id])
    return cur.rowcount > 0


def pending_notifications(db) -> list[dict]:
    return list(db.query("SELECT * FROM alarms WHERE notified_at IS NULL ORDER BY id"))


def mark_notified(db, alarm_id: int) -> None:
    db.execute("UPDATE alarms SET notified_at = ? WHERE id = ?", [utcnow(), alarm_id])
