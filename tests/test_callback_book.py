"""The callback book and the box's tries, on a real database with a manual clock: what the
staff's list shows, when a promise is escalated, how tries are counted and when the patient is
told we could not reach them. (The calls themselves: tests/test_callbacks.py.)"""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from appliance.clock import stamp
from appliance.config import load_settings
from appliance.flow.callback_call import AGENT_PAUSE_S, CallbackCaller
from appliance.flow.callbacks import CallbackBook, CallbackError
from appliance.services import Services
from appliance.store import callbacks as store
from appliance.store import missed as store_missed
from appliance.store.db import open_db
from appliance.testing.clock import ManualClock

WARSAW = ZoneInfo("Europe/Warsaw")
NUMBER = "+48600123456"


@pytest.fixture
def svc(tmp_path):
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(
        f'[box]\ndata_dir = "{tmp_path}"\nclinic_name = "Przychodnia Zdrowie"\n'
        "[callbacks]\nattempts = 2\nretry_after_s = 600\n"
    )
    s = Services(settings=load_settings(cfg, env={}), db=open_db(None), clock=ManualClock("2026-12-03T10:00:00+01:00"))
    s.callbacks = CallbackBook(s)
    return s


def book(svc, *, until_h=18, number=NUMBER, place_at=None, queue="rejestracja", mode="auto", call_id=None):
    now = datetime.fromtimestamp(svc.clock.time(), WARSAW)
    return svc.callbacks.book(
        call_id=call_id,
        number=number,
        number_kind="e164",
        typed=False,
        topic="rejestracja",
        topic_label="Rejestracja",
        team="rejestracja",
        queue=queue,
        mode=mode,
        place_at=place_at,
        position=1,
        promise_text=f"dzisiaj do {until_h}:00",
        window=(now, now.replace(hour=until_h, minute=0, second=0)),
        lang="pl",
    )


def test_a_promise_not_kept_by_the_end_of_its_window_raises_one_alarm_and_stays_open(svc):
    b = book(svc)
    assert svc.callbacks.escalate_overdue() == 0
    svc.clock.advance(timedelta(hours=8, minutes=1).total_seconds())  # 18:01
    assert svc.callbacks.escalate_overdue() == 1
    assert svc.callbacks.escalate_overdue() == 0  # once, not every round
    [alarm] = list(svc.db["alarms"].rows)
    assert alarm["kind"] == "callback_overdue" and "600 123 456" in alarm["text"]
    assert "18:00" in alarm["text"] and "10:00" in alarm["text"]
    assert store.get(svc.db, b.id)["state"] == "open"
    assert [i["ref"] for i in svc.callbacks.items()] == [f"c{b.id}"]


def test_repeated_requests_merge_keeping_the_earlier_place(svc):
    first = book(svc, place_at="2026-12-03T09:00:00.000+00:00")
    svc.clock.advance(300)
    again = book(svc, place_at="2026-12-03T09:04:00.000+00:00", until_h=19)
    assert again.id == first.id and again.merged
    row = store.get(svc.db, first.id)
    assert (row["requests"], row["place_at"], row["promise"]) == (
        2,
        "2026-12-03T09:00:00.000+00:00",
        "dzisiaj do 19:00",
    )


def test_due_requests_come_in_line_order_and_wait_for_their_window_and_retry(svc):
    late = book(svc, number="+48600000002", place_at="2026-12-03T09:05:00.000+00:00").id
    early = book(svc, number="+48600000001", place_at="2026-12-03T09:01:00.000+00:00").id
    listed = book(svc, number="+48600000003", mode="list").id
    now = svc.clock.stamp()
    assert [r["id"] for r in store.due(svc.db, "rejestracja", now)] == [early, late]
    assert listed not in [r["id"] for r in store.due(svc.db, "rejestracja", now)]  # staff call those
    # Being called: not due twice; a try that failed is due again at its next try.
    assert store.claim(svc.db, early, at=now) and not store.claim(svc.db, early, at=now)
    assert [r["id"] for r in store.due(svc.db, "rejestracja", now)] == [late]
    store.release(svc.db, early, at=now, next_try_at="2026-12-03T09:20:00.000+00:00")
    assert store.next_due_at(svc.db, now) == "2026-12-03T09:20:00.000+00:00"
    assert [r["id"] for r in store.due(svc.db, "rejestracja", "2026-12-03T09:20:00.000+00:00")] == [early, late]
    # A box stopped mid-call leaves it "calling": at start it is open again.
    store.claim(svc.db, late, at=now)
    assert store.reopen_interrupted(svc.db, at=now) == 1


