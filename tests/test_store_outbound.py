"""store/outbound.py: the toll-fraud guard's counts over outbound_calls, on a real in-memory database."""

from __future__ import annotations

from appliance.store import outbound
from appliance.store.db import open_db

A, B = "+48600123456", "+48221234567"


def _attempt(db, number, at, outcome="failed"):
    db["outbound_calls"].insert(
        {"at": at, "number": number, "purpose": "callback", "line": "trunk", "outcome": outcome}
    )


def test_count_since_counts_every_attempt_in_the_window_per_number_and_in_total():
    db = open_db(None)
    since = "2027-01-01T10:00:00.000+00:00"
    assert outbound.count_since(db, since) == 0
    _attempt(db, A, "2027-01-01T09:59:59.999+00:00")  # just before the hour: not counted
    _attempt(db, A, since)  # exactly at its start: counted
    _attempt(db, A, "2027-01-01T10:30:00.000+00:00", outcome="refused")  # refused attempts count too
    _attempt(db, B, "2027-01-01T10:59:00.000+00:00", outcome="answered")
    assert outbound.count_since(db, since) == 3
    assert outbound.count_since(db, since, A) == 2
    assert outbound.count_since(db, since, B) == 1
    assert outbound.count_since(db, since, "+48500000000") == 0
    assert outbound.count_since(db, "2027-01-01T00:00:00.000+00:00", A) == 3
