"""Alarms: what a person must see (R20). Stored first; notifying (e-mail/SMS) happens later.

``raise_alarm`` only writes the row and logs it, so it is safe from any thread that has its own
database connection; the core's notifier picks up rows with ``notified_at IS NULL``.
"""

from __future__ import annotations

import logging

from .messages import Msg
from .store import alarms as store_alarms

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")


def raise_alarm(
    db,
    kind: str,
    source: str,
    text: Msg,
    *,
    severity: str = "warning",
    detail: str = "",
    lang: str = "pl",
    at: str | None = None,
) -> int:
    """Store one alarm; returns its id. ``kind`` is a short machine word (``line_down``,
    ``line_up``, ``sms_uncertain``, ``modem_pin``...), ``source`` what it is about (``trunk``,
    ``gsm``, ``sms #12``), ``text`` one sentence for a person: a message id (appliance.messages),
    stored rendered in the box's language ``lang`` and as the id, so the web UI can show it in
    the admin's. The log says it in English."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown alarm severity {severity!r}")
    if not isinstance(text, Msg):
        # (A plain sentence would stay in whatever language it was written in.)
        raise TypeError(f"alarm {kind}: the text must be an appliance.messages.Msg, not {type(text).__name__}")
    alarm_id = store_alarms.add(
        db, kind, source, severity, text.text(lang), detail or None, at=at, message=text.to_json()
    )
    getattr(log, "error" if severity == "critical" else "warning")(
        "alarm #%s [%s] %s: %s", alarm_id, kind, source, text
    )
    return alarm_id


def list_alarms(db, limit: int = 50, *, unacked_only: bool = False) -> list[dict]:
    return store_alarms.recent(db, limit, unacked_only=unacked_only)


def ack_alarm(db, alarm_id: int, by: str) -> bool:
    return store_alarms.ack(db, alarm_id, by)


def pending_notifications(db) -> list[dict]:
    return store_alarms.not_notified(db)


def mark_notified(db, alarm_id: int) -> None:
    store_alarms.mark_notified(db, alarm_id)
