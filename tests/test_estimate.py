"""Wait estimate (R10): uses the queue's state and measured handling times; Asterisk's for comparison."""

import importlib.util
import io
import json
import math
import sqlite3
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from appliance.flow.estimate import AsteriskEstimator, HandlingStats, estimate_wait, residual_samples

BENCH = Path(__file__).resolve().parent.parent / "bench" / "ewt.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_ewt", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while being built
    spec.loader.exec_module(mod)
    return mod


def run_bench(*argv) -> tuple[str, dict]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert load_bench().main(list(argv)) == 0
    text = out.getvalue()
    return text, json.loads(text.strip().splitlines()[-1])


def test_monotonic_in_position():
    stats = HandlingStats()
    for busy, idle in (([30.0, 200.0], 0), ([10.0], 0), ([5.0, 50.0, 100.0], 1)):
        waits = [estimate_wait(p, busy, idle, stats) for p in range(1, 12)]
        assert all(b > a for a, b in zip(waits, waits[1:])), waits


def test_idle_agents_answer_at_once():
    stats = HandlingStats()
    assert estimate_wait(1, [], 1, stats) == 0.0
    assert estimate_wait(2, [100.0], 2, stats) == 0.0
    # One caller more than idle agents: waits for the first busy agent, not for a whole call.
    assert 0 < estimate_wait(3, [100.0], 2, stats) < stats.mean


def test_more_agents_shorter_wait():
    stats = HandlingStats()
    one = estimate_wait(4, [60.0], 0, stats)
    three = estimate_wait(4, [60.0, 60.0, 60.0], 0, stats)
    assert three < one / 2


def test_nobody_can_answer_is_infinite():
    assert estimate_wait(1, [], 0, HandlingStats()) == math.inf


def test_next_caller_with_busy_agents_uses_the_first_to_finish():
    # Three agents on calls: the first of them to finish is much sooner than a mean call.
    stats = HandlingStats()
    assert estimate_wait(1, [0.0, 0.0, 0.0], 0, stats) < 0.6 * stats.mean


def test_prior_then_learns_from_calls():
    stats = HandlingStats()
    assert stats.count == 0 and stats.mean == pytest.approx(180.0)
    before = estimate_wait(3, [0.0], 0, stats)
    assert before > 400  # three calls of the 180 s prior
    for _ in range(60):
        stats.observe(60.0)
    assert stats.count == 60
    assert stats.mean == pytest.approx(60.0, rel=0.15)
    assert 120 <= estimate_wait(3, [], 1, stats) <= 180
    assert 120 <= estimate_wait(3, [0.0], 0, stats) <= 200


def test_recent_calls_weigh_more():
    stats = HandlingStats()
    for _ in range(100):
        stats.observe(100.0)
    for _ in range(40):
        stats.observe(300.0)
    assert stats.mean > 220  # a plain average would say 157


def test_elapsed_time_matters():
    stats = HandlingStats()
    fresh = estimate_wait(1, [0.0], 0, stats)
    nearly_done = estimate_wait(1, [170.0], 0, stats)
    assert nearly_done < fresh
    # A call already far longer than usual still has some rest, never a negative one.
    assert estimate_wait(1, [3000.0], 0, stats) > 0


def test_residual_samples_are_positive():
    import numpy as np

    r = residual_samples(10_000.0, HandlingStats(), np.linspace(0.001, 0.999, 50))
    assert (r > 0).all()


def test_callers_ahead_who_hang_up_shorten_the_wait():
    patient, impatient = HandlingStats(), HandlingStats()
    for _ in range(50):
        impatient.observe_wait(60.0, abandoned=True)
        impatient.observe_wait(120.0, abandoned=False)
        patient.observe_wait(120.0, abandoned=False)
    assert patient.abandon_rate == 0.0
    assert impatient.abandon_rate > 0.003
    assert estimate_wait(8, [30.0], 0, impatient) < 0.8 * estimate_wait(8, [30.0], 0, patient)


def test_same_state_same_estimate():
    stats = HandlingStats()
    assert estimate_wait(4, [20.0, 90.0], 0, stats) == estimate_wait(4, [20.0, 90.0], 0, stats)


def test_persistence_round_trip():
    stats = HandlingStats()
    for h in (50, 200, 130, 400, 95):
        stats.observe(h)
    stats.observe_wait(80, abandoned=True)
    stats.observe_wait(40, abandoned=False)
    again = HandlingStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats
    assert estimate_wait(5, [10.0, 70.0], 0, again) == estimate_wait(5, [10.0, 70.0], 0, stats)


def test_from_dict_tolerates_old_and_empty_rows():
    assert HandlingStats.from_dict({}) == HandlingStats()
    old = HandlingStats.from_dict({"count": 10, "mean": 120.0, "var": 3600.0})
    assert old.count == 10
    assert math.exp(old.log_mean + old.log_var / 2) == pytest.approx(120.0)


