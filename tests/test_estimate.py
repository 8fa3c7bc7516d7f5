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

import numpy as np

from appliance.flow.estimate import (
    FACTOR_BOUNDS,
    QUANTILE_BOUNDS,
    AsteriskEstimator,
    HandlingStats,
    answer_time_samples,
    estimate_wait,
    residual_samples,
    resolve_announcements,
)

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
    for h in (70, 300):
        stats.observe(h, hour=9.25)
    stats.observe_wait(80, abandoned=True)
    stats.observe_wait(40, abandoned=False)
    stats.observe_error(120.0, 200.0, 3)
    stats.observe_error(60.0, 20.0, 1)
    again = HandlingStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats
    assert again.recent_hours[:5] == [None] * 5 and again.recent_hours[-1] is not None
    assert again.corrections != HandlingStats().corrections
    for hour in (None, 9.25):
        assert estimate_wait(5, [10.0, 70.0], 0, again, hour=hour) == estimate_wait(
            5, [10.0, 70.0], 0, stats, hour=hour
        )


def test_from_dict_tolerates_old_and_empty_rows():
    assert HandlingStats.from_dict({}) == HandlingStats()
    old = HandlingStats.from_dict({"count": 10, "mean": 120.0, "var": 3600.0})
    assert old.count == 10
    assert math.exp(old.log_mean + old.log_var / 2) == pytest.approx(120.0)
    # The earlier sample layout: no hours, and corrections as sums per band (four bands).
    earlier = HandlingStats.from_dict(
        {"count": 3, "recent": [100.0, "x", -5, 250.0], "corrections": [[2400.0, 2400.0]] * 4, "errors": 7}
    )
    assert earlier.recent == [100.0, 250.0] and earlier.recent_hours == [None, None]
    assert earlier.corrections == HandlingStats().corrections and earlier.errors == 7
    # Hours that do not match the sample are dropped; broken corrections start from neutral.
    odd = HandlingStats.from_dict({"recent": [100.0, 200.0], "recent_hours": [8.0], "corrections": [[0.9, 5.0]] * 5})
    assert odd.recent_hours == [None, None] and odd.corrections == HandlingStats().corrections
    odd.observe(120.0, hour=12.0)
    assert len(odd.recent_hours) == len(odd.recent) == 3


def bimodal_stats(n: int = 200) -> HandlingStats:
    """Short registrations (~100 s) and long consultations (~500 s), three to two."""
    rng = np.random.default_rng(1)
    stats = HandlingStats()
    for i in range(n):
        typical = 100.0 if i % 5 < 3 else 500.0
        stats.observe(typical * math.exp(0.2 * rng.standard_normal()))
    return stats


def test_mixture_gives_a_call_past_the_short_hump_a_long_rest():
    stats = bimodal_stats()
    u = np.linspace(0.001, 0.999, 999)
    # Just begun: most likely a short call.
    assert np.median(residual_samples(20.0, stats, u)) < 150
    # Outlasted the short hump: almost surely a consultation, about 500 s in all.
    for elapsed in (180.0, 250.0):
        rest = np.median(residual_samples(elapsed, stats, u))
        assert 450 < elapsed + rest < 600, (elapsed, rest)
    # The same history as one lognormal (what was kept before) says the opposite: a short rest.
    fit_only = HandlingStats(
        count=stats.count, mean=stats.mean, var=stats.var, log_mean=stats.log_mean, log_var=stats.log_var
    )
    assert np.median(residual_samples(250.0, fit_only, u)) < 200


def test_time_of_day_picks_the_calls_of_that_hour():
    stats = HandlingStats()
    for i in range(250):
        stats.observe(90.0 + i % 7, hour=8.5)  # the morning rush: registrations
        stats.observe(400.0 + i % 11, hour=14.5)  # the afternoon: consultations
    morning = estimate_wait(2, [30.0], 0, stats, hour=8.5)
    afternoon = estimate_wait(2, [30.0], 0, stats, hour=14.5)
    unknown = estimate_wait(2, [30.0], 0, stats)
    assert morning < 250 and afternoon > 600
    assert morning < unknown < afternoon
    # Each call is kept with the hour it began (the hour passed is when it ended).
    stats.observe(1800.0, hour=10.0)
    assert stats.recent_hours[-1] == pytest.approx(9.5)
    assert len(stats.recent_hours) == len(stats.recent)


