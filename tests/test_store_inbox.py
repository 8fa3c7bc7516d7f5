"""store/inbox.py: incoming SMS and the parts of multipart ones, on a real in-memory database.
The joining rules are tested in test_sms_outbox.py; here: the rows, the order, the matches."""

from __future__ import annotations

import pytest

from appliance.store import inbox
from appliance.store.db import open_db

A, B = "+48600123456", "+48600999888"


@pytest.fixture
def db():
    return open_db(None)


def _message(db, number=A, text="Dzień dobry", *, sent_at="S1", received_at="R1", parts=1, complete=1) -> int:
    row = {
        "number": number,
        "number_kind": "e164",
        "text": text,
        "sent_at": sent_at,
        "received_at": received_at,
        "parts": parts,
        "complete": complete,
    }
    return inbox.add_message(db, row)


def _part(db, seq, *, number=A, ref=7, total=3, text=None, sent_at="S1", received_at="2027-01-01T10:00:00.000+00:00"):
    row = {
        "number": number,
        "ref": ref,
        "total": total,
        "seq": seq,
        "text": text if text is not None else f"part {seq}",
        "sent_at": sent_at,
        "received_at": received_at,
        "group_id": None,
    }
    part_id = inbox.add_part(db, row)
    inbox.set_group(db, part_id, part_id)
    return part_id


def test_messages_are_stored_got_and_listed_newest_first(db):
    assert inbox.last_id(db) == 0
    ids = [_message(db, text=f"m{i}") for i in range(3)]
    row = inbox.get_message(db, ids[0])
    assert (row["number"], row["text"], row["parts"], row["complete"], row["forwarded_at"]) == (A, "m0", 1, 1, None)
    assert inbox.get_message(db, ids[-1] + 1) is None
    assert [r["id"] for r in inbox.list_messages(db)] == ids[::-1]
    assert [r["id"] for r in inbox.list_messages(db, limit=2)] == ids[:0:-1]
    assert inbox.last_id(db) == ids[-1]


def test_a_single_part_duplicate_needs_the_same_sender_time_and_text(db):
    first = _message(db, A, "Proszę o telefon", sent_at="S1")
    _message(db, A, "Proszę o telefon", sent_at="S2", parts=2)  # a joined multipart never matches
    assert inbox.find_single_duplicate(db, A, "S1", "Proszę o telefon") == first
    assert inbox.find_single_duplicate(db, A, "S2", "Proszę o telefon") is None
    assert inbox.find_single_duplicate(db, B, "S1", "Proszę o telefon") is None
    assert inbox.find_single_duplicate(db, A, "S1", "Proszę o telefon!") is None


def test_forwarding_marks_and_what_is_left_to_forward(db):
    ids = [_message(db, text=f"m{i}") for i in range(4)]
    assert [r["id"] for r in inbox.not_forwarded(db, 0)] == ids
    assert [r["id"] for r in inbox.not_forwarded(db, ids[0])] == ids[1:]  # only after the given id
    inbox.mark_forwarded(db, ids[2], at="2027-01-01T10:00:00.000+00:00")
    inbox.mark_forwarded(db, ids[3])
    assert inbox.get_message(db, ids[2])["forwarded_at"] == "2027-01-01T10:00:00.000+00:00"
    assert inbox.get_message(db, ids[3])["forwarded_at"] > "2020"  # now, as the store writes it
    assert [r["id"] for r in inbox.not_forwarded(db, 0)] == ids[:2]


def test_a_part_duplicate_matches_every_field_including_a_missing_smsc_time(db):
    since = "2027-01-01T00:00:00.000+00:00"
    part = _part(db, 2, sent_at=None)
    assert inbox.find_part_duplicate(db, A, 7, 3, 2, "part 2", None, since) == {"id": part, "message_id": None}
    assert inbox.find_part_duplicate(db, A, 7, 3, 2, "part 2", "S1", since) is None  # NULL is not "S1"
    assert inbox.find_part_duplicate(db, A, 7, 3, 1, "part 2", None, since) is None
    assert inbox.find_part_duplicate(db, A, 8, 3, 2, "part 2", None, since) is None
    assert inbox.find_part_duplicate(db, A, 7, 3, 2, "part 2", None, "2027-01-01T10:00:00.001+00:00") is None
    msg = _message(db, parts=3)
    inbox.link_parts(db, [part], msg)
    assert inbox.find_part_duplicate(db, A, 7, 3, 2, "part 2", None, since) == {"id": part, "message_id": msg}


def test_open_group_is_the_oldest_unjoined_group_still_missing_that_part(db):
    since = "2027-01-01T00:00:00.000+00:00"
    assert inbox.open_group_for(db, A, 7, 3, 1, since) is None
    g1 = _part(db, 1)
    assert inbox.open_group_for(db, A, 7, 3, 2, since) == g1
    assert inbox.open_group_for(db, A, 7, 3, 1, since) is None  # g1 has its part 1 already: a new group
    assert inbox.open_group_for(db, B, 7, 3, 2, since) is None
    assert inbox.open_group_for(db, A, 7, 2, 2, since) is None  # another total is another message
    assert inbox.open_group_for(db, A, 7, 3, 2, "2027-01-02T00:00:00.000+00:00") is None  # too old to join
    g2 = _part(db, 1)
    assert inbox.open_group_for(db, A, 7, 3, 2, since) == g1  # the oldest first
    row = {"number": A, "ref": 7, "total": 3, "seq": 2, "text": "x", "sent_at": "S1", "received_at": since}
    inbox.add_part(db, {**row, "group_id": g1})
    assert inbox.open_group_for(db, A, 7, 3, 2, since) == g2
    inbox.link_parts(db, [p["id"] for p in inbox.group_parts(db, g2)], _message(db))
    assert inbox.open_group_for(db, A, 7, 3, 2, since) is None  # joined groups are closed


def test_group_parts_by_position_and_link_parts(db):
    third = _part(db, 3)
    row = {"number": A, "ref": 7, "total": 3, "seq": 1, "text": "one", "sent_at": "S1", "received_at": "R"}
    first = inbox.add_part(db, {**row, "group_id": third})
    other = _part(db, 2, ref=9)
    assert [(p["id"], p["seq"]) for p in inbox.group_parts(db, third)] == [(first, 1), (third, 3)]
    msg = _message(db, parts=3, complete=0)
    inbox.link_parts(db, [first, third], msg)
    assert {p["message_id"] for p in inbox.group_parts(db, third)} == {msg}
    assert inbox.group_parts(db, other)[0]["message_id"] is None


def test_stale_groups_are_the_unjoined_ones_whose_newest_part_is_older_than_the_cutoff(db):
    old = _part(db, 1, received_at="2027-01-01T10:00:00.000+00:00")
    other = _part(db, 2, ref=8, received_at="2027-01-01T10:00:00.000+00:00")
    fresh = _part(db, 1, ref=9, received_at="2027-01-01T10:00:00.000+00:00")
    row = {"number": A, "ref": 9, "total": 3, "seq": 2, "text": "x", "sent_at": "S1"}
    inbox.add_part(db, {**row, "received_at": "2027-01-02T10:00:00.000+00:00", "group_id": fresh})
    cutoff = "2027-01-02T00:00:00.000+00:00"
    stale = inbox.stale_groups(db, cutoff)
    assert sorted(stale) == [(old, 3), (other, 3)]
    inbox.link_parts(db, [old], _message(db))
    assert inbox.stale_groups(db, cutoff) == [(other, 3)]
