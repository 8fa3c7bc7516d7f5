"""Bench: how wrong is the announced wait? Ours (appliance/flow/estimate.py) against Asterisk's.

R10 asks for an honest estimate "better than a naive average". This replays clinic days through
an exact FIFO queue simulation (discrete events) and scores what waiting callers hear, two ways:

- every announcement (the headline score): a queued caller hears the position and wait on
  joining and then every ``--announce-every`` seconds (30, the queue node's default) while still
  waiting; each says the wait *remaining* at that moment and is scored as
  |announced remaining wait - actual remaining wait| (answer time minus the announcement's
  time). As on the box (engine.node_queue / _announce_position), the caller who is first in line
  (position 1) hears it too ("you are the first in line" and the wait), so every position is
  scored. Both estimators are asked at the same moment with what each would know then: ours the
  position, each busy agent's elapsed handling time, idle agents and the statistics learned so
  far; Asterisk its running average and how long the caller has already waited
  (|avg + 30 - waited| in whole minutes, as app_queue re-announces it). Ours follows the box's
  rule that the wait said to a caller never rises from one announcement to the next unless fewer
  agents serve the queue than at the previous one (then the new, longer wait is said);
- on joining only (the earlier score, kept for comparison): for every caller who found no free
  agent and was then answered, the wait announced at joining against the whole wait.

Both are scored as heard: ours rounded as the announcement rounds it (announce.announced_wait_s,
"less than a minute" = 30 s), Asterisk's in whole minutes as app_queue says it (0 minutes, when
it says no time, counts as 0 s). Beside each MAE the bias (mean of announced minus actual) is
given: negative means callers were promised less than they then waited.

Two day generators (``--generator``; both by default), seeded numpy, neither tuned to any
estimator:

- ``standard`` (the one the estimator was first measured on): clinic hours 8:00-18:00;
  arrivals are a non-homogeneous Poisson process (thinning) with a morning peak around 9:30 and
  a smaller one after lunch; the load level sets the peak offered load per agent (light 0.6,
  busy 0.9, overloaded 1.25); 2-4 agents per day (or --agents K); an agent needs 2-8 s to pick
  up after being rung; talk time lognormal, median 3 min (sigma 0.7), with a day-to-day factor
  (some days every call is longer); wrap-up 20-40 s; a call's handling time is talk + wrap-up;
  callers hang up after a patience time (lognormal, median 5 min).
- ``clinic`` (a differently shaped day, written from how a registration desk's phone behaves,
  not from the estimator): the line opens at 8:00 and everyone who has been redialling since
  7:30 gets through in the first two minutes (a burst), followed by a rush that fades over the
  first hour, a low level for the rest of the day and a small bump after lunch (test results);
  two kinds of call, a short registration (talk median 100 s, wrap-up 10-30 s: about 2 min) and
  a long consultation (talk median 400 s, wrap-up 30-90 s: about 8 min), with fewer
  consultations during the rush (20 %) than later (40 %), so handling time is bimodal and its
  mix changes over the day; 1-3 agents; 3-10 s to pick up; callers hang up sooner and more
  variably (patience median 4 min, sigma 0.9). Levels: quiet, monday, flu season.

In both, the callers who hang up have a censored wait, so they and every announcement they heard
are counted, not scored. Ours sees what the engine sees: position, each busy agent's elapsed
handling time (from the answer, through the wrap-up), idle agents, the local time of day, and
HandlingStats learned from the calls completed so far (each with the hour it began), from how
long callers waited or held out before hanging up, and from how wrong its own earlier
announcements were (once a caller is answered, the caller's list of announcements, each as
(moment, seconds said, position), goes to ``estimate.resolve_announcements``, which calls
``HandlingStats.observe_error`` for each: the call the queue makes), kept across days as the
database keeps it; Asterisk sees its running average of past answered waits (also kept).
``--no-time-of-day`` withholds the hour (in ``observe`` and ``estimate_wait``), for a queue that
does not pass it.

The oracle row is a yardstick (``--no-oracle`` skips it): a predictor that knows the generator's
true distributions and the exact state, so its error is the floor any estimator can reach on
these days; the part of the error above it is the estimator's fault, the rest is chance.

The scored callers are those who found no free agent on arrival (the ones an announcement is
for) and were answered. Callers taken at once would be easy points for ours (it says "less than
a minute", Asterisk its average) and are left out on purpose: on the box such a caller may hear
"first in line, less than a minute" while the agent's phone rings, but that says nothing about
an estimator. Likewise a caller whose agent is already ringing is out of line (the simulation
takes the caller out when the ringing starts; the replay skips moments at which an agent not on
a call is there for the caller).

``--from-db PATH`` replays real records instead, from the SQLite table
``queue_calls(joined_at, answered_at, left_at, reason, handle_s, queue)`` the engine writes;
``--write-db PATH`` stores the simulated days in that table, the way the engine would have
written them, so the replay path can be checked on days whose truth is known. The replay learns
and announces as the synthetic runs do (time of day from the records' stamps, in this machine's
zone); the number of agents is not recorded (--agents, or the most calls in progress at once).

Per generator (or for the replay) the bench prints one JSON line: ours_mae_s, ours_bias_s,
asterisk_mae_s, asterisk_bias_s, ratio (every announcement heard, as announced;
``announcements`` of them scored, ``announcements_first_in_line`` of those at position 1),
oracle_mae_s and ours_vs_oracle (with the oracle), ours_join_mae_s, asterisk_join_mae_s,
join_ratio (on joining; ``scored`` callers), cpu_ms_per_estimate, ``levels`` (MAE, bias and ratio
per load level), days (--days, per load level; sim_days is the total), callers (all), ...,
``time_of_day`` and ``generator``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.flow.announce import announced_wait_s  # noqa: E402
from appliance.flow.estimate import (  # noqa: E402
    AsteriskEstimator,
    HandlingStats,
    _ndtri,
    estimate_wait,
    resolve_announcements,
)
from appliance.store import queue as store_queue  # noqa: E402
from appliance.store.db import open_db  # noqa: E402

_erfc = np.vectorize(math.erfc, otypes=[float])

OPEN_H, CLOSE_H = 8.0, 18.0
TALK_MEDIAN_S = 180.0
TALK_SIGMA = 0.7
DAY_FACTOR_SIGMA = 0.15
WRAPUP_S = (20.0, 40.0)
RING_S = (2.0, 8.0)
PATIENCE_MEDIAN_S = 300.0
PATIENCE_SIGMA = 0.8
SCENARIOS = {"light": 0.6, "busy": 0.9, "overloaded": 1.25}  # peak offered load per agent
ANNOUNCE_EVERY_S = 30.0  # the queue node's announce_every default (appliance/flow/model.py)

# The clinic generator. A registration desk: the phone line opens at 8:00, people who want an
# appointment today have been redialling since 7:30, most want a quick registration, some need a
# long conversation (a tele-consultation, referrals, explaining results).
CLINIC_RUSH_FADE_H = 0.5  # the rush after opening decays with this time constant
CLINIC_BURST_S = 120.0  # the redialling crowd gets through within the first two minutes
CLINIC_LONG_SHARE = ((9.5, 0.2), (CLOSE_H, 0.4))  # (until hour, share of long calls)
CLINIC_DAY_FACTOR_SIGMA = 0.1
CLINIC_RING_S = (3.0, 10.0)
CLINIC_PATIENCE_MEDIAN_S = 240.0
CLINIC_PATIENCE_SIGMA = 0.9
CLINIC_AGENTS = (1, 3)
# level -> (offered load per agent when the line opens, callers per agent in the opening burst)
CLINIC_SCENARIOS = {"quiet": (0.9, 1.5), "monday": (1.4, 3.0), "flu season": (1.9, 5.0)}


@dataclass(frozen=True)
class CallKind:
    """One kind of call: lognormal talk time and a uniform wrap-up."""

    name: str
    talk_median_s: float
    talk_sigma: float
    wrapup_s: tuple[float, float]

    def mean_handle_s(self, day_factor: float = 1.0) -> float:
        return self.talk_median_s * day_factor * math.exp(self.talk_sigma**2 / 2) + sum(self.wrapup_s) / 2


STANDARD_KINDS = (CallKind("call", TALK_MEDIAN_S, TALK_SIGMA, WRAPUP_S),)
CLINIC_KINDS = (
    CallKind("registration", 100.0, 0.35, (10.0, 30.0)),
    CallKind("consultation", 400.0, 0.35, (30.0, 90.0)),
)


def arrival_profile(hour: float) -> float:
    """Relative arrival intensity over the clinic day, at most 1 (morning peak, after-lunch bump)."""
    return min(
        1.0, 0.3 + 0.7 * math.exp(-0.5 * ((hour - 9.5) / 1.0) ** 2) + 0.3 * math.exp(-0.5 * ((hour - 13.5) / 1.2) ** 2)
    )


def clinic_arrival_profile(hour: float) -> float:
    """The clinic day's relative arrival intensity, at most 1: highest the moment the line opens,
    fading over the first hour to a low level, with a small bump after lunch."""
    rush = math.exp(-(hour - OPEN_H) / CLINIC_RUSH_FADE_H)
    return min(1.0, 0.15 + 0.85 * rush + 0.15 * math.exp(-0.5 * ((hour - 13.0) / 1.0) ** 2))


def clinic_long_share(hour: float) -> float:
    for until, share in CLINIC_LONG_SHARE:
        if hour < until:
            return share
    return CLINIC_LONG_SHARE[-1][1]


@dataclass
class Caller:
    joined: float
    handle_s: float = 0.0  # talk + wrap-up, if answered
    ring_s: float = 0.0
    patience: float = math.inf
    kind: str = ""
    ours_s: float | None = None  # announced at join (seconds as heard)
    ours_raw_s: float | None = None
    asterisk_s: float | None = None
    oracle_s: float | None = None
    queued: bool = False  # found no free agent on arrival
    answered: float | None = None
    abandoned: bool = False
    heard: list = field(default_factory=list)  # Heard: every announcement made to this caller
    said_s: float | None = None  # the last wait (s) ours announced to this caller (the box's said_wait)
    said_serving: int = 0  # agents serving the queue then
    agent: int | None = None  # who answered (synthetic days)


@dataclass
class Heard:
    """One announcement as the caller heard it, with what each estimator said at that moment."""

    at: float  # when it was made (s, clock of the day)
    position: int
    ours_s: float  # as heard (rounded); inf: the box says no time
    ours_raw_s: float
    asterisk_s: float  # as app_queue would say it to a caller who has waited this long
    oracle_s: float | None = None


@dataclass
class Tally:
    callers: int = 0
    queued: int = 0
    abandoned: int = 0
    err_ours: list = field(default_factory=list)
    err_ours_raw: list = field(default_factory=list)
    err_ast: list = field(default_factory=list)
    err_oracle: list = field(default_factory=list)
    waits: list = field(default_factory=list)
    # every announcement heard (every position, while waiting)
    made: int = 0  # announcements made
    made_censored: int = 0  # ... to callers who then hung up: counted, not scored
    made_no_time: int = 0  # ... saying no time (nobody could answer): nothing to score
    first_in_line: int = 0  # scored announcements to the caller at position 1
    herr_ours: list = field(default_factory=list)
    herr_ours_raw: list = field(default_factory=list)
    herr_ast: list = field(default_factory=list)
    herr_oracle: list = field(default_factory=list)
    remaining: list = field(default_factory=list)
    positions: list = field(default_factory=list)  # of each scored announcement

    LISTS = (
        "err_ours",
        "err_ours_raw",
        "err_ast",
        "err_oracle",
        "waits",
        "herr_ours",
        "herr_ours_raw",
        "herr_ast",
        "herr_oracle",
        "remaining",
        "positions",
    )
    COUNTS = ("callers", "queued", "abandoned", "made", "made_censored", "made_no_time", "first_in_line")

    def add(self, c: Caller) -> None:
        self.callers += 1
        self.abandoned += c.abandoned
        self._add_heard(c)
        if not c.queued:
            return
        self.queued += 1
        if c.abandoned or c.answered is None:
            return  # censored: the true wait is unknown, only that it was longer than patience
        if not math.isfinite(c.ours_raw_s):
            return  # nobody could answer at all: the box announces no time (operator path)
        wait = c.answered - c.joined
        self.waits.append(wait)
        self.err_ours.append(c.ours_s - wait)
        self.err_ours_raw.append(c.ours_raw_s - wait)
        self.err_ast.append(c.asterisk_s - wait)
        if c.oracle_s is not None:
            self.err_oracle.append(c.oracle_s - wait)

    def _add_heard(self, c: Caller) -> None:
        self.made += len(c.heard)
        if c.abandoned or c.answered is None:
            self.made_censored += len(c.heard)  # the remaining wait is unknown
            return
        for h in c.heard:
            if not math.isfinite(h.ours_raw_s):
                self.made_no_time += 1  # position only (operator path): not scored
                continue
            rest = c.answered - h.at
            self.remaining.append(rest)
            self.positions.append(h.position)
            self.first_in_line += h.position == 1
            self.herr_ours.append(h.ours_s - rest)
            self.herr_ours_raw.append(h.ours_raw_s - rest)
            self.herr_ast.append(h.asterisk_s - rest)
            if h.oracle_s is not None:
                self.herr_oracle.append(h.oracle_s - rest)

    def merge(self, other: "Tally") -> None:
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in self.LISTS:
            getattr(self, name).extend(getattr(other, name))

    def mae(self, name: str) -> float:
        errs = getattr(self, name)
        return float(np.mean(np.abs(errs))) if errs else float("nan")

    def bias(self, name: str) -> float:
        """Mean signed error, announced minus actual: negative = promised less than waited."""
        errs = getattr(self, name)
        return float(np.mean(errs)) if errs else float("nan")


def day_hour(t: float) -> float:
    """Local time of day (hours) of a moment on a simulated day's clock (seconds from midnight)."""
    return (t / 3600.0) % 24.0


