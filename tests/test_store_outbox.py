"""store/outbox.py: every query of the SMS outbox on a real (in-memory) database opened like the box
opens it. The states and rules are tested in test_sms_outbox.py; here: the rows, the order, the
counts, and that the multi-row changes are all-or-nothing."""

from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

from appliance.store import outbox
from appliance.store.db import open_db

A, B = "+48600123456", "+48600999888"


@pytest.fixture
def db():
    return open_db(None)


def _msg(db, number=A, *, created_at="2027-01-01T10:00:00.000+00:00", state="queued", next_at=None, **extra) -> int:
    row = {
        "created_at": created_at,
        "kind": "manual",
        "number": number,
        "text": "Dzień dobry",
        "original_text": "Dzień dobry",
        "encoding": "ucs2",
        "parts": 1,
        "state": state,
        "attempts": 0,
        "next_at": next_at or created_at,
        **extra,
    }
    return outbox.add_message(db, row)


def _fail_inserts_into(db, table: str) -> None:
    """The next insert into ``table`` fails (as a full disk would): the change must not be half-made."""
    db.execute(f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'disk full'); END")


def test_synchronous_reports_the_connections_setting(db):
    assert outbox.synchronous(db) == 2
    loose = sqlite_utils.Database(memory=True)
    loose.execute("PRAGMA synchronous=OFF")
    assert outbox.synchronous(loose) == 0


def test_add_and_get_a_message_and_its_dedupe_key(db):
    sms_id = _msg(db, dedupe_key="callback:42")
    row = outbox.get_message(db, sms_id)
    assert (row["id"], row["number"], row["state"], row["text"], row["attempts"]) == (
        sms_id,
        A,
        "queued",
        "Dzień dobry",
        0,
    )
    assert outbox.get_message(db, sms_id + 1) is None
    assert outbox.find_by_dedupe_key(db, "callback:42") == sms_id
    assert outbox.find_by_dedupe_key(db, "callback:43") is None
    with pytest.raises(sqlite3.IntegrityError):  # the unique index: one message per key
        _msg(db, dedupe_key="callback:42")


def test_count_since_counts_a_rolling_window_per_number_and_in_total_without_cancelled(db):
    _msg(db, A, created_at="2027-01-01T09:59:59.999+00:00")  # before the window
    _msg(db, A, created_at="2027-01-01T10:00:00.000+00:00")  # exactly at its start: counted
    _msg(db, A, created_at="2027-01-01T11:00:00.000+00:00", state="cancelled")
    _msg(db, A, created_at="2027-01-01T12:00:00.000+00:00", state="failed")
    _msg(db, B, created_at="2027-01-01T12:00:00.000+00:00")
    since = "2027-01-01T10:00:00.000+00:00"
    assert outbox.count_since(db, since, A) == 2
    assert outbox.count_since(db, since, B) == 1
    assert outbox.count_since(db, since) == 3
    assert outbox.count_since(db, "2027-01-02T00:00:00.000+00:00") == 0


def test_list_messages_newest_first_with_a_limit_and_a_state_filter(db):
    ids = [_msg(db, state=s) for s in ("queued", "sent", "failed", "sent")]
    assert [r["id"] for r in outbox.list_messages(db)] == ids[::-1]
    assert [r["id"] for r in outbox.list_messages(db, limit=2)] == ids[:1:-1]
    assert [r["id"] for r in outbox.list_messages(db, states=("sent", "failed"))] == ids[:0:-1]
    assert outbox.list_messages(db, states=("delivered",)) == []
    assert [r["id"] for r in outbox.list_messages(db, states=())] == ids[::-1]  # empty: no filter


def test_next_due_is_the_oldest_due_queued_message(db):
    late = _msg(db, next_at="2027-01-01T10:05:00.000+00:00")
    first = _msg(db, next_at="2027-01-01T10:01:00.000+00:00")
    tie = _msg(db, next_at="2027-01-01T10:01:00.000+00:00")
    _msg(db, state="sent", next_at="2027-01-01T09:00:00.000+00:00")
    assert outbox.next_due(db, "2027-01-01T10:00:59.999+00:00") is None
    assert outbox.next_due(db, "2027-01-01T10:01:00.000+00:00")["id"] == first  # then the lower id of a tie
    assert outbox.next_queued_at(db) == "2027-01-01T10:01:00.000+00:00"
    outbox.claim(db, first, "T")
    assert outbox.next_due(db, "2027-01-01T10:01:00.000+00:00")["id"] == tie
    outbox.claim(db, tie, "T")
    assert outbox.next_due(db, "2027-01-01T10:04:00.000+00:00") is None
    assert outbox.next_due(db, "2027-01-01T10:05:00.000+00:00")["id"] == late
    outbox.claim(db, late, "T")
    assert outbox.next_queued_at(db) is None


