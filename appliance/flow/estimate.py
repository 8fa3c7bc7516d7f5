"""Estimated wait in a queue, measured from real handling times (R10).

R10: "An estimate must be honest: measured from real handling times, and better than a naive
average." The naive average is what Asterisk's app_queue announces (``AsteriskEstimator`` below,
kept for comparison in bench/ewt.py): a running average of past callers' waits, the same number for
the caller who is next and for the caller with ten people ahead.

Ours looks at the queue as it is now. Each agent becomes free at some time: an idle agent now, a
busy agent after the rest of its current call plus wrap-up. Callers are served in order, each
occupying the agent that frees first for one handling time (talk + wrap-up). The caller at
position p is answered at the p-th such release. Handling times are lognormal-shaped (skewed: most
calls short, a few long), so:

- the rest of a call that has already lasted ``e`` seconds is drawn from the lognormal conditioned
  on "longer than e" (a call that has run long tends to run on, one just begun has a full mean
  ahead of it);
- the first of several busy agents to finish frees much sooner than any one agent's expected
  rest: the minimum of random times is not the minimum of their means. That is why the queue is
  sampled (a few hundred draws, a fixed seed, so the same state always gives the same number)
  instead of being played out with means.

The announced value is the median of the sampled answer times: the point that minimises the
absolute error the caller experiences ("about 6 minutes" is as likely to be early as late), and it
is not pulled up by the rare very long call that a mean would spread over everybody.

``HandlingStats`` learns the lognormal's parameters from completed calls with exponential
weighting (recent calls count more; a clinic's calls get longer in flu season), starting from a
prior of 180 s that fades as calls arrive, and is persisted by the queue so a restart keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRIOR_MEAN_S = 180.0  # before any call is measured: a typical reception call with wrap-up
PRIOR_LOG_SIGMA = 0.6  # spread of call lengths before any is measured (lognormal shape)
PRIOR_WEIGHT = 3.0  # the prior counts as this many calls, so it fades after a handful
MIN_ALPHA = 1.0 / 30.0  # then the last ~30 calls dominate: enough to be stable, quick to follow a trend
MIN_HANDLE_S = 1.0
ABANDON_PRIOR_EXPOSURE_S = 600.0  # no abandonments seen yet: the hazard starts at 0 and needs evidence
SAMPLES = 400
_SEED = 20240611  # fixed: an estimate must not jitter between two announcements of the same state


def _log_prior() -> tuple[float, float]:
    var = PRIOR_LOG_SIGMA**2
    return math.log(PRIOR_MEAN_S) - var / 2.0, var


@dataclass
class HandlingStats:
    """Exponentially weighted statistics of one queue's handling time (talk + wrap-up), seconds.

    ``mean``/``var`` are of the times themselves (for status pages), ``log_mean``/``log_var`` of
    their logarithms (the lognormal fit the estimate uses). ``count`` is the number observed.

    It also learns how readily callers give up (``observe_wait``): callers ahead who hang up
    shorten everyone's wait behind them, which matters most when the queue is long. The hazard is
    the classic exposure estimate, abandonments per second of waiting (exponentially weighted),
    so a caller ahead leaves at any moment with the same small probability.
    """

    count: int = 0
    mean: float = PRIOR_MEAN_S
    var: float = (PRIOR_MEAN_S * math.sqrt(math.exp(PRIOR_LOG_SIGMA**2) - 1.0)) ** 2
    log_mean: float = _log_prior()[0]
    log_var: float = _log_prior()[1]
    waits: int = 0
    abandons_ew: float = 0.0
    exposure_ew_s: float = ABANDON_PRIOR_EXPOSURE_S

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
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> "HandlingStats":
        """Tolerant: unknown keys are ignored, missing log moments are derived from mean/var."""
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


def residual_samples(elapsed_s: float, stats: HandlingStats, u: np.ndarray) -> np.ndarray:
    """Remaining handling time of a call already ``elapsed_s`` long, one value per uniform in
    ``u``: the fitted lognormal conditioned on exceeding the elapsed time (inverse-CDF sampling
    in the upper tail, so a call far beyond the usual length still gets a sensible rest)."""
    mu, sigma = stats.log_mean, stats.log_sigma
    if elapsed_s <= 0:
        tail = 1.0
    else:
        z0 = (math.log(elapsed_s) - mu) / sigma
        tail = 0.5 * math.erfc(z0 / math.sqrt(2.0))  # P(handle > elapsed)
    # u in (0,1) maps onto the survival range (0, tail]; z = the quantile from the top.
    z = -_ndtri(np.maximum(u * tail, 1e-300))
    total = np.exp(mu + sigma * z)
    return np.maximum(total - elapsed_s, MIN_HANDLE_S)


def answer_time_samples(
    position: int, busy_elapsed: list[float], idle_agents: int, stats: HandlingStats, samples: int = SAMPLES
) -> np.ndarray:
    """Sampled times (s from now) at which the caller at ``position`` (1 = next) gets an agent."""
    rng = np.random.default_rng(_SEED)
    busy = [max(0.0, float(e)) for e in busy_elapsed]
    free = np.zeros((samples, idle_agents + len(busy)))
    for i, e in enumerate(busy):
        free[:, idle_agents + i] = residual_samples(e, stats, rng.random(samples))
    rows = np.arange(samples)
    mu, sigma = stats.log_mean, stats.log_sigma
    rate = stats.abandon_rate
    for _ in range(position - 1):
        # The caller ahead takes whichever agent frees first and holds it for a fresh handle
        # time, unless that caller has hung up by then (then the agent stays free for the next).
        k = free.argmin(axis=1)
        start = free[rows, k]
        handle = np.exp(mu + sigma * rng.standard_normal(samples))
        if rate > 0:
            gone = rng.exponential(1.0 / rate, samples) < start
            handle = np.where(gone, 0.0, handle)
        free[rows, k] = start + handle
    return free.min(axis=1)


def estimate_wait(position: int, busy_elapsed: list[float], idle_agents: int, stats: HandlingStats) -> float:
    """Seconds until the caller at ``position`` (1 = next) is answered, or ``math.inf`` when no
    agent can answer at all (everyone paused or logged out), so the engine takes the operator
    path instead of promising a time.

    ``busy_elapsed``: for each agent on a call (or in its wrap-up), the seconds since that call
    was answered; ``idle_agents``: agents available now.
    """
    if position <= 0:
        return 0.0
    if idle_agents + len(busy_elapsed) <= 0:
        return math.inf
    if position <= idle_agents:
        return 0.0
    return float(np.median(answer_time_samples(position, busy_elapsed, idle_agents, stats)))


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