def epoch_hour(t: float) -> float:
    """Local time of day (hours) of a recorded moment (epoch seconds), in this machine's zone, the
    one the replay also cuts days in."""
    when = datetime.fromtimestamp(t)
    return when.hour + when.minute / 60.0 + (when.second + when.microsecond / 1e6) / 3600.0


class Estimators:
    """Both estimators' learned state; carried from day to day like the box keeps it.

    It is fed only through the calls the queue makes on the box (``HandlingStats.observe``,
    ``observe_wait`` and, through ``resolve_announcements``, ``observe_error``), so what the bench
    measures is what a box learning from its own calls would announce. ``hour_of`` turns the
    bench's clock into the local time of day that the queue passes to ``observe`` and
    ``estimate_wait``; None (``--no-time-of-day``) passes none, as a queue that does not tell it."""

    def __init__(self, hour_of=None):
        self.hour_of = hour_of
        self.stats = HandlingStats()
        self.asterisk = AsteriskEstimator()
        self.cpu_s = 0.0  # process time spent in estimate_wait
        self.estimates = 0

    def hour(self, now: float) -> float | None:
        return None if self.hour_of is None else self.hour_of(now)

    def done(self, handle_s: float, now: float) -> None:
        """A call ended ``now`` (QueueManager.call_ended): its handling time is learned."""
        self.stats.observe(handle_s, hour=self.hour(now))

    def say(
        self, position: int, busy_elapsed: list[float], idle: int, waited_s: float, now: float
    ) -> tuple[float, float, float]:
        """What each would announce now: (ours as heard, ours in seconds, Asterisk's as heard)."""
        t0 = time.process_time()
        raw = estimate_wait(position, busy_elapsed, idle, self.stats, hour=self.hour(now))
        self.cpu_s += time.process_time() - t0
        self.estimates += 1
        ours = announced_wait_s(raw) if math.isfinite(raw) else raw
        return ours, raw, self.asterisk.announced_s(waited_s)

    def announce(self, c: Caller, position: int, busy_elapsed: list[float], idle: int) -> None:
        """The announcement on joining (kept on the caller for the join-only score)."""
        c.ours_s, c.ours_raw_s, c.asterisk_s = self.say(position, busy_elapsed, idle, 0.0, c.joined)

    def heard(
        self,
        c: Caller,
        now: float,
        position: int,
        busy_elapsed: list[float],
        idle: int,
        oracle=None,
        serving: int = 0,
    ) -> None:
        """An announcement moment for a caller still waiting, at any position (the first in line
        hears it too): both estimators' remaining waits are recorded. ``oracle``: a callable
        giving the oracle's prediction; ``serving``: agents serving the queue now.

        Ours as engine._announce_position says it: a wait above the last one said to this caller
        is held at the last one unless fewer agents serve now than then; a wait said is
        remembered (the box's ``said_wait``/``said_serving``), "no time" is not."""
        if now == c.joined and c.ours_s is not None:
            ours, raw, ast = c.ours_s, c.ours_raw_s, c.asterisk_s  # the join announcement itself
        else:
            ours, raw, ast = self.say(position, busy_elapsed, idle, now - c.joined, now)
        if math.isfinite(raw):
            if c.said_s is not None and raw > c.said_s and not serving < c.said_serving:
                raw = c.said_s
                ours = announced_wait_s(raw)
            c.said_s, c.said_serving = raw, serving
        c.heard.append(Heard(now, position, ours, raw, ast, oracle() if oracle is not None else None))

    def answered(self, joined: float, now: float, heard: list[Heard]) -> None:
        """A caller was answered ``now``: what QueueManager.answered does on the box. Asterisk
        folds the wait into its average; ours learns the wait, and how wrong each announcement
        made to this caller was (the seconds it said against the seconds that followed), through
        estimate.resolve_announcements with the caller's (time, seconds said, position) list,
        as the queue keeps it in ``QueueEntry.announced`` (no entry for "no time")."""
        self.asterisk.observe_wait(now - joined)
        self.stats.observe_wait(now - joined, abandoned=False)
        said = [(h.at, h.ours_raw_s, h.position) for h in heard if math.isfinite(h.ours_raw_s)]
        resolve_announcements(self.stats, said, now)


