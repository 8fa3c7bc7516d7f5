"""Estimated wait in a queue, measured from real handling times (R10).

R10: "An estimate must be honest: measured from real handling times, and better than a naive
average." The naive average is what Asterisk's app_queue announces (``AsteriskEstimator`` below,
kept for comparison in bench/ewt.py): a running average of past callers' waits, the same number for
the caller who is next and for the caller with ten people ahead.

Ours looks at the queue as it is now. Each agent becomes free at some time: an idle agent now, a
busy agent after the rest of its current call plus wrap-up. Callers are served in order, each
occupying the agent that frees first for one handling time (talk + wrap-up). The caller at
position p is answered at the p-th such release. So:

- the rest of a call that has already lasted ``e`` seconds is drawn from the handling times seen
  so far, conditioned on "longer than e". A clinic's calls are not one shape: short
  registrations and long consultations make two humps, and a call that has outlasted the short
  hump is almost surely a long one. A fitted curve of one fixed shape (a lognormal, as here
  before) gets exactly that wrong, so the box keeps the recent handling times themselves
  (``HandlingStats.recent``, at most ``RECENT_MAX``, newer ones weighing more) and draws from
  them, each slightly blurred so a draw can fall between two values seen;
- the first of several busy agents to finish frees much sooner than any one agent's expected
  rest: the minimum of random times is not the minimum of their means. That is why the queue is
  sampled (a few hundred draws, a fixed seed, so the same state always gives the same number)
  instead of being played out with means.

Until enough calls are known the draws come mostly from a lognormal: the prior of 180 s at
first, then the exponentially weighted fit of the calls measured (``log_mean``/``log_var``). It
keeps a small weight afterwards, which gives a call longer than any seen a sensible rest, and a
box upgraded from the lognormal-only version starts from the fit it had learned.

The announced value is the median of the sampled answer times: the point that minimises the
absolute error the caller experiences ("about 6 minutes" is as likely to be early as late), and it
is not pulled up by the rare very long call that a mean would spread over everybody.

What the model does not know (agents taking a breath between calls, a phone that rings longer,
callers ahead who give up more in a rush than later) shows up as a persistent error of the same
sign. The box sees it: when a caller is answered, each earlier announcement to that caller can be
compared with what followed (``HandlingStats.observe_error``). Per band of positions it keeps the
exponentially weighted ratio of the waits that followed to what the model said, and scales later
estimates by it (bounded to ``CORRECTION_BOUNDS``), so a box that keeps promising too little
learns to say more, and one that promises too much learns to say less.

``HandlingStats`` is persisted by the queue as one JSON row per queue, so a restart keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PRIOR_MEAN_S = 180.0  # before any call is measured: a typical reception call with wrap-up
PRIOR_LOG_SIGMA = 0.6  # spread of call lengths before any is measured (lognormal shape)
PRIOR_WEIGHT = 3.0  # the prior counts as this many calls, so it fades after a handful
MIN_ALPHA = 1.0 / 30.0  # then the last ~30 calls dominate: enough to be stable, quick to follow a trend
MIN_HANDLE_S = 1.0
ABANDON_PRIOR_EXPOSURE_S = 600.0  # no abandonments seen yet: the hazard starts at 0 and needs evidence
SAMPLES = 400
_SEED = 20240611  # fixed: an estimate must not jitter between two announcements of the same state

# The handling times themselves. 200 values keep the stored row small (about 1.5 kB of JSON) and
# are several days of a small clinic; the weight halves every ~35 calls, so a trend (flu season,
# a new colleague) takes over within a day while a bimodal mix still has enough of both humps.
RECENT_MAX = 200
RECENT_SCALE = 50.0  # weight of the k-th most recent call: exp(-k / RECENT_SCALE)
FIT_WEIGHT = 3.0  # the lognormal fit counts as this many recent calls (all of it at first)
BLUR_MIN, BLUR_FACTOR = 0.04, 0.5  # kernel width in log space: narrow, so two humps stay two

# Self-correction from the box's own past errors, per band of positions (1-2, 3-4, 5-8, 9+).
CORRECTION_BANDS = (2, 4, 8)  # upper bounds of all but the last band
CORRECTION_SCALE = 150.0  # announcements: the weight of older errors decays with this scale
CORRECTION_PRIOR_S = 20 * 120.0  # as if 20 announcements of 2 min had been exactly right
CORRECTION_BOUNDS = (0.5, 2.0)  # the model may be off, but never by more than this


def _log_prior() -> tuple[float, float]:
    var = PRIOR_LOG_SIGMA**2
    return math.log(PRIOR_MEAN_S) - var / 2.0, var


def _prior_corrections() -> list[list[float]]:
    return [[CORRECTION_PRIOR_S, CORRECTION_PRIOR_S] for _ in range(len(CORRECTION_BANDS) + 1)]


def correction_band(position: int) -> int:
    """Index of the band of positions whose correction applies (position 1 shares the first)."""
    for i, upper in enumerate(CORRECTION_BANDS):
        if position <= upper:
            return i
    return len(CORRECTION_BANDS)


@dataclass
class HandlingStats:
    """What one queue has learned, for its wait estimate. Times are seconds.

    Handling time (talk + wrap-up): ``recent`` keeps the last ``RECENT_MAX`` values, oldest
    first, which is what the estimate draws from. ``mean``/``var`` are exponentially weighted
    moments of the times themselves (for status pages), ``log_mean``/``log_var`` of their
    logarithms (the lognormal fit used while few calls are known and for tails beyond any call
    seen). ``count`` is the number observed.

    It also learns how readily callers give up (``observe_wait``): callers ahead who hang up
    shorten everyone's wait behind them, which matters most when the queue is long. The hazard is
    the classic exposure estimate, abandonments per second of waiting (exponentially weighted),
    so a caller ahead leaves at any moment with the same small probability.

    And how wrong it has been (``observe_error``): ``corrections`` holds, per band of positions,
    the exponentially weighted sums of the waits that followed announcements and of what the
    model (before correction) had said; their ratio scales later estimates in that band.
    """

    count: int = 0
    mean: float = PRIOR_MEAN_S
    var: float = (PRIOR_MEAN_S * math.sqrt(math.exp(PRIOR_LOG_SIGMA**2) - 1.0)) ** 2
    log_mean: float = _log_prior()[0]
    log_var: float = _log_prior()[1]
    waits: int = 0
    abandons_ew: float = 0.0
    exposure_ew_s: float = ABANDON_PRIOR_EXPOSURE_S
    recent: list[float] = field(default_factory=list)
    corrections: list[list[float]] = field(default_factory=_prior_corrections)
    errors: int = 0

    def observe(self, handle_s: float) -> None:
        """One completed call's talk + wrap-up time."""
        x = max(float(handle_s), MIN_HANDLE_S)
        if not math.isfinite(x):
            return
        # 1/(n + prior) at first (a plain average of prior and data), never below MIN_ALPHA.
        alpha = max(1.0 / (self.count + 1 + PRIOR_WEIGHT), MIN_ALPHA)
        self.mean, self.var = _ew_update(self.mean, self.var, x, alpha)
        self.log_mean, self.log_var = _ew_update(self.log_mean, self.log_var, math.log(x), alpha)
        self.count += 1
        # A tenth of a second is finer than anything the estimate can tell apart, and keeps the
        # stored row short.
        self.recent.append(round(x, 1))
        if len(self.recent) > RECENT_MAX:
            del self.recent[: len(self.recent) - RECENT_MAX]

    def observe_wait(self, waited_s: float, abandoned: bool) -> None:
        """One stay in the queue that ended: answered after ``waited_s``, or the caller hung up
        (``abandoned``) after ``waited_s``. Leaving by key or timeout is not impatience; don't
        report those."""
        w = max(0.0, float(waited_s))
        if not math.isfinite(w):
            return
        keep = 1.0 - max(1.0 / (self.waits + 1 + PRIOR_WEIGHT), MIN_ALPHA)
        self.abandons_ew = keep * self.abandons_ew + (1.0 if abandoned else 0.0)
        self.exposure_ew_s = keep * self.exposure_ew_s + w
        self.waits += 1

    def observe_error(self, announced_s: float, actual_s: float, position: int) -> bool:
        """One announcement resolved: ``announced_s`` is what ``estimate_wait`` returned for the
        caller at ``position`` (unrounded seconds), ``actual_s`` how long that caller then
        waited from that moment until answered. Call it for each announcement made to a caller
        once the caller is answered (callers who hang up resolve nothing: their wait is unknown).

        The announcement was already scaled by the band's correction; dividing it back out gives
        what the model said, so the ratio learned is model against reality and does not chase
        its own tail."""
        announced, actual = float(announced_s), float(actual_s)
        if not (math.isfinite(announced) and math.isfinite(actual)) or announced < MIN_HANDLE_S or position < 1:
            return False
        band = correction_band(int(position))
        model = announced / self.correction(int(position))
        # One freak wait (an agent called away for ten minutes) must not swing the factor: the
        # observed wait counts for at most four times, and at least a quarter of, what was said.
        actual = min(max(actual, 0.25 * announced), 4.0 * announced)
        keep = 1.0 - 1.0 / CORRECTION_SCALE
        sums = self.corrections[band]
        sums[0] = keep * sums[0] + actual
        sums[1] = keep * sums[1] + model
        self.errors += 1
        return True

    def correction(self, position: int) -> float:
        """Factor applied to the model's estimate for ``position`` (1.0 until errors are seen)."""
        actual, model = self.corrections[correction_band(position)]
        if not model > 0:
            return 1.0
        lo, hi = CORRECTION_BOUNDS
        return min(max(actual / model, lo), hi)

    @property
    def abandon_rate(self) -> float:
        """Abandonments per second a caller spends waiting (0 until someone has hung up)."""
        return self.abandons_ew / max(self.exposure_ew_s, 1.0)

    @property
    def log_sigma(self) -> float:
        # A floor keeps the fit a distribution (identical test calls would give sigma 0).
        return math.sqrt(max(self.log_var, 0.05**2))

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "mean": self.mean,
            "var": self.var,
            "log_mean": self.log_mean,
            "log_var": self.log_var,
            "waits": self.waits,
            "abandons_ew": self.abandons_ew,
            "exposure_ew_s": self.exposure_ew_s,
            "recent": list(self.recent),
            "corrections": [[round(a, 3), round(m, 3)] for a, m in self.corrections],
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> "HandlingStats":
        """Tolerant: unknown keys are ignored, missing log moments are derived from mean/var, and
        a row from before the sample and the corrections existed loads with none of either (the
        lognormal it had learned carries the estimate until new calls fill the sample)."""
        if not d:
            return cls()
        s = cls()
        s.count = int(d.get("count", 0))
        s.mean = float(d.get("mean", s.mean))
        s.var = float(d.get("var", s.var))
        if "log_mean" in d and "log_var" in d:
            s.log_mean, s.log_var = float(d["log_mean"]), float(d["log_var"])
        elif s.mean > 0:
            # Moment matching of a lognormal to the stored mean and variance.
            s.log_var = math.log1p(max(s.var, 0.0) / s.mean**2)
            s.log_mean = math.log(s.mean) - s.log_var / 2.0
        s.waits = int(d.get("waits", 0))
        s.abandons_ew = float(d.get("abandons_ew", 0.0))
        s.exposure_ew_s = float(d.get("exposure_ew_s", ABANDON_PRIOR_EXPOSURE_S))
        recent = [float(x) for x in d.get("recent") or () if math.isfinite(float(x)) and float(x) > 0]
        s.recent = [max(x, MIN_HANDLE_S) for x in recent[-RECENT_MAX:]]
        corr = d.get("corrections")
        if isinstance(corr, list) and len(corr) == len(s.corrections):
            s.corrections = [[float(a), float(m)] for a, m in corr]
        s.errors = int(d.get("errors", 0))
        return s


