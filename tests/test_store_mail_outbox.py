"""The mail outbox's table (appliance/store/mail_outbox.py) on a real database."""

import pytest

from appliance.clock import stamp
from appliance.store import mail_outbox
from appliance.store.db import open_db

T0 = 1_741_939_500.0  # 2025-03-14 08:05 UTC
DESK = ["rejestracja@przychodnia.example"]
RECORDING = {"name": "wiadomość-7.wav", "mime": "audio/wav", "path": "/var/lib/centralka/voicemail/7.wav"}


@pytest.fixture
def db():
    return open_db(None)


def queue(db, key="callback:1:request:1", at=T0, **kw):
    values = {
        "kind": "callback",
        "recipients": DESK,
        "subject": "[Centralka] Oddzwonić: 600 123 456 — Rejestracja",
        "body": "Osoba dzwoniąca prosi o oddzwonienie.\n",
    }
    values.update(kw)
    return mail_outbox.enqueue(db, key=key, at=stamp(at), **values)


def test_a_queued_email_keeps_its_recipients_and_attachments(db):
    mail_id = queue(db, kind="voicemail", recipients=DESK + ["kierownik@przychodnia.example"], attachments=[RECORDING])

    row = mail_outbox.get(db, mail_id)
    assert row["state"] == "pending"
    assert row["attempts"] == 0
    assert row["recipients"] == ["rejestracja@przychodnia.example", "kierownik@przychodnia.example"]
    assert row["attachments"] == [RECORDING]
    assert row["created_at"] == "2025-03-14T08:05:00.000+00:00"
    assert row["next_try_at"] is None and row["sent_at"] is None
    assert mail_outbox.pending_count(db) == 1


def test_the_same_key_twice_is_one_email_and_the_second_changes_nothing(db):
    first = queue(db)
    second = queue(db, subject="something else", recipients=["x@example.org"], at=T0 + 60)

    assert second == first
    row = mail_outbox.get(db, first)
    assert row["subject"] == "[Centralka] Oddzwonić: 600 123 456 — Rejestracja"
    assert row["recipients"] == DESK
    assert row["created_at"] == stamp(T0)
    assert mail_outbox.pending_count(db) == 1

    mail_outbox.mark_sent(db, first, stamp(T0 + 5), "<m@x>")
    assert queue(db) == first  # a sent e-mail is not queued again either
    assert mail_outbox.get(db, first)["state"] == "sent"
    assert mail_outbox.pending_count(db) == 0


def test_due_is_pending_rows_whose_time_has_come_oldest_first(db):
    late = queue(db, key="b", at=T0 + 10)
    early = queue(db, key="a", at=T0)
    waiting = queue(db, key="c", at=T0 + 20)
    done = queue(db, key="d", at=T0 + 30)
    refused = queue(db, key="e", at=T0 + 40)
    mail_outbox.mark_retry(db, waiting, "451 4.3.0 try later", stamp(T0 + 300))
    mail_outbox.mark_sent(db, done, stamp(T0 + 31), "<d@x>")
    mail_outbox.mark_failed(db, refused, "550 5.1.1 no such mailbox")

    now = stamp(T0 + 100)
    assert [r["id"] for r in mail_outbox.due(db, now)] == [early, late]
    assert [r["id"] for r in mail_outbox.due(db, stamp(T0 + 300))] == [early, late, waiting]  # at the time: due
    assert [r["id"] for r in mail_outbox.due(db, now, limit=1)] == [early]
    assert mail_outbox.pending_count(db) == 3


def test_marks_count_attempts_and_keep_what_happened(db):
    mail_id = queue(db)

    mail_outbox.mark_retry(db, mail_id, "127.0.0.1:2525 closed the connection", stamp(T0 + 30))
    mail_outbox.mark_retry(db, mail_id, "451 4.7.1 greylisted", stamp(T0 + 90))
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 2, "451 4.7.1 greylisted")
    assert row["next_try_at"] == stamp(T0 + 90)

    mail_outbox.mark_sent(db, mail_id, stamp(T0 + 95), "<centralka.callback@przychodnia.example>")
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"], row["sent_at"]) == ("sent", 3, stamp(T0 + 95))
    assert row["message_id"] == "<centralka.callback@przychodnia.example>"
    assert row["last_error"] is None and row["next_try_at"] is None


def test_a_note_on_a_sent_email_is_kept(db):
    mail_id = queue(db, attachments=[RECORDING])
    mail_outbox.mark_sent(db, mail_id, stamp(T0), "<m@x>", note="attachment 'wiadomość-7.wav' lost")
    assert mail_outbox.get(db, mail_id)["last_error"] == "attachment 'wiadomość-7.wav' lost"


def test_a_refused_email_stays_failed(db):
    mail_id = queue(db)
    mail_outbox.mark_failed(db, mail_id, "550 5.1.1 <rejestracja@przychodnia.example>: no such mailbox")

    mail_outbox.mark_retry(db, mail_id, "later", stamp(T0 + 30))  # too late: it is settled
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"], row["next_try_at"]) == ("failed", 1, None)
    assert row["last_error"] == "550 5.1.1 <rejestracja@przychodnia.example>: no such mailbox"
    assert mail_outbox.due(db, stamp(T0 + 3600)) == []
    assert mail_outbox.pending_count(db) == 0


def test_listing_is_newest_first_in_every_state(db):
    ids = [queue(db, key=f"k{n}", at=T0 + n) for n in range(4)]
    mail_outbox.mark_failed(db, ids[1], "550")

    listed = mail_outbox.listing(db, limit=3)
    assert [r["id"] for r in listed] == [ids[3], ids[2], ids[1]]
    assert listed[2]["state"] == "failed"
    assert listed[0]["recipients"] == DESK


def test_an_email_needs_a_key(db):
    with pytest.raises(ValueError):
        queue(db, key="")


@pytest.mark.parametrize(
    "recipients, says",
    [
        ("rejestracja@przychodnia.example", "not one text"),  # would be one recipient per letter
        ([], "non-empty list"),
        (["rejestracja@przychodnia.example", ""], "non-empty list"),
    ],
)
def test_recipients_must_be_a_list_of_addresses(db, recipients, says):
    with pytest.raises(ValueError, match=says):
        queue(db, recipients=recipients)
    assert mail_outbox.listing(db) == []


def test_a_retry_for_the_recipients_still_owed_it(db):
    mail_id = queue(db, recipients=DESK + ["kierownik@przychodnia.example"])

    mail_outbox.mark_retry(
        db,
        mail_id,
        "kierownik@przychodnia.example refused: 450 busy",
        stamp(T0 + 30),
        recipients=["kierownik@przychodnia.example"],
        message_id="<m@x>",
    )

    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"], row["next_try_at"]) == ("pending", 1, stamp(T0 + 30))
    assert row["recipients"] == ["kierownik@przychodnia.example"]
    assert row["message_id"] == "<m@x>"
    with pytest.raises(ValueError, match="at least one recipient"):
        mail_outbox.mark_retry(db, mail_id, "x", stamp(T0 + 60), recipients=[])