# --- synthetic days --------------------------------------------------------------------------


def generate_day(rng: np.random.Generator, agents: int, peak_load: float) -> tuple[list[Caller], float]:
    """The day's callers (arrival, handling, ring and patience times) and its true talk median."""
    day_factor = math.exp(rng.normal(0.0, DAY_FACTOR_SIGMA))
    talk_median = TALK_MEDIAN_S * day_factor
    mean_handle = talk_median * math.exp(TALK_SIGMA**2 / 2) + sum(WRAPUP_S) / 2
    peak_rate = peak_load * agents / mean_handle  # callers per second at the peak
    t, end = OPEN_H * 3600.0, CLOSE_H * 3600.0
    callers = []
    while True:
        t += rng.exponential(1.0 / peak_rate)
        if t >= end:
            break
        if rng.random() <= arrival_profile(t / 3600.0):  # thinning
            callers.append(
                Caller(
                    joined=t,
                    handle_s=talk_median * math.exp(rng.normal(0.0, TALK_SIGMA)) + rng.uniform(*WRAPUP_S),
                    ring_s=rng.uniform(*RING_S),
                    patience=PATIENCE_MEDIAN_S * math.exp(rng.normal(0.0, PATIENCE_SIGMA)),
                    kind="call",
                )
            )
    return callers, talk_median