def test_ids_in_state_uncertain_messages_and_the_newest_uncertain_to_a_number(db):
    s1 = _msg(db, A, state="sending")
    u1 = _msg(db, A, state="uncertain")
    s2 = _msg(db, B, state="sending")
    u2 = _msg(db, A, state="uncertain")
    u3 = _msg(db, B, state="uncertain")
    assert outbox.ids_in_state(db, "sending") == [s1, s2]
    assert outbox.ids_in_state(db, "delivered") == []
    assert outbox.uncertain_messages(db) == [{"id": u1, "number": A}, {"id": u2, "number": A}, {"id": u3, "number": B}]
    assert outbox.newest_uncertain_to(db, A) == u2
    assert outbox.newest_uncertain_to(db, "+48500000000") is None


def test_claim_commits_sending_and_an_open_attempt_once(db):
    sms_id = _msg(db)
    attempt = outbox.claim(db, sms_id, "2027-01-01T10:00:01.000+00:00")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["attempts"]) == ("sending", 1)
    assert outbox.attempts_of(db, sms_id) == [
        {
            "id": attempt,
            "sms_id": sms_id,
            "started_at": "2027-01-01T10:00:01.000+00:00",
            "ended_at": None,
            "outcome": None,
            "detail": None,
        }
    ]
    assert outbox.claim(db, sms_id, "T2") is None  # not queued any more: never claimed twice
    assert outbox.get_message(db, sms_id)["attempts"] == 1 and len(outbox.attempts_of(db, sms_id)) == 1
    assert outbox.claim(db, sms_id + 100, "T2") is None


def test_a_claim_that_cannot_write_its_attempt_leaves_the_message_queued(db):
    sms_id = _msg(db)
    _fail_inserts_into(db, "sms_attempts")
    with pytest.raises(sqlite3.DatabaseError):
        outbox.claim(db, sms_id, "T1")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["attempts"]) == ("queued", 0)


def test_attempt_rows_end_start_and_the_last_doubtful_start(db):
    sms_id = _msg(db)
    first = outbox.claim(db, sms_id, "T1")
    assert outbox.attempt_started_at(db, first) == "T1"
    outbox.end_attempt(db, first, "T2", "interrupted", "box stopped")
    outbox.add_attempt(db, sms_id, "T5", "T5", "maybe_sent", "timeout")
    outbox.add_attempt(db, sms_id, "T9", "T9", "resend", "by the admin")
    rows = outbox.attempts_of(db, sms_id)
    assert [(r["started_at"], r["ended_at"], r["outcome"], r["detail"]) for r in rows] == [
        ("T1", "T2", "interrupted", "box stopped"),
        ("T5", "T5", "maybe_sent", "timeout"),
        ("T9", "T9", "resend", "by the admin"),
    ]
    assert outbox.last_doubtful_start(db, sms_id) == "T5"  # "resend" does not count
    assert outbox.last_doubtful_start(db, _msg(db)) is None


def test_mark_sent_mark_resolved_and_set_final_state(db):
    sms_id = _msg(db, state="sending", error="attempt 1 failed")
    outbox.mark_sent(db, sms_id, "T3")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["sent_at"], row["error"], row["finished_at"]) == ("sent", "T3", None, None)
    outbox.set_final_state(db, sms_id, "delivered", "T4")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["finished_at"]) == ("delivered", "T4")
    doubtful = _msg(db, state="uncertain", error="maybe sent")
    outbox.mark_resolved(db, doubtful, "T1", "resolved by a report")
    row = outbox.get_message(db, doubtful)
    assert (row["state"], row["sent_at"], row["error"]) == ("sent", "T1", "resolved by a report")


def test_finish_sets_the_final_state_and_closes_the_attempt_together(db):
    sms_id = _msg(db)
    attempt = outbox.claim(db, sms_id, "T1")
    outbox.finish(db, sms_id, "failed", "refused: CMS 28", "T2", attempt_id=attempt, outcome="permanent", ended_at="T3")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["error"], row["finished_at"]) == ("failed", "refused: CMS 28", "T2")
    (a,) = outbox.attempts_of(db, sms_id)
    assert (a["ended_at"], a["outcome"], a["detail"]) == ("T3", "permanent", "refused: CMS 28")


def test_finish_only_from_a_state_leaves_other_states_alone(db):
    queued, sent = _msg(db), _msg(db, state="sent")
    for sms_id in (queued, sent):
        outbox.finish(db, sms_id, "expired", "too old", "T2", only_from="queued")
    assert outbox.get_message(db, queued)["state"] == "expired"
    row = outbox.get_message(db, sent)
    assert (row["state"], row["error"], row["finished_at"]) == ("sent", None, None)
    assert outbox.attempts_of(db, queued) == []  # no attempt given: none touched