def _settle(svc, cb_id, outcome, result):
    caller = CallbackCaller(svc)
    agent = SimpleNamespace(agent=SimpleNamespace(id="anna"))
    assert store.claim(svc.db, cb_id, at=svc.clock.stamp())
    caller._settle(store.get(svc.db, cb_id), outcome, result, agent, call_id=_a_call(svc))


def _a_call(svc):
    from appliance.store import calls

    return calls.start_call(
        svc.db, direction="out", line="", caller_raw="", caller=NUMBER, caller_kind="e164", dialled=NUMBER
    )


def test_tries_are_counted_and_after_the_last_the_patient_is_texted_once(svc):
    cb = book(svc).id
    # An agent who did not take it costs the patient no try.
    _settle(svc, cb, "agent_declined", "error")
    row = store.get(svc.db, cb)
    assert row["attempts"] == 0 and row["state"] == "open"
    assert row["next_try_at"] == stamp(svc.clock.time() + AGENT_PAUSE_S)
    # No answer: counted, and tried again after retry_after_s.
    _settle(svc, cb, "not_reached", "no_answer")
    row = store.get(svc.db, cb)
    assert (row["attempts"], row["gave_up_at"]) == (1, None)
    assert row["next_try_at"] == stamp(svc.clock.time() + 600)
    sms_before = list(svc.db["sms_outbox"].rows)
    # The second (last) try: given up, the request stays on the list, the patient gets the SMS.
    svc.clock.advance(600)
    _settle(svc, cb, "not_reached", "no_key")
    row = store.get(svc.db, cb)
    assert row["state"] == "open" and row["gave_up_at"] == svc.clock.stamp() and row["attempts"] == 2
    assert store.due(svc.db, "rejestracja", svc.clock.stamp()) == []
    new = [r for r in svc.db["sms_outbox"].rows if r not in sms_before]
    assert len(new) == 1 and new[0]["number"] == NUMBER
    assert "Przychodnia Zdrowie: próbowaliśmy oddzwonić" in new[0]["text"]
    assert [a["result"] for a in store.attempts(svc.db, cb)] == ["no_answer", "no_key"]


def test_a_try_after_the_window_ends_is_not_made(svc):
    cb = book(svc, until_h=10).id  # the window ends now (10:00): a retry would break the promise
    svc.clock.advance(1)
    _settle(svc, cb, "not_reached", "busy")
    assert store.get(svc.db, cb)["gave_up_at"] is not None


def test_missed_calls_close_when_the_number_is_reached_or_staff_mark_them(svc):
    m1 = svc.callbacks.missed(
        call_id=_a_call(svc),
        number=NUMBER,
        number_kind="e164",
        started_at=svc.clock.stamp(),
        gave_up="queue",
        node="kolejka",
        topic="rejestracja",
    )
    svc.clock.advance(42)
    m2 = svc.callbacks.missed(
        call_id=_a_call(svc),
        number="+48600999888",
        number_kind="e164",
        started_at=stamp(svc.clock.time() - 12),
        gave_up="menu",
        node="menu",
        topic=None,
    )
    items = {i["ref"]: i for i in svc.callbacks.items()}
    assert set(items) == {f"m{m1}", f"m{m2}"}
    assert items[f"m{m2}"]["detail"]["waited_s"] == 12.0 and items[f"m{m2}"]["detail"]["gave_up"] == "menu"
    assert svc.callbacks.reached(NUMBER, "outbound") == 1
    assert svc.callbacks.done(f"M{m2}", note="oddzwoniono z komórki") == f"m{m2}"
    assert svc.callbacks.items() == []
    assert store_missed.get(svc.db, m2)["note"] == "oddzwoniono z komórki"
    assert store_missed.get(svc.db, m1)["closed_by"] == "outbound"
    with pytest.raises(CallbackError, match="not open"):
        svc.callbacks.done(f"m{m2}")
    with pytest.raises(CallbackError, match="not an item"):
        svc.callbacks.done("x1; DROP TABLE callbacks")


def test_a_number_with_an_open_request_leaves_no_missed_call(svc):
    book(svc)
    assert (
        svc.callbacks.missed(
            call_id=_a_call(svc),
            number=NUMBER,
            number_kind="e164",
            started_at=svc.clock.stamp(),
            gave_up="menu",
            node="menu",
            topic=None,
        )
        is None
    )