def generate_clinic_day(
    rng: np.random.Generator, agents: int, level: tuple[float, float]
) -> tuple[list[Caller], float]:
    """A clinic day: the opening burst, the fading rush, bimodal handling. Returns the callers
    and the day's talk-time factor (every call that day is that much longer or shorter)."""
    opening_load, burst_per_agent = level
    day_factor = math.exp(rng.normal(0.0, CLINIC_DAY_FACTOR_SIGMA))
    share = clinic_long_share(OPEN_H)
    short, long_ = CLINIC_KINDS
    mean_handle = (1 - share) * short.mean_handle_s(day_factor) + share * long_.mean_handle_s(day_factor)
    peak_rate = opening_load * agents / mean_handle
    start, end = OPEN_H * 3600.0, CLOSE_H * 3600.0
    joins = list(start + rng.uniform(0.0, CLINIC_BURST_S, rng.poisson(burst_per_agent * agents)))
    t = start
    while True:
        t += rng.exponential(1.0 / peak_rate)
        if t >= end:
            break
        if rng.random() <= clinic_arrival_profile(t / 3600.0):
            joins.append(t)
    callers = []
    for t in sorted(joins):
        kind = long_ if rng.random() < clinic_long_share(t / 3600.0) else short
        talk = kind.talk_median_s * day_factor * math.exp(rng.normal(0.0, kind.talk_sigma))
        callers.append(
            Caller(
                joined=float(t),
                handle_s=talk + rng.uniform(*kind.wrapup_s),
                ring_s=rng.uniform(*CLINIC_RING_S),
                patience=CLINIC_PATIENCE_MEDIAN_S * math.exp(rng.normal(0.0, CLINIC_PATIENCE_SIGMA)),
                kind=kind.name,
            )
        )
    return callers, day_factor


@dataclass(frozen=True)
class Shape:
    """A day generator and the laws it draws from (the oracle reads the laws, nothing else does)."""

    name: str
    levels: dict
    agents: tuple[int, int]
    kinds: tuple[CallKind, ...]
    ring_s: tuple[float, float]
    patience_median_s: float
    patience_sigma: float

    def generate(self, rng: np.random.Generator, agents: int, level) -> tuple[list[Caller], float]:
        """The day's callers and its talk-time factor (1 = the kinds' medians as written)."""
        if self.name == "standard":
            callers, talk_median = generate_day(rng, agents, level)
            return callers, talk_median / TALK_MEDIAN_S
        return generate_clinic_day(rng, agents, level)

    def shares(self, hour: float) -> np.ndarray:
        """Probability of each kind for a caller who joins at ``hour``."""
        if len(self.kinds) == 1:
            return np.ones(1)
        p = clinic_long_share(hour)
        return np.array([1.0 - p, p])


SHAPES = {
    "standard": Shape("standard", SCENARIOS, (2, 4), STANDARD_KINDS, RING_S, PATIENCE_MEDIAN_S, PATIENCE_SIGMA),
    "clinic": Shape(
        "clinic",
        CLINIC_SCENARIOS,
        CLINIC_AGENTS,
        CLINIC_KINDS,
        CLINIC_RING_S,
        CLINIC_PATIENCE_MEDIAN_S,
        CLINIC_PATIENCE_SIGMA,
    ),
}


def simulate_day(
    callers: list[Caller],
    agents: int,
    est: Estimators,
    oracle: "Oracle | None" = None,
    every: float = ANNOUNCE_EVERY_S,
    later_oracle: "Oracle | None" = None,
) -> None:
    """Exact FIFO ACD: events are arrivals, abandonments, answers and agents freeing (after talk
    + wrap), plus the announcement moments of waiting callers (on joining, then every ``every``
    s), which only observe: they change nothing in the queue. ``oracle`` predicts at joining,
    ``later_oracle`` (its own random stream, so the join figures do not depend on how many later
    announcements there were) at the later announcements."""
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, caller or agent)
    seq = 0

    def push(t, kind, ident):
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, ident))
        seq += 1

    for i, c in enumerate(callers):
        push(c.joined, "arrive", i)
    busy_since: dict[int, float] = {}  # agent -> when the agent was taken (rung)
    free_agents = list(range(agents))
    queue: list[int] = []

    def assign(now: float) -> None:
        while queue and free_agents:
            i = queue.pop(0)
            a = free_agents.pop(0)
            c = callers[i]
            c.answered = now + c.ring_s
            c.agent = a
            # Elapsed handling counts from the answer, as the engine measures it; while the
            # phone rings the agent looks like one whose call just began.
            busy_since[a] = c.answered
            push(c.answered, "answered", i)
            push(c.answered + c.handle_s, "free", a)
            push(c.answered + c.handle_s, "done", i)

    def predictor(o: "Oracle", now: float, position: int, ahead: list[int]):
        return lambda: o.predict(
            now, position, [t - now for t in busy_since.values()], [now - callers[q].joined for q in ahead]
        )

    while events:
        now, _, kind, ident = heapq.heappop(events)
        if kind == "arrive":
            c = callers[ident]
            position = len(queue) + 1
            idle = len(free_agents) if not queue else 0
            busy = [max(0.0, now - busy_since[a]) for a in busy_since]
            est.announce(c, position, busy, idle)
            c.queued = idle == 0
            if oracle is not None and c.queued:
                c.oracle_s = predictor(oracle, now, position, list(queue))()
            if c.queued:
                # The first announcement, at joining, then a timer.
                est.heard(c, now, position, busy, idle, (lambda c=c: c.oracle_s) if oracle else None, agents)
                push(now + every, "announce", ident)
            queue.append(ident)
            if c.queued:
                push(now + c.patience, "abandon", ident)
            assign(now)
        elif kind == "announce":
            if ident not in queue:
                continue  # answered (or being rung) or hung up: no more announcements
            c = callers[ident]
            position = queue.index(ident) + 1
            busy = [max(0.0, now - busy_since[a]) for a in busy_since]
            ahead = queue[: position - 1]
            predict = predictor(later_oracle, now, position, ahead) if later_oracle is not None else None
            est.heard(c, now, position, busy, len(free_agents), predict, agents)
            push(now + every, "announce", ident)
        elif kind == "abandon":
            if ident in queue:
                queue.remove(ident)
                callers[ident].abandoned = True
                est.stats.observe_wait(callers[ident].patience, abandoned=True)
        elif kind == "answered":
            c = callers[ident]
            est.answered(c.joined, now, c.heard)
        elif kind == "done":
            est.done(callers[ident].handle_s, now)
        elif kind == "free":
            del busy_since[ident]
            free_agents.append(ident)
            assign(now)