def _ew_update(mean: float, var: float, x: float, alpha: float) -> tuple[float, float]:
    diff = x - mean
    incr = alpha * diff
    return mean + incr, (1.0 - alpha) * (var + diff * incr)


def _ndtri(p: np.ndarray) -> np.ndarray:
    """Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9);
    numpy has none and scipy is not a dependency."""
    a = (
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    )
    b = (
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    )
    c = (
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    )
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    p = np.clip(np.asarray(p, dtype=float), 1e-300, 1.0 - 1e-16)
    out = np.empty_like(p)
    lo, hi = p < 0.02425, p > 1.0 - 0.02425
    mid = ~(lo | hi)
    q = p[mid] - 0.5
    r = q * q
    out[mid] = (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    )
    for mask, sign, pp in ((lo, 1.0, p[lo]), (hi, -1.0, 1.0 - p[hi])):
        q = np.sqrt(-2.0 * np.log(pp))
        out[mask] = sign * (
            (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
        )
    return out


@dataclass(frozen=True)
class HandlingMixture:
    """The handling-time law the estimate draws from: a mixture, in log seconds, of one narrow
    normal per recent call (weights falling with age) and the lognormal fit. Drawing from it
    conditioned on "longer than e" is exact, which is what makes the rest of a long call right:
    each component's chance of lasting beyond ``e`` reweights it, so past the short hump only the
    long calls (and the fit's tail) remain."""

    loc: np.ndarray  # log seconds
    scale: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, stats: HandlingStats) -> "HandlingMixture":
        fit = (np.array([stats.log_mean]), np.array([stats.log_sigma]), np.array([FIT_WEIGHT]))
        if not stats.recent:
            return cls(*fit)
        logs = np.log(np.asarray(stats.recent, dtype=float))
        w = np.exp(-np.arange(len(logs) - 1, -1, -1) / RECENT_SCALE)
        n_eff = w.sum() ** 2 / (w**2).sum()
        centre = np.average(logs, weights=w)
        spread = math.sqrt(np.average((logs - centre) ** 2, weights=w))
        # Silverman's rule, halved: its plain form assumes one hump and would melt two into one.
        blur = max(BLUR_MIN, BLUR_FACTOR * 1.06 * spread * n_eff**-0.2)
        return cls(
            np.concatenate([logs, fit[0]]),
            np.concatenate([np.full(len(logs), blur), fit[1]]),
            np.concatenate([w, fit[2]]),
        )

    def draw_total(self, u: np.ndarray, elapsed_s: float = 0.0) -> np.ndarray:
        """Whole handling times, one per uniform in ``u``, conditioned on exceeding
        ``elapsed_s``. One uniform does both steps: it picks a component by its share of the
        conditioned mass, and its position inside that share is again uniform, which is then
        mapped through the component's upper tail (inverse CDF)."""
        if elapsed_s > 0:
            z0 = (math.log(elapsed_s) - self.loc) / self.scale
            survive = 0.5 * np.array([math.erfc(z / math.sqrt(2.0)) for z in z0])
        else:
            survive = np.ones_like(self.loc)
        mass = self.weight * survive
        total = mass.sum()
        if not total > 0:
            # Longer than anything the model can represent: only the fit's far tail is left.
            mass = np.zeros_like(mass)
            mass[-1] = 1.0
            survive = survive.copy()
            survive[-1] = max(survive[-1], 1e-300)
            total = 1.0
        edges = np.cumsum(mass) / total
        k = np.minimum(np.searchsorted(edges, u, side="right"), len(mass) - 1)
        lower = np.where(k > 0, edges[np.maximum(k - 1, 0)], 0.0)
        share = np.maximum(edges[k] - lower, 1e-300)
        v = np.clip((u - lower) / share, 0.0, 1.0)
        # v in [0, 1] maps onto that component's survival range (0, survive]; z from the top.
        z = -_ndtri(np.maximum(v * survive[k], 1e-300))
        return np.exp(self.loc[k] + self.scale[k] * z)


