"""The e-mail outbox (``mail_outbox``): every e-mail the box composes for people (callback
requests, voice messages) waits here until a mail server accepted it.

Only the SQL lives here; delivery, retries and the guarantee are in appliance/notify/mail.py.
A row is ``pending`` until the server accepted it (``sent``) or refused it for good
(``failed``, the server's reply in ``last_error``). ``key`` makes enqueueing idempotent: the
same key enqueued twice is one row, one e-mail. Recipients and attachments are stored as JSON
and come back as lists; attachments are ``{"name", "mime", "path"}`` (the file is read when the
e-mail is sent, not when it is queued).

Every mark (sent, retry, failed) counts one attempt. Timestamps are stamps
(appliance.clock.stamp): UTC ISO text, compared as text. Arguments that cannot make a row
(no key, no recipient, a recipient list given as one string) raise ValueError naming the field;
appliance/notify/mail.py checks them first and says it in the caller's terms.
"""

from __future__ import annotations

import json

from .db import dicts as _dicts
from .db import one as _one

STATES = ("pending", "sent", "failed")


def _decoded(row: dict) -> dict:
    row["recipients"] = json.loads(row["recipients"] or "[]")
    row["attachments"] = json.loads(row["attachments"] or "[]")
    return row


def enqueue(
    db,
    *,
    key: str,
    kind: str,
    recipients,
    subject: str,
    body: str,
    attachments=(),
    at: str,
) -> int:
    """Queue one e-mail; returns its id. A second enqueue with the same ``key`` returns the
    existing row's id and changes nothing (whatever its state)."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"mail outbox: an e-mail needs a key (a non-empty text), got {key!r}")
    if isinstance(recipients, (str, bytes)):
        # list("a@b.pl") would queue one recipient per letter.
        raise ValueError(f"mail outbox {key}: recipients must be a list of addresses, not one text {recipients!r}")
    recipients = list(recipients)
    if not recipients or not all(isinstance(r, str) and r.strip() for r in recipients):
        raise ValueError(f"mail outbox {key}: recipients must be a non-empty list of addresses, got {recipients!r}")
    files = [{"name": a["name"], "mime": a["mime"], "path": str(a["path"])} for a in attachments]
    db.execute(
        "INSERT INTO mail_outbox (key, kind, created_at, recipients, subject, body, attachments, state, attempts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0) ON CONFLICT(key) DO NOTHING",
        [
            key,
            kind,
            at,
            json.dumps(recipients, ensure_ascii=False),
            subject,
            body,
            json.dumps(files, ensure_ascii=False),
        ],
    )
    return _one(db, "SELECT id FROM mail_outbox WHERE key = ?", [key])[0]


def get(db, mail_id: int) -> dict | None:
    rows = _dicts(db, "SELECT * FROM mail_outbox WHERE id = ?", [mail_id])
    return _decoded(rows[0]) if rows else None


def due(db, now: str, limit: int = 100) -> list[dict]:
    """Pending e-mails whose ``next_try_at`` is empty or not after ``now``, oldest first."""
    rows = _dicts(
        db,
        "SELECT * FROM mail_outbox WHERE state = 'pending' AND (next_try_at IS NULL OR next_try_at <= ?) "
        "ORDER BY created_at, id LIMIT ?",
        [now, int(limit)],
    )
    return [_decoded(r) for r in rows]


def mark_sent(db, mail_id: int, at: str, message_id: str, *, note: str | None = None) -> None:
    """The server accepted it. ``note``: what went wrong although it went (an attachment that
    could not be read, a recipient refused while others were accepted), kept in last_error."""
    db.execute(
        "UPDATE mail_outbox SET state = 'sent', sent_at = ?, message_id = ?, last_error = ?, "
        "attempts = attempts + 1, next_try_at = NULL WHERE id = ?",
        [at, message_id, note, mail_id],
    )


def mark_retry(
    db, mail_id: int, error: str, next_try_at: str, *, recipients=None, message_id: str | None = None
) -> None:
    """Not sent this time (a transient error): try again at ``next_try_at``. ``recipients``: when
    the server took the e-mail for some addresses and put others off (a 4xx to their RCPT), the
    addresses still owed it — only those get it on the next try; ``message_id`` is then the one
    already delivered (kept so the row shows it)."""
    if recipients is None:
        db.execute(
            "UPDATE mail_outbox SET last_error = ?, next_try_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND state = 'pending'",
            [error, next_try_at, mail_id],
        )
        return
    recipients = list(recipients)
    if not recipients:
        raise ValueError(f"mail outbox #{mail_id}: a retry needs at least one recipient still owed the e-mail")
    db.execute(
        "UPDATE mail_outbox SET last_error = ?, next_try_at = ?, attempts = attempts + 1, recipients = ?, "
        "message_id = coalesce(?, message_id) WHERE id = ? AND state = 'pending'",
        [error, next_try_at, json.dumps(recipients, ensure_ascii=False), message_id, mail_id],
    )


def mark_failed(db, mail_id: int, error: str) -> None:
    """Refused for good (e.g. 550 recipient refused): never tried again; ``error`` says why."""
    db.execute(
        "UPDATE mail_outbox SET state = 'failed', last_error = ?, next_try_at = NULL, attempts = attempts + 1 "
        "WHERE id = ? AND state = 'pending'",
        [error, mail_id],
    )


def pending_count(db) -> int:
    return _one(db, "SELECT count(*) FROM mail_outbox WHERE state = 'pending'")[0]


def listing(db, limit: int = 50) -> list[dict]:
    """The newest e-mails first, in every state (for the web UI and the command line)."""
    rows = _dicts(db, "SELECT * FROM mail_outbox ORDER BY id DESC LIMIT ?", [int(limit)])
    return [_decoded(r) for r in rows]