class Oracle:
    """A yardstick, not an estimator the box could use: it knows the generator's true
    distributions (the day's talk times per kind of call and the mix of kinds by hour, wrap-up,
    ring and patience laws) and how long each caller ahead has waited, plays the queue forward
    many times from the exact state and announces the median. No estimator working from the same
    state can expect a smaller absolute error, so its MAE is the floor for ours and shows how
    much of the error is pure chance."""

    SAMPLES = 400

    def __init__(self, shape: Shape, seed: int, stream: int = 99):
        self.shape = shape
        self.rng = np.random.default_rng([seed, stream])
        self.day_factor = 1.0
        self._median = np.array([k.talk_median_s for k in shape.kinds])
        self._sigma = np.array([k.talk_sigma for k in shape.kinds])
        self._wrap_lo = np.array([k.wrapup_s[0] for k in shape.kinds])
        self._wrap_hi = np.array([k.wrapup_s[1] for k in shape.kinds])

    def _lognormal_above(self, median, sigma, lower: np.ndarray) -> np.ndarray:
        """Lognormal draws conditioned on exceeding ``lower`` (elementwise), by inverse CDF."""
        z0 = (np.log(np.maximum(lower, 1e-9)) - np.log(median)) / sigma
        tail = np.where(lower > 0, 0.5 * _erfc(z0 / math.sqrt(2.0)), 1.0)
        return median * np.exp(-sigma * _ndtri(np.maximum(self.rng.random(lower.shape) * tail, 1e-300)))

    def _kinds(self, n: int, hour: float) -> np.ndarray:
        shares = self.shape.shares(hour)
        if len(shares) == 1:
            return np.zeros(n, dtype=int)
        return self.rng.choice(len(shares), size=n, p=shares)

    def _handle_rest(self, elapsed: float, n: int, hour: float) -> np.ndarray:
        """Rest of talk + wrap-up given that it has lasted ``elapsed`` (exact: the kind and the
        wrap-up are drawn in proportion to how likely they make the observed survival)."""
        k = self._kinds(8 * n, hour)
        wrap = self.rng.uniform(self._wrap_lo[k], self._wrap_hi[k])
        median, sigma = self._median[k] * self.day_factor, self._sigma[k]
        lower = elapsed - wrap
        z = (np.log(np.maximum(lower, 1e-9)) - np.log(median)) / sigma
        weight = np.where(lower > 0, 0.5 * _erfc(z / math.sqrt(2.0)), 1.0)
        total = weight.sum()
        pick = self.rng.choice(weight.size, size=n, p=weight / total if total > 0 else None)
        talk = self._lognormal_above(median[pick], sigma[pick], lower[pick])
        return np.maximum(talk + wrap[pick] - elapsed, 0.0)

    def _handle_new(self, n: int, hour: float) -> np.ndarray:
        k = self._kinds(n, hour)
        talk = self._median[k] * self.day_factor * np.exp(self._sigma[k] * self.rng.standard_normal(n))
        return talk + self.rng.uniform(self._wrap_lo[k], self._wrap_hi[k])

    def predict(self, now: float, position: int, answered_in: list[float], ahead_waited: list[float]) -> float:
        """``answered_in``: per busy agent, answer time minus now (> 0 while still ringing);
        ``ahead_waited``: how long each caller ahead has waited."""
        n, shape = self.SAMPLES, self.shape
        free = np.zeros((n, len(answered_in)))
        for i, d in enumerate(answered_in):
            hour = (now + d) / 3600.0  # about when that caller joined: the mix of kinds then
            free[:, i] = d + self._handle_new(n, hour) if d > 0 else self._handle_rest(-d, n, hour)
        rows = np.arange(n)
        for waited in ahead_waited:
            k = free.argmin(axis=1)
            start = free[rows, k]
            patience = self._lognormal_above(shape.patience_median_s, shape.patience_sigma, np.full(n, waited)) - waited
            taken = self.rng.uniform(*shape.ring_s, n) + self._handle_new(n, (now - waited) / 3600.0)
            free[rows, k] = np.where(patience < start, start, start + taken)
        return float(np.median(free.min(axis=1) + self.rng.uniform(*shape.ring_s, n)))


@dataclass
class Level:
    """One load level's result: the tally, the learned state at the end, how it was set up."""

    tally: Tally
    info: dict
    est: Estimators | None = None