def test_self_correction_scales_up_after_consistent_shortfalls():
    stats = HandlingStats()
    for _ in range(100):
        stats.observe(120.0)
    before = estimate_wait(3, [0.0], 0, stats)
    first_in_line = estimate_wait(1, [0.0], 0, stats)
    for _ in range(400):
        # Every caller at position 3 waited 1.5 times what was said.
        said = estimate_wait(3, [0.0], 0, stats)
        assert stats.observe_error(said, 1.5 * said, 3)
    after = estimate_wait(3, [0.0], 0, stats)
    assert after > 1.15 * before
    assert stats.errors == 400
    assert stats.quantile(3) > 0.5 and stats.correction(3) > 1.0
    # Other bands learned nothing.
    assert estimate_wait(1, [0.0], 0, stats) == first_in_line
    # Bounded: however wrong it keeps being, no more than the largest factor on the largest quantile.
    for _ in range(5000):
        stats.observe_error(100.0, 1000.0, 3)
    model = answer_time_samples(3, [0.0], 0, stats)
    ceiling = float(np.quantile(model, QUANTILE_BOUNDS[1])) * FACTOR_BOUNDS[1]
    assert estimate_wait(3, [0.0], 0, stats) == pytest.approx(ceiling)
    assert stats.correction(3) == pytest.approx(FACTOR_BOUNDS[1])


def test_self_correction_scales_down_after_consistent_overshoots():
    stats = HandlingStats()
    for _ in range(100):
        stats.observe(120.0)
    before = estimate_wait(5, [10.0, 60.0], 0, stats)
    for _ in range(400):
        said = estimate_wait(5, [10.0, 60.0], 0, stats)
        stats.observe_error(said, 0.6 * said, 5)
    assert estimate_wait(5, [10.0, 60.0], 0, stats) < 0.9 * before
    assert stats.quantile(5) < 0.5 and stats.correction(5) < 1.0
    # Still more than the caller ahead is told.
    assert estimate_wait(5, [10.0, 60.0], 0, stats) >= estimate_wait(4, [10.0, 60.0], 0, stats)


def test_resolve_announcements():
    stats = HandlingStats()
    announced = [
        (100.0, 240.0, 4),  # said 4 min at position 4; answered 300 s later: longer
        (130.0, 200.0, 3),
        (160.0, 150.0, 2),  # said 150 s, answered 240 s later
        (190.0, 0.0, 1),  # "answered at once": nothing to learn
        (220.0, math.inf, 1),  # no time said (nobody could answer)
        ("x", 10.0, 1),  # malformed
        (450.0, 60.0, 1),  # after the answer: not from this wait
    ]
    assert resolve_announcements(stats, announced, answered_at=400.0) == 3
    assert stats.errors == 3
    assert stats.quantile(4) > 0.5 and stats.quantile(2) > 0.5
    assert stats.quantile(1) == 0.5 and stats.quantile(9) == 0.5
    assert resolve_announcements(stats, [], answered_at=400.0) == 0
    assert resolve_announcements(stats, announced, answered_at=math.nan) == 0
    assert stats.errors == 3


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