def residual_samples(elapsed_s: float, stats: HandlingStats, u: np.ndarray) -> np.ndarray:
    """Remaining handling time of a call already ``elapsed_s`` long, one value per uniform in
    ``u``: the learned handling-time law conditioned on exceeding the elapsed time, so a call far
    beyond the usual length still gets a sensible rest and never a negative one."""
    e = max(0.0, float(elapsed_s))
    total = HandlingMixture.of(stats).draw_total(np.asarray(u, dtype=float), e)
    return np.maximum(total - e, MIN_HANDLE_S)


def _play_queue(
    position: int,
    busy_elapsed: list[float],
    idle_agents: int,
    stats: HandlingStats,
    samples: int,
    free_in: list[float] = (),
):
    """Play the queue forward ``samples`` times; yields, for positions 1..``position`` in turn,
    the sampled times (s from now) at which the caller there gets an agent."""
    rng = np.random.default_rng(_SEED)
    mix = HandlingMixture.of(stats)
    busy = [max(0.0, float(e)) for e in busy_elapsed]
    fixed = [max(0.0, float(t)) for t in free_in]
    free = np.zeros((samples, idle_agents + len(fixed) + len(busy)))
    for i, t in enumerate(fixed):
        free[:, idle_agents + i] = t
    first_busy = idle_agents + len(fixed)
    for i, e in enumerate(busy):
        free[:, first_busy + i] = np.maximum(mix.draw_total(rng.random(samples), e) - e, MIN_HANDLE_S)
    rows = np.arange(samples)
    rate = stats.abandon_rate
    for step in range(position):
        k = free.argmin(axis=1)
        start = free[rows, k]
        yield start
        if step == position - 1:
            return
        # The caller ahead takes whichever agent frees first and holds it for a fresh handle
        # time, unless that caller has hung up by then (then the agent stays free for the next).
        handle = np.maximum(mix.draw_total(rng.random(samples)), MIN_HANDLE_S)
        if rate > 0:
            gone = rng.exponential(1.0 / rate, samples) < start
            handle = np.where(gone, 0.0, handle)
        free[rows, k] = start + handle