def test_asterisk_formula_by_hand():
    # app_queue.c: holdtime = (3*holdtime + wait) >> 2 on each answered caller;
    # announced minutes = abs((holdtime + 30 - waited) / 60), C integer division.
    ast = AsteriskEstimator()
    ast.observe_wait(100)  # (0 + 100) >> 2 = 25
    assert ast.holdtime == 25
    ast.observe_wait(40)  # (75 + 40) >> 2 = 28
    assert ast.holdtime == 28
    ast.observe_wait(200.9)  # (84 + 200) >> 2 = 71 (whole seconds)
    assert ast.holdtime == 71
    assert ast.announced_minutes() == 1  # (71 + 30) / 60 = 1
    assert ast.announced_s() == 60.0
    assert AsteriskEstimator(89).announced_minutes() == 1
    assert AsteriskEstimator(90).announced_minutes() == 2
    assert AsteriskEstimator(29).announced_minutes() == 0  # Asterisk says nothing
    assert AsteriskEstimator(200).announced_minutes(waited_s=100) == 2  # 130 / 60
    assert AsteriskEstimator(10).announced_minutes(waited_s=200) == 2  # abs(-160 / 60), truncated


def test_asterisk_ignores_position():
    ast = AsteriskEstimator(300)
    assert ast.announced_s() == 300.0


def test_short_bench_ours_beats_asterisk():
    text, summary = run_bench("--days", "2", "--seed", "7")
    assert {
        "ours_mae_s",
        "asterisk_mae_s",
        "ratio",
        "ours_join_mae_s",
        "asterisk_join_mae_s",
        "join_ratio",
        "announcements",
        "announcements_made",
        "announcements_censored",
        "next_in_line_silent",
        "days",
        "callers",
    } <= summary.keys()
    assert summary["days"] == 2 and summary["callers"] > 500
    assert summary["scored"] > 100
    # Every announcement heard (the headline score): more of them than callers scored on
    # joining, and those to callers who then hung up are counted but not scored.
    assert summary["announcements"] > summary["scored"]
    assert summary["announcements_censored"] > 0
    assert summary["announcements_made"] == (
        summary["announcements"] + summary["announcements_censored"] + summary["announcements_no_time"]
    )
    assert summary["next_in_line_silent"] > 0
    assert summary["ours_mae_s"] < summary["asterisk_mae_s"]
    assert summary["ratio"] < 0.85
    # On joining only (the earlier score).
    assert summary["ours_join_mae_s"] < summary["asterisk_join_mae_s"]
    assert summary["join_ratio"] < 0.85
    for level in ("light", "busy", "overloaded"):
        assert f"\n{level}:" in text
    assert "every announcement heard" in text and "on joining only" in text


def test_bench_announcements_follow_the_box():
    """Announcements on joining and then every 30 s while waiting, none to the caller who is
    next, each saying the remaining wait; Asterisk's counts the time already waited."""
    ewt = load_bench()
    callers, _ = ewt.generate_day(__import__("numpy").random.default_rng([3, 2]), 2, 1.25)
    ewt.simulate_day(callers, 2, ewt.Estimators())
    checked = 0
    for c in callers:
        if not c.heard:
            continue
        assert c.queued
        assert all(h.position >= 2 for h in c.heard)
        offsets = [h.at - c.joined for h in c.heard]
        assert all(o == pytest.approx(30.0 * round(o / 30.0)) for o in offsets)
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        assert [h.position for h in c.heard] == sorted((h.position for h in c.heard), reverse=True)
        end = c.answered if c.answered is not None else c.joined + c.patience
        assert all(h.at < end for h in c.heard)
        if offsets[0] == 0:
            assert c.heard[0].ours_s == c.ours_s and c.heard[0].asterisk_s == c.asterisk_s
        checked += 1
    assert checked > 20


def test_bench_replays_a_database(tmp_path):
    db = tmp_path / "box.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE queue_calls (id INTEGER PRIMARY KEY, queue TEXT, joined_at TEXT, "
        "answered_at TEXT, left_at TEXT, reason TEXT, handle_s FLOAT)"
    )
    rows = []
    # One agent; a caller every 60 s, each call 100 s: the line grows and waits lengthen.
    t_answer = 0.0
    for i in range(12):
        joined = 60.0 * i
        answered = max(joined + 3, t_answer)
        t_answer = answered + 100
        rows.append(
            (
                "rejestracja",
                f"2026-03-02T08:{int(joined) // 60:02d}:{int(joined) % 60:02d}+00:00",
                f"2026-03-02T{8 + int(answered) // 3600:02d}:{int(answered) % 3600 // 60:02d}:"
                f"{int(answered) % 60:02d}+00:00",
                None,
                "answered",
                100.0,
            )
        )
    con.executemany(
        "INSERT INTO queue_calls (queue, joined_at, answered_at, left_at, reason, handle_s) VALUES (?,?,?,?,?,?)", rows
    )
    con.commit()
    con.close()
    text, summary = run_bench("--from-db", str(db), "--agents", "1")
    assert summary["callers"] == 12 and summary["scored"] >= 8
    assert summary["ours_mae_s"] is not None


def test_bench_without_the_table_skips(tmp_path):
    db = tmp_path / "empty.db"
    sqlite3.connect(db).execute("CREATE TABLE other (x)").connection.commit()
    text, summary = run_bench("--from-db", str(db))
    assert "no usable queue_calls table" in text
    assert summary["callers"] == 0