def bench_lines(text: str) -> dict[str, dict]:
    """The bench's JSON lines (one per generator, or one for a replay), by generator."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return {line["generator"]: line for line in lines}


def test_short_bench_ours_beats_asterisk():
    text, _ = run_bench("--days", "2", "--seed", "7")
    summaries = bench_lines(text)
    # Both day generators, each with its own line: the standard days and the clinic's.
    assert set(summaries) == {"standard", "clinic"}
    for name, summary in summaries.items():
        assert {
            "ours_mae_s",
            "ours_bias_s",
            "asterisk_mae_s",
            "asterisk_bias_s",
            "ratio",
            "oracle_mae_s",
            "ours_join_mae_s",
            "asterisk_join_mae_s",
            "join_ratio",
            "announcements",
            "announcements_made",
            "announcements_censored",
            "announcements_first_in_line",
            "days",
            "callers",
            "levels",
        } <= summary.keys(), name
        assert summary["days"] == 2 and summary["callers"] > 300
        assert summary["scored"] > 100
        # Every announcement heard (the headline score): more of them than callers scored on
        # joining, and those to callers who then hung up are counted but not scored.
        assert summary["announcements"] > summary["scored"]
        assert summary["announcements_censored"] > 0
        assert summary["announcements_made"] == (
            summary["announcements"] + summary["announcements_censored"] + summary["announcements_no_time"]
        )
        # The first in line hears the wait too, and those announcements are scored.
        assert 0 < summary["announcements_first_in_line"] < summary["announcements"]
        assert summary["ours_mae_s"] < summary["asterisk_mae_s"]
        assert summary["ratio"] < 0.8
        assert abs(summary["ours_bias_s"]) < abs(summary["asterisk_bias_s"])
        assert summary["oracle_mae_s"] < summary["asterisk_mae_s"]
        # On joining only (the earlier score).
        assert summary["ours_join_mae_s"] < summary["asterisk_join_mae_s"]
        assert summary["join_ratio"] < 0.85
    assert set(summaries["clinic"]["levels"]) == {"quiet", "monday", "flu season"}
    for level in ("standard / light:", "standard / busy:", "standard / overloaded:", "clinic / quiet:"):
        assert f"\n{level}" in text
    assert "every announcement heard" in text and "on joining only" in text
    assert "by position (n, MAE (bias)): 1: " in text


def test_bench_announcements_follow_the_box():
    """Announcements on joining and then every 30 s while waiting, to the first in line too,
    each saying the remaining wait, never more than the previous one (the number of agents does
    not change); Asterisk's counts the time already waited."""
    ewt = load_bench()
    callers, _ = ewt.generate_day(__import__("numpy").random.default_rng([3, 2]), 2, 1.25)
    ewt.simulate_day(callers, 2, ewt.Estimators(ewt.day_hour))
    checked = first = 0
    for c in callers:
        if not c.heard:
            continue
        assert c.queued
        assert all(h.position >= 1 for h in c.heard)
        first += sum(h.position == 1 for h in c.heard)
        offsets = [h.at - c.joined for h in c.heard]
        assert all(o == pytest.approx(30.0 * round(o / 30.0)) for o in offsets)
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        assert [h.position for h in c.heard] == sorted((h.position for h in c.heard), reverse=True)
        said = [h.ours_raw_s for h in c.heard]
        assert said == sorted(said, reverse=True)
        end = c.answered if c.answered is not None else c.joined + c.patience
        assert all(h.at < end for h in c.heard)
        if offsets[0] == 0:
            assert c.heard[0].ours_s == c.ours_s and c.heard[0].asterisk_s == c.asterisk_s
        checked += 1
    assert checked > 20 and first > 20


def test_bench_announcement_held_unless_fewer_agents():
    """The bench's rule is the engine's: a higher estimate is held at the last one said, unless
    fewer agents serve now than then."""
    ewt = load_bench()
    est = ewt.Estimators()
    c = ewt.Caller(joined=0.0)
    est.heard(c, 0.0, 1, [100.0], 0, serving=1)  # a call nearly at its typical end: a short wait
    low = c.heard[-1].ours_raw_s
    est.heard(c, 30.0, 3, [0.0], 0, serving=1)  # further back now (cannot happen, but it rises)
    assert c.heard[-1].ours_raw_s == low
    est.heard(c, 60.0, 3, [0.0], 0, serving=0)  # fewer serve: the longer wait is said
    assert c.heard[-1].ours_raw_s > low


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


def test_bench_replays_what_it_wrote(tmp_path):
    """Simulated clinic days written as the engine writes queue_calls, then replayed: the same
    callers, scored the same way (announcements to callers who found no free agent)."""
    db = tmp_path / "written.db"
    text, _ = run_bench("--days", "1", "--generator", "clinic", "--no-oracle", "--write-db", str(db))
    written = bench_lines(text)["clinic"]
    text, replayed = run_bench("--from-db", str(db), "--no-time-of-day")
    assert replayed["generator"] == "db" and replayed["time_of_day"] is False
    assert replayed["callers"] == written["callers"]
    assert abs(replayed["announcements"] - written["announcements"]) <= 0.05 * written["announcements"]
    assert replayed["announcements_first_in_line"] > 0
    assert replayed["ours_mae_s"] < replayed["asterisk_mae_s"]
    assert {"db:clinic-quiet", "db:clinic-monday", "db:clinic-flu-season"} == set(replayed["levels"])


def test_bench_without_the_table_skips(tmp_path):
    db = tmp_path / "empty.db"
    sqlite3.connect(db).execute("CREATE TABLE other (x)").connection.commit()
    text, summary = run_bench("--from-db", str(db))
    assert "no usable queue_calls table" in text
    assert summary["callers"] == 0