def answer_time_samples(
    position: int, busy_elapsed: list[float], idle_agents: int, stats: HandlingStats, samples: int = SAMPLES
) -> np.ndarray:
    """Sampled times (s from now) at which the caller at ``position`` (1 = next) gets an agent,
    from the model alone (no self-correction)."""
    last = None
    for last in _play_queue(position, busy_elapsed, idle_agents, stats, samples):
        pass
    return last


def estimate_wait(
    position: int,
    busy_elapsed: list[float],
    idle_agents: int,
    stats: HandlingStats,
    free_in: list[float] = (),
) -> float:
    """Seconds until the caller at ``position`` (1 = next) is answered, or ``math.inf`` when no
    agent can answer at all (everyone paused or logged out), so the engine takes the operator
    path instead of promising a time.

    ``busy_elapsed``: for each agent on a call, the seconds since that call was answered;
    ``idle_agents``: agents available now; ``free_in``: for each agent whose end is known (in
    wrap-up, which has a fixed length), the seconds until that agent is free.

    The model's median is scaled by the correction learned for that position's band. Bands can
    disagree, so the result is the largest corrected value over positions up to this one: a
    caller further back is never promised less than one ahead.
    """
    if position <= 0:
        return 0.0
    if idle_agents + len(busy_elapsed) + len(free_in) <= 0:
        return math.inf
    if position <= idle_agents:
        return 0.0
    best = 0.0
    for p, times in enumerate(_play_queue(position, busy_elapsed, idle_agents, stats, SAMPLES, free_in), start=1):
        if p > idle_agents:
            best = max(best, float(np.median(times)) * stats.correction(p))
    return best