def run_synthetic(
    days: int,
    seed: int,
    agents: int | None,
    with_oracle: bool = False,
    every: float = ANNOUNCE_EVERY_S,
    shape: Shape = SHAPES["standard"],
    sink=None,
    time_of_day: bool = True,
) -> dict[str, Level]:
    """Every load level of ``shape`` for ``days`` days each, one learning box per level (its
    state carried from day to day). ``sink(level, day, callers)``, if given, gets each day;
    ``time_of_day``: the queue tells the estimator the local time of day."""
    results = {}
    for level_no, (level, params) in enumerate(shape.levels.items()):
        # The standard generator keeps its seeds of old (its figures stay comparable); the others
        # get streams of their own.
        rng = np.random.default_rng([seed, level_no] if shape.name == "standard" else [seed, level_no, 7])
        est = Estimators(day_hour if time_of_day else None)
        oracle = Oracle(shape, seed) if with_oracle else None
        later_oracle = Oracle(shape, seed, stream=100) if with_oracle else None
        tally = Tally()
        agent_days = []
        for day in range(days):
            k = agents if agents else int(rng.integers(shape.agents[0], shape.agents[1] + 1))
            agent_days.append(k)
            callers, day_factor = shape.generate(rng, k, params)
            if oracle is not None:
                oracle.day_factor = later_oracle.day_factor = day_factor
            simulate_day(callers, k, est, oracle, every, later_oracle)
            for c in callers:
                tally.add(c)
            if sink is not None:
                sink(level, day, callers)
        lo, hi = min(agent_days), max(agent_days)
        results[level] = Level(tally, {"peak_load": params, "agents": f"{lo}-{hi}" if lo != hi else str(lo)}, est)
    return results


# --- the engine's records: write simulated days, replay real ones ----------------------------

_DB_EPOCH = datetime(2026, 1, 5, tzinfo=timezone.utc)  # a Monday; simulated day n is n days later


def _iso(day: int, seconds: float) -> str:
    return (_DB_EPOCH + timedelta(days=day, seconds=seconds)).isoformat(timespec="milliseconds")


class DbWriter:
    """Writes simulated callers into ``queue_calls`` as the engine does (store/queue.py):
    joined_at on joining; answered_at, reason "answered" and wait_s on the answer; left_at and
    handle_s when the call ends; a caller who hung up gets left_at, "caller_hangup", wait_s."""

    def __init__(self, path: str):
        self.db = open_db(path)  # the box's own schema (migrations), not a copy of it

    def sink(self, queue: str):
        def write(level: str, day: int, callers: list[Caller]) -> None:
            rows = []
            for c in callers:
                if c.answered is not None:
                    rows.append(
                        {
                            "queue": queue,
                            "joined_at": _iso(day, c.joined),
                            "answered_at": _iso(day, c.answered),
                            "left_at": _iso(day, c.answered + c.handle_s),
                            "reason": "answered",
                            "wait_s": round(c.answered - c.joined, 2),
                            "agent": f"agent{c.agent}",
                            "handle_s": round(c.handle_s, 2),
                        }
                    )
                elif c.abandoned:
                    rows.append(
                        {
                            "queue": queue,
                            "joined_at": _iso(day, c.joined),
                            "left_at": _iso(day, c.joined + c.patience),
                            "reason": "caller_hangup",
                            "wait_s": round(c.patience, 2),
                        }
                    )
            store_queue.add_stays(self.db, rows)

        return write

    def close(self) -> None:
        self.db.close()


def _ts(text) -> float | None:
    if text in (None, ""):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    return datetime.fromisoformat(str(text)).timestamp()


def replay_db(
    path: str, agents: int | None, every: float = ANNOUNCE_EVERY_S, time_of_day: bool = True
) -> dict[str, Level]:
    """Replay real stays from ``queue_calls``. The number of agents is not recorded; it is
    --agents if given, else the most calls seen in progress at once that day (a lower bound)."""
    try:
        rows = store_queue.waits_in_file(path)
    except sqlite3.Error as e:
        print(f"--from-db {path}: no usable queue_calls table ({e}); nothing to replay")
        return {}
    by_queue: dict[str, list] = {}
    for r in rows:
        q, joined, answered, left, handle = r["queue"], r["joined_at"], r["answered_at"], r["left_at"], r["handle_s"]
        reason = r.get("reason")  # (records from before the exit reason was kept: None)
        j = _ts(joined)
        if j is None:
            continue
        by_queue.setdefault(q or "?", []).append((j, _ts(answered), _ts(left), handle, reason))
    results = {}
    for q, stays in by_queue.items():
        tally, est = Tally(), Estimators(epoch_hour if time_of_day else None)
        days = sorted({datetime.fromtimestamp(s[0]).date() for s in stays})
        for day in days:
            todays = [s for s in stays if datetime.fromtimestamp(s[0]).date() == day]
            _replay_day(todays, agents, est, tally, every)
        results[f"db:{q}"] = Level(tally, {"peak_load": "-", "agents": str(agents or "auto"), "days": len(days)}, est)
    return results


