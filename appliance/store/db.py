"""SQLite through sqlite-utils: one file, WAL, synchronous=FULL, registered migrations.

WAL + synchronous=FULL means a committed row survives a power cut (the fsync happens at commit);
a half-written transaction is rolled back on the next open. Readers (the web UI) never block the
core's writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ..clock import stamp
from ..errors import StoreError

migrations = Migrations("centralka")


def utcnow() -> str:
    """Timestamps are UTC ISO-8601 with milliseconds; they sort as text (appliance.clock.stamp)."""
    return stamp()


@migrations()
def m001_calls(db):
    db["calls"].create(
        {
            "id": int,
            "started_at": str,
            "answered_at": str,
            "ended_at": str,
            "direction": str,  # in | out
            "line": str,  # sip (direct), trunk, gsm
            "caller_raw": str,
            "caller": str,  # E.164 when valid, else as received
            "caller_kind": str,  # e164 | withheld | internal | malformed
            "dialled": str,
            "sip_call_id": str,
            "flow": str,
            "outcome": str,  # connected | operator | caller_hangup | goodbye | rejected | error
            "ended_by": str,  # caller | box | agent
            "connected_to": str,
            "transfers": int,
        },
        pk="id",
        not_null={"started_at", "direction", "line"},
        defaults={"transfers": 0},
    )
    db["calls"].create_index(["started_at"])
    db["call_steps"].create(
        {"id": int, "call_id": int, "at": str, "step": str, "node": str, "detail": str},
        pk="id",
        foreign_keys=[("call_id", "calls", "id")],
        not_null={"call_id", "at", "step"},
    )
    db["call_steps"].create_index(["call_id"])


@migrations()
def m002_flows(db):
    db["flows"].create(
        {"name": str, "text": str, "active": int, "updated_at": str},
        pk="name",
        not_null={"text", "updated_at"},
        defaults={"active": 0},
    )


@migrations()
def m003_line_events(db):
    # Line (trunk) state changes, shown to the admin and later raised as alarms (R20).
    db["line_events"].create(
        {"id": int, "at": str, "line": str, "state": str, "detail": str},
        pk="id",
        not_null={"at", "line", "state"},
    )


@migrations()
def m004_phones(db):
    # Desk phones: the password is shown once when generated; only its digest hash is kept.
    db["phones"].create(
        {"extension": str, "name": str, "ha1": str, "created_at": str, "updated_at": str},
        pk="extension",
        not_null={"ha1", "created_at"},
    )


@migrations()
def m005_queues(db):
    # The agents-and-queues configuration as the admin wrote it (TOML), like flows.
    db["staff"].create({"id": int, "text": str, "updated_at": str}, pk="id", not_null={"text"})
    db["agent_state"].create({"agent": str, "paused": int, "changed_at": str}, pk="agent")
    # Measured handling times per queue: a restart must not reset the wait estimate (R10).
    db["queue_stats"].create({"queue": str, "stats": str}, pk="queue")
    # One row per stay in a queue: the exit reason, the wait and who answered.
    db["queue_calls"].create(
        {
            "id": int,
            "call_id": int,
            "queue": str,
            "joined_at": str,
            "answered_at": str,
            "left_at": str,
            "reason": str,
            "wait_s": float,
            "agent": str,
            "handle_s": float,
        },
        pk="id",
        foreign_keys=[("call_id", "calls", "id")],
        not_null={"queue", "joined_at"},
    )
    db["queue_calls"].create_index(["joined_at"])


@migrations()
def m006_sms(db):
    # SMS outbox (R12, R19, R22): a message is stored before the modem sees it; the states and
    # the delivery guarantee are documented in appliance/gsm/outbox.py.
    db["sms_outbox"].create(
        {
            "id": int,
            "created_at": str,
            "kind": str,
            "number": str,
            "text": str,
            "original_text": str,
            "encoding": str,
            "parts": int,
            "state": str,
            "attempts": int,
            "next_at": str,
            "expires_at": str,
            "sent_at": str,
            "finished_at": str,
            "error": str,
            "dedupe_key": str,
        },
        pk="id",
        not_null={"created_at", "kind", "number", "text", "encoding", "parts", "state"},
        defaults={"attempts": 0},
    )
    db["sms_outbox"].create_index(["state", "next_at"])
    db["sms_outbox"].create_index(["number", "created_at"])
    db["sms_outbox"].create_index(["created_at"])
    db["sms_outbox"].create_index(["dedupe_key"], unique=True)  # NULLs do not collide
    # One row per hand-over to the modem (and per recovery/admin decision), with its outcome.
    db["sms_attempts"].create(
        {"id": int, "sms_id": int, "started_at": str, "ended_at": str, "outcome": str, "detail": str},
        pk="id",
        foreign_keys=[("sms_id", "sms_outbox", "id")],
        not_null={"sms_id", "started_at"},
    )
    db["sms_attempts"].create_index(["sms_id"])
    # One row per SMS part the network accepted: its message reference (TP-MR) and delivery.
    db["sms_parts"].create(
        {"id": int, "sms_id": int, "seq": int, "mr": int, "status": str, "sent_at": str, "report_at": str},
        pk="id",
        foreign_keys=[("sms_id", "sms_outbox", "id")],
        not_null={"sms_id", "mr", "status"},
    )
    db["sms_parts"].create_index(["mr"])
    db["sms_parts"].create_index(["sms_id"])
    # Every delivery (status) report as received, matched or not.
    db["sms_reports"].create(
        {
            "id": int,
            "received_at": str,
            "mr": int,
            "number": str,
            "status": str,
            "at": str,
            "sms_id": int,
            "part_id": int,
        },
        pk="id",
        not_null={"received_at", "mr", "status"},
    )
    db["sms_reports"].create_index(["mr"])
    # Incoming SMS: whole messages, and the parts of multipart ones until all have arrived.
    db["sms_incoming"].create(
        {
            "id": int,
            "number": str,
            "number_kind": str,
            "text": str,
            "sent_at": str,
            "received_at": str,
            "parts": int,
            "complete": int,
            "forwarded_at": str,
        },
        pk="id",
        not_null={"number", "text", "received_at", "parts", "complete"},
    )
    db["sms_incoming"].create_index(["received_at"])
    db["sms_incoming"].create_index(["number", "sent_at"])
    db["sms_incoming_parts"].create(
        {
            "id": int,
            "number": str,
            "ref": int,
            "total": int,
            "seq": int,
            "text": str,
            "sent_at": str,
            "received_at": str,
            "group_id": int,
            "message_id": int,
        },
        pk="id",
        not_null={"number", "ref", "total", "seq", "text", "received_at"},
    )
    db["sms_incoming_parts"].create_index(["number", "ref", "total"])


@migrations()
def m007_alarms(db):
    # Things a person must see (R20): a line went down or came back, an SMS in doubt, a modem
    # that needs a hand. Shown in the UI, e-mailed/SMSed to the admin when configured.
    db["alarms"].create(
        {
            "id": int,
            "at": str,
            "kind": str,
            "source": str,
            "severity": str,
            "text": str,
            "detail": str,
            "notified_at": str,
            "acked_at": str,
            "acked_by": str,
        },
        pk="id",
        not_null={"at", "kind", "source", "severity", "text"},
    )
    db["alarms"].create_index(["at"])
    db["alarms"].create_index(["acked_at"])


@migrations()
def m008_outbound(db):
    # Every outbound attempt on every line (R20): which line, what happened. The toll-fraud
    # guard's hourly caps count these rows.
    db["outbound_calls"].create(
        {
            "id": int,
            "at": str,
            "number": str,
            "purpose": str,
            "line": str,
            "outcome": str,
            "detail": str,
            "call_id": int,
        },
        pk="id",
        not_null={"at", "number", "purpose", "outcome"},
    )
    db["outbound_calls"].create_index(["at"])
    db["outbound_calls"].create_index(["number", "at"])


@migrations()
def m009_notify(db):
    # E-mail notifications (appliance/notify/mail.py). sms_incoming.forwarded_at exists since
    # m006; this keeps the notifier's own small facts across restarts: from which incoming SMS
    # on forwarding started (switching mail on must not e-mail a year of old texts) and since
    # when the mail server has been failing (one alarm per outage).
    db["notify_state"].create({"key": str, "value": str, "updated_at": str}, pk="key")


@migrations()
def m010_alarm_messages(db):
    # An alarm's text by message id and parameters (appliance/messages.py), beside the text in
    # the box's language: the web UI can show it in the admin's language.
    db["alarms"].add_column("message", str)


@migrations()
def m011_callbacks(db):
    # Issue 11: nobody forgotten. A manual override of a business-hours schedule; callback
    # requests (one open request per number: repeats are merged into it) with every attempt to
    # call back; missed calls kept open until someone reached the caller; voice messages.
    db["hours_override"].create(
        {"schedule": str, "state": str, "until": str, "set_at": str, "set_by": str}, pk="schedule"
    )
    db["callbacks"].create(
        {
            "id": int,
            "created_at": str,
            "updated_at": str,
            "number": str,  # E.164 when it is one, else what the caller typed
            "number_kind": str,  # mobile, fixed, other
            "typed": int,  # 1: the caller typed the number (caller ID hidden or not callable)
            "call_id": int,  # the call that asked
            "topic": str,  # queue id or menu node the caller chose
            "team": str,  # whose e-mail it is
            "queue": str,  # the queue whose line the request keeps its place in (auto mode)
            "mode": str,  # auto | list
            "place_at": str,  # when the caller joined the line: their place in it
            "position": int,  # position in line when they asked
            "window_from": str,
            "window_until": str,
            "promise": str,  # the promise as the caller heard it
            "lang": str,
            "patient": str,
            "requests": int,  # how many times this number asked (merged)
            "state": str,  # open, calling, done
            "attempts": int,
            "next_try_at": str,
            "done_at": str,
            "done_by": str,
            "note": str,
            "turnaround_s": float,
            "escalated_at": str,
            "gave_up_at": str,  # the last try failed: SMS sent, staff must take it over
        },
        pk="id",
        not_null={"created_at", "number", "state"},
        defaults={"requests": 1, "attempts": 0, "typed": 0},
    )
    db["callbacks"].create_index(["state", "place_at"])
    db["callbacks"].create_index(["number", "state"])
    db["callback_attempts"].create(
        {
            "id": int,
            "callback_id": int,
            "at": str,
            "agent": str,
            "line": str,
            "result": str,  # connected, no_answer, busy, declined, not_pressed, agent_declined, failed
            "detail": str,
        },
        pk="id",
        foreign_keys=[("callback_id", "callbacks", "id")],
    )
    db["callback_attempts"].create_index(["callback_id"])
    db["missed_calls"].create(
        {
            "id": int,
            "call_id": int,
            "number": str,
            "number_kind": str,
            "started_at": str,
            "ended_at": str,
            "waited_s": float,
            "gave_up": str,  # menu, queue, ringing, operator, greeting, voicemail
            "node": str,
            "topic": str,
            "state": str,  # open, done
            "closed_at": str,
            "closed_by": str,  # outbound, called_again, callback, staff
            "note": str,
        },
        pk="id",
        not_null={"call_id", "state"},
    )
    db["missed_calls"].create_index(["call_id"], unique=True)
    db["missed_calls"].create_index(["number", "state"])
    db["voicemails"].create(
        {
            "id": int,
            "call_id": int,
            "at": str,
            "number": str,
            "seconds": float,
            "path": str,
            "mime": str,
            "ended_by": str,  # silence, key, max_length, hangup
            "state": str,  # new, done
            "done_at": str,
            "note": str,
        },
        pk="id",
        not_null={"at", "path", "state"},
    )


@migrations()
def m012_mail_outbox(db):
    # E-mail that is not lost (issue 11 item 9): every e-mail the box composes for people
    # (callback requests, voice messages, follow-ups) waits here until a server accepted it.
    # ``key`` makes enqueueing idempotent (one e-mail per callback request, per voice message).
    db["mail_outbox"].create(
        {
            "id": int,
            "key": str,
            "kind": str,
            "created_at": str,
            "recipients": str,  # JSON list of addresses
            "subject": str,
            "body": str,
            "attachments": str,  # JSON list of {"name", "mime", "path"}
            "state": str,  # pending, sent, failed (refused for good: see last_error)
            "attempts": int,
            "next_try_at": str,
            "last_error": str,
            "sent_at": str,
            "message_id": str,
        },
        pk="id",
        not_null={"key", "kind", "created_at", "recipients", "subject", "body", "state"},
        defaults={"attempts": 0},
    )
    db["mail_outbox"].create_index(["key"], unique=True)
    db["mail_outbox"].create_index(["state", "next_try_at"])


@migrations()
def m013_selftest(db):
    # The self-test call (issue 12 item 1): the box calls its own public number over its other
    # line. The answering side's call is stored like any other, marked, so reports and the
    # missed-call list can leave it out.
    db["calls"].add_column("purpose", str)
    db["selftest_calls"].create(
        {
            "id": int,
            "started_at": str,
            "ended_at": str,
            "trigger": str,  # schedule | manual | button | web
            "target": str,  # the line whose public number was called: gsm | trunk
            "line": str,  # the line the call went out on
            "number": str,  # E.164 dialled
            "result": str,  # running | PASS | FAIL | SKIP
            "reason": str,  # one sentence for a person, in the box's language
            "message": str,  # the reason by message id (JSON), for other languages
            "checks": str,  # JSON list of {"name", "result", "why"}
            "recording": str,  # what the calling side heard (WAV), while kept
            "answered_s": float,
            "in_call_id": int,  # the answering side's call (calls.id)
        },
        pk="id",
        not_null={"started_at", "trigger", "target", "result"},
    )
    db["selftest_calls"].create_index(["started_at"])


# Migrations renamed after boxes had applied them under the old name (sqlite-utils records a
# migration by its name). Two were once both numbered m008; the later is m009 now.
RENAMED = {"m008_notify": "m009_notify"}


def _follow_renames(db) -> None:
    if not db[migrations.migrations_table].exists():
        return
    for old, new in RENAMED.items():
        db.execute(
            f"UPDATE {migrations.migrations_table} SET name = ? WHERE migration_set = ? AND name = ?",
            [new, migrations.name, old],
        )


def known_migrations() -> list[str]:
    return [m.name for m in migrations._migrations]


def _backup_before_migrating(db, path: Path) -> Path | None:
    """An upgrade changes the schema: first a snapshot, ``backups/pre-<migration>-<time>.db``
    beside the database, so a failed or unwanted upgrade can be undone (``centralka restore``)."""
    if not migrations.applied(db):
        return None  # a new database: nothing to keep
    pending = migrations.pending(db)
    if not pending:
        return None
    from . import backup

    return backup.take(db, path.parent / "backups" / f"{backup.named(f'pre-{pending[0].name}-')}.db")


def open_db(path: str | Path | None) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate. ``None`` gives an in-memory database for tests."""
    try:
        if path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        db = sqlite_utils.Database(conn)
        _follow_renames(db)
        if path is not None:
            _backup_before_migrating(db, Path(path))
        migrations.apply(db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"database {path or ':memory:'}: {exc}") from exc
    return db