class AsteriskEstimator:
    """Asterisk app_queue's announced hold time, for comparison (bench/ewt.py, R10's "naive").

    As read in app_queue.c: when a caller is connected, ``recalc_holdtime`` folds that caller's
    wait (whole seconds from joining to answer) into an integer exponential average
    ``holdtime = (3 * holdtime + wait) >> 2``; callers who hang up do not count. The announcement
    says ``abs((holdtime + 30 - waited_so_far) / 60)`` minutes (C integer division, i.e. rounded
    to the nearest minute at join), the same for every position in the queue, and says nothing
    when that is 0 minutes.
    """

    def __init__(self, holdtime: int = 0):
        self.holdtime = int(holdtime)

    def observe_wait(self, wait_s: float) -> None:
        self.holdtime = (3 * self.holdtime + int(wait_s)) >> 2

    def announced_minutes(self, waited_s: float = 0.0) -> int:
        return abs(int((self.holdtime + 30 - int(waited_s)) / 60))  # int() truncates like C

    def announced_s(self, waited_s: float = 0.0) -> float:
        return 60.0 * self.announced_minutes(waited_s)


def resolve_announcements(stats: HandlingStats, announced: list[tuple[float, float, int]], answered_at: float) -> int:
    """A caller was answered at ``answered_at`` (monotonic): each announcement made to that
    caller, ``(monotonic time, seconds said, position)``, is compared with the wait that followed
    it (``HandlingStats.observe_error``). Returns how many were used (entries that are malformed,
    say no time, or lie after the answer are skipped)."""
    used = 0
    for item in announced or ():
        try:
            at, said, position = float(item[0]), float(item[1]), int(item[2])
        except (TypeError, ValueError, IndexError):
            continue
        actual = float(answered_at) - at
        if not (math.isfinite(at) and math.isfinite(said) and math.isfinite(actual)) or actual < 0:
            continue
        if stats.observe_error(said, actual, position):
            used += 1
    return used