def _replay_day(
    stays: list, agents: int | None, est: Estimators, tally: Tally, every: float = ANNOUNCE_EVERY_S
) -> None:
    # A call is "on an agent" from answered_at for handle_s seconds (talk + wrap-up).
    calls = [(a, a + (h or 0.0)) for (_, a, _, h, _) in stays if a is not None]
    if agents is None:
        points = sorted([(s, 1) for s, _ in calls] + [(e, -1) for _, e in calls])
        level = peak = 0
        for _, d in points:
            level += d
            peak = max(peak, level)
        agents = max(1, peak)
    events = []
    for i, (j, a, left, h, _) in enumerate(stays):
        events.append((j, 1, "join", i))
        if a is not None:
            events.append((a, 0, "answer", i))
            if h is not None:
                events.append((a + h, 0, "done", i))
        elif left is not None:
            events.append((left, 0, "left", i))
        # Announcement moments while the caller waited (on joining, then every ``every`` s);
        # none after an unknown end. They come after everything else at the same instant.
        end = a if a is not None else left
        if end is not None:
            t = j
            while t < end:
                events.append((t, 2, "announce", i))
                t += every
    events.sort()
    waiting: list[int] = []
    on_call: dict[int, float] = {}
    callers: dict[int, Caller] = {}
    for t, _, kind, i in events:
        j, a, left, h, reason = stays[i]
        if kind == "join":
            c = callers[i] = Caller(joined=j, answered=a, abandoned=a is None)
            busy = [t - s for s in on_call.values()]
            # Agents not on a call are free or already ringing for the callers ahead; either
            # way the first callers in line take them.
            idle = max(0, agents - len(busy))
            est.announce(c, len(waiting) + 1, busy, idle)
            c.queued = len(waiting) + 1 > idle
            if a is None or a > j:
                waiting.append(i)
        elif kind == "announce":
            # As in the simulation: announcements are for callers who found no free agent, and
            # none is made while an agent not on a call is taken to be ringing for the caller
            # (position within the idle agents): the simulation takes a caller out of line then.
            if i in waiting and callers[i].queued:
                busy = [t - s for s in on_call.values()]
                idle, position = max(0, agents - len(busy)), waiting.index(i) + 1
                if position > idle:
                    est.heard(callers[i], t, position, busy, idle, serving=agents)
        elif kind == "answer":
            if i in waiting:
                waiting.remove(i)
            # Answered at the very moment of joining: the join comes later in the sort and
            # nothing was announced.
            est.answered(j, a, callers[i].heard if i in callers else [])
            on_call[i] = a
        elif kind == "done":
            on_call.pop(i, None)
            est.done(h, t)
        elif kind == "left":
            if i in waiting:
                waiting.remove(i)
            # As QueueManager.leave: "no_agents" teaches nothing, only a hang-up is impatience.
            # Without a recorded reason every unanswered exit counts as a hang-up.
            if reason != "no_agents":
                est.stats.observe_wait(left - j, abandoned=reason in (None, "", "caller_hangup"))
    for i in sorted(callers):
        tally.add(callers[i])


# --- report ----------------------------------------------------------------------------------


def print_table(name: str, tally: Tally, info: dict) -> None:
    print(f"\n{name}: peak load {info['peak_load']}, agents {info['agents']}")
    print(
        f"  callers {tally.callers}, queued {tally.queued}, abandoned {tally.abandoned} "
        f"(censored, not scored), scored {len(tally.waits)}, "
        f"mean wait {np.mean(tally.waits) if tally.waits else float('nan'):.0f} s"
    )
    no_time = f", no time said {tally.made_no_time}" if tally.made_no_time else ""
    print(
        f"  announcements heard {tally.made} (to callers who then hung up {tally.made_censored}: "
        f"censored, not scored{no_time}), scored {len(tally.remaining)}, mean remaining wait "
        f"{np.mean(tally.remaining) if tally.remaining else float('nan'):.0f} s; "
        f"to the first in line {tally.first_in_line}"
    )
    cols = f"{'MAE s':>8}{'bias s':>9}{'<=1 min':>9}"
    print(f"  {'':<26}{'every announcement heard':>26}   {'on joining only':>26}")
    print(f"  {'estimator':<26}{cols}   {cols}")
    for label, heard, join in (
        ("ours (as announced)", "herr_ours", "err_ours"),
        ("ours (seconds)", "herr_ours_raw", "err_ours_raw"),
        ("asterisk (announced)", "herr_ast", "err_ast"),
        ("oracle (knows generator)", "herr_oracle", "err_oracle"),
    ):
        cells = []
        for key in (heard, join):
            errs = np.asarray(getattr(tally, key), dtype=float)
            cells.append(
                f"{np.mean(np.abs(errs)):>8.0f}{np.mean(errs):>+9.0f}{100 * np.mean(np.abs(errs) <= 60):>8.0f}%"
                if errs.size
                else f"{'-':>8}{'':>18}"
            )
        if any(getattr(tally, key) for key in (heard, join)):
            print(f"  {label:<26}{cells[0]}   {cells[1]}")
    print_by_position(tally)


POSITION_BANDS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 10**9))


def print_by_position(tally: Tally) -> None:
    """Ours against Asterisk by how far back the caller was: where the error comes from."""
    if not tally.positions:
        return
    pos = np.asarray(tally.positions)
    ours, ast = np.asarray(tally.herr_ours), np.asarray(tally.herr_ast)
    # Every scored announcement has an oracle value when the oracle ran.
    oracle = np.asarray(tally.herr_oracle) if len(tally.herr_oracle) == len(pos) else None
    cells = []
    for lo, hi in POSITION_BANDS:
        m = (pos >= lo) & (pos <= hi)
        if m.any():
            band = f"{lo}" if lo == hi else (f"{lo}+" if hi > 1000 else f"{lo}-{hi}")
            cells.append(
                f"{band}: {int(m.sum())} ours {np.mean(np.abs(ours[m])):.0f} ({np.mean(ours[m]):+.0f}) "
                f"ast {np.mean(np.abs(ast[m])):.0f}"
                + (f" oracle {np.mean(np.abs(oracle[m])):.0f}" if oracle is not None else "")
            )
    print("  by position (n, MAE (bias)): " + "; ".join(cells))