def one(db, sql: str, params=()):
    """The first row of a query as a tuple (None when there is none)."""
    return db.execute(sql, list(params)).fetchone()


def dicts(db, sql: str, params=()) -> list[dict]:
    """Every row of a query as a dict keyed by column name."""
    cur = db.execute(sql, list(params))
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


class transaction:
    """``with transaction(db):`` — all statements inside commit together or not at all.

    The connection runs in autocommit mode (each statement is durable on its own, which is what
    the call journey wants); this groups the few writes that must not be split by a power cut.
    Inside another one it is a savepoint: a booking that queues its SMS and its e-mail (each
    a transaction of its own) commits all three at once.
    """

    def __init__(self, db):
        self.conn = db.conn
        self.savepoint: str | None = None

    def __enter__(self):
        if self.conn.in_transaction:
            self.savepoint = f"nested_{id(self):x}"
            self.conn.execute(f"SAVEPOINT {self.savepoint}")
        else:
            self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.savepoint is not None:
            if exc_type is not None:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {self.savepoint}")
            self.conn.execute(f"RELEASE SAVEPOINT {self.savepoint}")
        else:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False


def integrity_problems(db) -> list[str]:
    """``PRAGMA integrity_check``: an empty list when the database is sound."""
    try:
        rows = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]  # so damaged the check itself cannot run
    return [] if rows == ["ok"] else rows