def test_requeue_puts_it_back_for_later_and_closes_the_attempt(db):
    sms_id = _msg(db)
    attempt = outbox.claim(db, sms_id, "T1")
    outbox.requeue(db, sms_id, "T9", "attempt 1 failed, retrying: no signal", attempt, "transient", "no signal", "T2")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["next_at"], row["error"], row["attempts"]) == (
        "queued",
        "T9",
        "attempt 1 failed, retrying: no signal",
        1,
    )
    (a,) = outbox.attempts_of(db, sms_id)
    assert (a["ended_at"], a["outcome"], a["detail"]) == ("T2", "transient", "no signal")


def test_mark_uncertain_records_the_parts_that_went_out_in_order(db):
    sms_id = _msg(db, parts=3)
    attempt = outbox.claim(db, sms_id, "T1")
    outbox.mark_uncertain(db, sms_id, "2 of 3 part(s) went out", [17, 18], "T2", attempt, "part 3 refused", "T3")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["error"]) == ("uncertain", "2 of 3 part(s) went out")
    assert [(p["seq"], p["mr"], p["status"], p["sent_at"]) for p in outbox.parts_of(db, sms_id)] == [
        (1, 17, "sent", "T2"),
        (2, 18, "sent", "T2"),
    ]
    (a,) = outbox.attempts_of(db, sms_id)
    assert (a["ended_at"], a["outcome"], a["detail"]) == ("T3", "maybe_sent", "part 3 refused")


def test_mark_uncertain_is_all_or_nothing(db):
    sms_id = _msg(db, parts=2)
    attempt = outbox.claim(db, sms_id, "T1")
    _fail_inserts_into(db, "sms_parts")
    with pytest.raises(sqlite3.DatabaseError):
        outbox.mark_uncertain(db, sms_id, "maybe", [1], "T2", attempt, "timeout", "T3")
    assert outbox.get_message(db, sms_id)["state"] == "sending"
    assert outbox.attempts_of(db, sms_id)[0]["outcome"] is None


def test_mark_interrupted_closes_only_the_open_attempts_of_a_sending_message(db):
    sms_id = _msg(db)
    outbox.add_attempt(db, sms_id, "T0", "T0", "transient", "no signal")
    outbox.claim(db, sms_id, "T1")
    outbox.mark_interrupted(db, sms_id, "the box stopped", "T5")
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["error"]) == ("uncertain", "the box stopped")
    assert [(a["ended_at"], a["outcome"], a["detail"]) for a in outbox.attempts_of(db, sms_id)] == [
        ("T0", "transient", "no signal"),
        ("T5", "interrupted", "the box stopped"),
    ]
    sent = _msg(db, state="sent")
    outbox.mark_interrupted(db, sent, "the box stopped", "T5")
    assert outbox.get_message(db, sent)["state"] == "sent"  # only a message still "sending"


def test_admin_change_applies_only_from_allowed_states_and_logs_the_decision(db):
    sms_id = _msg(db, state="failed", error="refused")
    was = outbox.admin_change(
        db, sms_id, ("failed", "uncertain"), {"state": "queued", "error": None, "next_at": "T7"}, "resend", "why", "T7"
    )
    assert was == "failed"
    row = outbox.get_message(db, sms_id)
    assert (row["state"], row["error"], row["next_at"]) == ("queued", None, "T7")
    assert [(a["started_at"], a["ended_at"], a["outcome"], a["detail"]) for a in outbox.attempts_of(db, sms_id)] == [
        ("T7", "T7", "resend", "why")
    ]
    # Not allowed from "queued": the state is returned, nothing written.
    assert outbox.admin_change(db, sms_id, ("failed",), {"state": "cancelled"}, "cancelled", "no", "T8") == "queued"
    assert outbox.get_message(db, sms_id)["state"] == "queued" and len(outbox.attempts_of(db, sms_id)) == 1
    assert outbox.admin_change(db, sms_id + 1, ("failed",), {"state": "queued"}, "resend", "why", "T9") is None


def test_admin_change_is_all_or_nothing(db):
    sms_id = _msg(db, state="uncertain")
    _fail_inserts_into(db, "sms_attempts")
    with pytest.raises(sqlite3.DatabaseError):
        outbox.admin_change(db, sms_id, ("uncertain",), {"state": "cancelled"}, "cancelled", "why", "T1")
    assert outbox.get_message(db, sms_id)["state"] == "uncertain"