def summarize(name: str, results: dict[str, Level], args, days: int, sim_days: int) -> dict:
    """Print one generator's (or the replay's) tables and overall lines; return its JSON line."""
    total = Tally()
    cpu_s, estimates = 0.0, 0
    for level, r in results.items():
        print_table(f"{name} / {level}" if not level.startswith("db:") else level, r.tally, r.info)
        total.merge(r.tally)
        if r.est is not None:
            cpu_s, estimates = cpu_s + r.est.cpu_s, estimates + r.est.estimates
    ours, ast = total.mae("herr_ours"), total.mae("herr_ast")
    ours_join, ast_join = total.mae("err_ours"), total.mae("err_ast")
    ratio, join_ratio = _ratio(ours, ast), _ratio(ours_join, ast_join)
    cpu_ms = 1000.0 * cpu_s / estimates if estimates else float("nan")
    print(
        f"\n{name}, every announcement heard ({len(total.remaining)} scored, every "
        f"{args.announce_every:g} s, every position): ours {ours:.0f} s (bias {total.bias('herr_ours'):+.0f} s), "
        f"asterisk {ast:.0f} s (bias {total.bias('herr_ast'):+.0f} s), ratio {ratio:.2f}"
        + (f", oracle {total.mae('herr_oracle'):.0f} s" if total.herr_oracle else "")
    )
    print(
        f"{name}, on joining only ({len(total.waits)} callers): ours {ours_join:.0f} s, "
        f"asterisk {ast_join:.0f} s, ratio {join_ratio:.2f}"
    )
    print(f"{name}, cost: {cpu_ms:.2f} ms of CPU per estimate ({estimates} estimates)")
    summary = {
        "generator": name,
        "ours_mae_s": _num(ours),
        "ours_bias_s": _num(total.bias("herr_ours")),
        "asterisk_mae_s": _num(ast),
        "asterisk_bias_s": _num(total.bias("herr_ast")),
        "ratio": _num(ratio, 3),
        **(
            {
                "oracle_mae_s": _num(total.mae("herr_oracle")),
                "oracle_bias_s": _num(total.bias("herr_oracle")),
                "oracle_ratio": _num(_ratio(total.mae("herr_oracle"), ast), 3),
                "ours_vs_oracle": _num(_ratio(ours, total.mae("herr_oracle")), 3),
            }
            if total.herr_oracle
            else {}
        ),
        "ours_raw_mae_s": _num(total.mae("herr_ours_raw")),
        "announcements": len(total.remaining),
        "announcements_made": total.made,
        "announcements_censored": total.made_censored,
        "announcements_no_time": total.made_no_time,
        "announcements_first_in_line": total.first_in_line,
        "announce_every_s": args.announce_every,
        "ours_join_mae_s": _num(ours_join),
        "asterisk_join_mae_s": _num(ast_join),
        "join_ratio": _num(join_ratio, 3),
        "ours_join_raw_mae_s": _num(total.mae("err_ours_raw")),
        **(
            {
                "oracle_join_mae_s": _num(total.mae("err_oracle")),
                "oracle_join_ratio": _num(_ratio(total.mae("err_oracle"), ast_join), 3),
            }
            if total.err_oracle
            else {}
        ),
        "cpu_ms_per_estimate": _num(cpu_ms, 3),
        "estimates": estimates,
        "levels": {
            level: {
                "ours_mae_s": _num(r.tally.mae("herr_ours")),
                "ours_bias_s": _num(r.tally.bias("herr_ours")),
                "asterisk_mae_s": _num(r.tally.mae("herr_ast")),
                "ratio": _num(_ratio(r.tally.mae("herr_ours"), r.tally.mae("herr_ast")), 3),
                **({"oracle_mae_s": _num(r.tally.mae("herr_oracle"))} if r.tally.herr_oracle else {}),
            }
            for level, r in results.items()
        },
        "days": days,
        "sim_days": sim_days,
        "callers": total.callers,
        "queued": total.queued,
        "scored": len(total.waits),
        "abandoned": total.abandoned,
        "seed": args.seed,
        "time_of_day": args.time_of_day,
        "source": args.from_db or "synthetic",
    }
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=20, help="simulated days per load level (default 20)")
    ap.add_argument(
        "--generator",
        choices=(*SHAPES, "all"),
        default="all",
        help="which day generator: standard, clinic (rush at opening, bimodal handling, 1-3 agents) or all (default)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the day generator (default 1)")
    ap.add_argument("--agents", type=int, default=None, help="agents every day (default: drawn per day)")
    ap.add_argument(
        "--announce-every",
        type=float,
        default=ANNOUNCE_EVERY_S,
        metavar="S",
        help=f"seconds between a waiting caller's announcements (default {ANNOUNCE_EVERY_S:.0f}, "
        "the queue node's default)",
    )
    ap.add_argument(
        "--no-oracle",
        dest="oracle",
        action="store_false",
        help="skip the oracle that knows the generator (the error floor; most of a default run's time)",
    )
    ap.add_argument(
        "--no-time-of-day",
        dest="time_of_day",
        action="store_false",
        help="do not tell the estimator the local time of day (a queue that does not pass the hour)",
    )
    ap.add_argument("--from-db", metavar="PATH", help="replay queue_calls from this SQLite database instead")
    ap.add_argument(
        "--write-db",
        metavar="PATH",
        help="also store the simulated days in queue_calls of this SQLite database (one queue per "
        "generator and level), for --from-db",
    )
    args = ap.parse_args(argv)
    if not args.announce_every > 0:
        ap.error("--announce-every must be > 0")
    if args.from_db and args.write_db:
        ap.error("--write-db stores simulated days; it does not go with --from-db")

    started = time.monotonic()
    summaries = []
    if args.from_db:
        if not Path(args.from_db).exists():
            print(f"--from-db {args.from_db}: no such file; nothing to replay")
            results = {}
        else:
            results = replay_db(args.from_db, args.agents, args.announce_every, args.time_of_day)
        days = sum(r.info.get("days", 0) for r in results.values())
        summaries.append(summarize("db", results, args, days, days))
    else:
        writer = DbWriter(args.write_db) if args.write_db else None
        try:
            for name in SHAPES if args.generator == "all" else (args.generator,):
                shape = SHAPES[name]
                results = run_synthetic(
                    args.days,
                    args.seed,
                    args.agents,
                    args.oracle,
                    args.announce_every,
                    shape,
                    sink=None if writer is None else _level_sink(writer, name),
                    time_of_day=args.time_of_day,
                )
                summaries.append(summarize(name, results, args, args.days, args.days * len(results)))
        finally:
            if writer is not None:
                writer.close()
    print(f"\n({time.monotonic() - started:.1f} s)")
    for s in summaries:
        print(json.dumps(s))
    return 0


def _level_sink(writer: DbWriter, generator: str):
    """One queue per generator and level, each day on its own date (as a box keeps them)."""
    sinks: dict[str, object] = {}

    def sink(level: str, day: int, callers: list[Caller]) -> None:
        if level not in sinks:
            sinks[level] = writer.sink(f"{generator}-{level.replace(' ', '-')}")
        sinks[level](level, day, callers)

    return sink


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")


def _num(x: float, digits: int = 1):
    return round(x, digits) if math.isfinite(x) else None


if __name__ == "__main__":
    sys.exit(main())