def test_parts_statuses_and_supersede(db):
    sms_id = _msg(db, parts=2)
    second = outbox.add_part(db, sms_id, 2, 8, "T1")
    first = outbox.add_part(db, sms_id, 1, 7, "T1")
    late = outbox.add_part(db, sms_id, None, 9, None)  # adopted from a report: no position
    assert [p["id"] for p in outbox.parts_of(db, sms_id)] == [late, first, second]  # by seq (NULL first), then id
    outbox.set_part_status(db, first, "delivered", "T4")
    part = next(p for p in outbox.parts_of(db, sms_id) if p["id"] == first)
    assert (part["status"], part["report_at"]) == ("delivered", "T4")
    assert sorted(outbox.live_part_statuses(db, sms_id)) == ["delivered", "sent", "sent"]
    outbox.supersede_parts(db, sms_id)
    assert outbox.live_part_statuses(db, sms_id) == []
    assert {p["status"] for p in outbox.parts_of(db, sms_id)} == {"superseded"}


def test_part_for_report_prefers_parts_still_sent_then_the_newest_and_respects_number_and_window(db):
    old = _msg(db, A)
    new = _msg(db, A)
    other = _msg(db, B)
    p_old = outbox.add_part(db, old, 1, 5, "2027-01-01T10:00:00.000+00:00")
    p_new = outbox.add_part(db, new, 1, 5, "2027-01-02T10:00:00.000+00:00")
    p_other = outbox.add_part(db, other, 1, 5, "2027-01-03T10:00:00.000+00:00")
    since = "2027-01-01T00:00:00.000+00:00"
    assert outbox.part_for_report(db, 5, since) == (p_other, other)  # no number: the newest
    assert outbox.part_for_report(db, 5, since, A) == (p_new, new)
    outbox.set_part_status(db, p_new, "delivered", "T")
    assert outbox.part_for_report(db, 5, since, A) == (p_old, old)  # a part still "sent" goes first
    assert outbox.part_for_report(db, 5, "2027-01-01T12:00:00.000+00:00", A) == (p_new, new)  # old is outside
    outbox.supersede_parts(db, new)
    assert outbox.part_for_report(db, 5, "2027-01-01T12:00:00.000+00:00", A) is None
    assert outbox.part_for_report(db, 6, since) is None
    timeless = outbox.add_part(db, old, None, 6, None)
    assert outbox.part_for_report(db, 6, "2099-01-01T00:00:00.000+00:00", A) == (timeless, old)


def test_reports_are_stored_linked_and_found_when_unmatched(db):
    sms_id = _msg(db, A)
    part = outbox.add_part(db, sms_id, 1, 3, "T1")
    r1 = outbox.add_report(db, "2027-01-01T10:00:00.000+00:00", 3, A, "delivered", "T2")
    r2 = outbox.add_report(db, "2027-01-01T10:00:01.000+00:00", 3, None, "pending", None)
    r3 = outbox.add_report(db, "2027-01-01T10:00:02.000+00:00", 3, B, "delivered", None)
    r4 = outbox.add_report(db, "2027-01-01T10:00:03.000+00:00", 4, A, "undelivered", None)
    since = "2027-01-01T10:00:00.000+00:00"
    # The newest unmatched one for this MR naming this number or none.
    assert outbox.early_report(db, 3, A, since) == {"id": r2, "status": "pending", "at": None}
    assert [r["id"] for r in outbox.unmatched_reports_to(db, A, since)] == [r1, r4]  # oldest first
    assert outbox.unmatched_reports_to(db, A, "2027-01-01T10:00:00.001+00:00")[0]["id"] == r4
    outbox.link_report(db, r2, sms_id, part)
    assert outbox.early_report(db, 3, A, since) == {"id": r1, "status": "delivered", "at": "T2"}
    outbox.link_report(db, r1, sms_id, part)
    assert outbox.early_report(db, 3, A, since) is None  # r3 names another number
    assert outbox.early_report(db, 3, B, since)["id"] == r3
    linked = db.execute("SELECT sms_id, part_id FROM sms_reports WHERE id = ?", [r1]).fetchone()
    assert linked == (sms_id, part)


@pytest.mark.parametrize(
    "change",
    [
        lambda db, sms_id, a: outbox.finish(
            db, sms_id, "failed", "why", "T2", attempt_id=a, outcome="x", ended_at="T2"
        ),
        lambda db, sms_id, a: outbox.requeue(db, sms_id, "T9", "retrying", a, "transient", "why", "T2"),
        lambda db, sms_id, a: outbox.mark_interrupted(db, sms_id, "stopped", "T2"),
    ],
    ids=["finish", "requeue", "mark_interrupted"],
)
def test_a_state_change_whose_attempt_cannot_be_closed_is_not_made(db, change):
    sms_id = _msg(db)
    attempt = outbox.claim(db, sms_id, "T1")
    db.execute("CREATE TRIGGER fail_end BEFORE UPDATE ON sms_attempts BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.DatabaseError):
        change(db, sms_id, attempt)
    assert outbox.get_message(db, sms_id)["state"] == "sending"
