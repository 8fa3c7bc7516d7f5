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
- the mix changes over the day: the registration rush after the line opens is mostly short
  calls, the afternoon has more long ones. When the queue tells the local time of day (``hour``
  in ``observe`` and ``estimate_wait``), each handling time is kept with the hour its call began,
  and the draws favour calls from about the same time of day (a Gaussian weight over the clock,
  ``TOD_SIGMA_H``, with a floor so that an hour never seen still has every call to go by). The
  records decide how much the time of day matters, not an assumed daily shape; without the hour
  every call counts alike, as before;
- the first of several busy agents to finish frees much sooner than any one agent's expected
  rest: the minimum of random times is not the minimum of their means. That is why the queue is
  sampled (a few hundred draws, a fixed seed, so the same state always gives the same number)
  instead of being played out with means.

Until enough calls are known the draws come mostly from a lognormal: the prior of 180 s at
first, then the exponentially weighted fit of the calls measured (``log_mean``/``log_var``). It
keeps a small weight afterwards, which gives a call longer than any seen a sensible rest, and a
box upgraded from the lognormal-only version starts from the fit it had learned.

The announced value is a quantile of the sampled answer times, the median to begin with: the
point that minimises the absolute error the caller experiences ("about 6 minutes" is as likely to
be early as late), not pulled up by the rare very long call that a mean would spread over
everybody.

What the model does not know (agents taking a breath between calls, a phone that rings a while,
callers ahead who give up more in a rush than later) shows up as errors of a consistent sign. The
box sees them: once a caller is answered, each announcement made to that caller is compared with
the wait that followed it (``resolve_announcements`` → ``HandlingStats.observe_error``). Per band
of positions (1, 2, 3-4, 5-8, 9+) it keeps two numbers:

- which quantile of its own sampled distribution to announce. After each resolved announcement
  it moves a little up if the caller waited longer than said, a little down if shorter, so in
  the long run half the announcements are early and half late: a median in fact, not only in
  the model. Position 1 keeps the median: there the wait is the rest of calls in progress, which
  the handling times describe directly, and what the model misses there is mostly the box's rule
  that a wait said never rises (engine._announce_position); that shows as rare large shortfalls,
  which a count of early and late would answer the wrong way. Position 2 moves at half the
  pace of the positions further back;
- a factor on the result, moved slowly by the mean relative error, so that a consistent
  shortfall (every wait 1.5 times what was said) is made up for beyond what a quantile can do.

Both are bounded (``QUANTILE_BOUNDS``, ``FACTOR_BOUNDS``): the model may be off, but a few freak
waits cannot make the box announce nonsense.

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
WAIT_MIN_ALPHA = 1.0 / 200.0  # abandonment: rarer events, so a longer memory (~200 stays)
MIN_HANDLE_S = 1.0
ABANDON_PRIOR_EXPOSURE_S = 600.0  # no abandonments seen yet: the hazard starts at 0 and needs evidence
SAMPLES = 400
_SEED = 20240611  # fixed: an estimate must not jitter between two announcements of the same state

# The handling times themselves. 600 values are several days of a small clinic, enough for every
# hour of the day to have calls of its own; the weight halves every ~140 calls, so a trend (flu
# season, a new colleague) takes over within a day or two. Stored as JSON (value and hour) the
# row is about 10 kB.
RECENT_MAX = 600
RECENT_SCALE = 200.0  # weight of the k-th most recent call: exp(-k / RECENT_SCALE)
FIT_WEIGHT = 3.0  # the lognormal fit counts as this many recent calls (all of it at first)
BLUR_MIN, BLUR_FACTOR = 0.04, 0.5  # kernel width in log space: narrow, so two humps stay two
# Time of day: a call that began h hours (on the clock) from now weighs
# TOD_FLOOR + exp(-h^2 / (2 TOD_SIGMA_H^2)) times its recency weight.
TOD_SIGMA_H = 0.75
TOD_FLOOR = 0.05
_TOD_UNKNOWN = TOD_FLOOR + TOD_SIGMA_H * math.sqrt(2.0 * math.pi) / 24.0  # a call of unknown hour: a day's average

# Self-correction from the box's own past errors, per band of positions (1, 2, 3-4, 5-8, 9+).
CORRECTION_BANDS = (1, 2, 4, 8)  # upper bounds of all but the last band
QUANTILE_STEPS = (0.0, 0.005, 0.01, 0.01, 0.01)  # per band: how far one resolved announcement moves it
QUANTILE_BOUNDS = (0.25, 0.75)
FACTOR_STEP = 0.001  # log factor per resolved announcement, times the relative error (at most 1)
FACTOR_OFFSET_S = 30.0  # relative error = (actual - said) / (said + this): short waits count less
FACTOR_BOUNDS = (0.5, 2.0)


def _log_prior() -> tuple[float, float]:
    var = PRIOR_LOG_SIGMA**2
    return math.log(PRIOR_MEAN_S) - var / 2.0, var


def _neutral_corrections() -> list[list[float]]:
    """Per band: [quantile announced, log of the factor]."""
    return [[0.5, 0.0] for _ in range(len(CORRECTION_BANDS) + 1)]


def correction_band(position: int) -> int:
    """Index of the band of positions whose correction applies."""
    for i, upper in enumerate(CORRECTION_BANDS):
        if position <= upper:
            return i
    return len(CORRECTION_BANDS)


@dataclass
class HandlingStats:
    """What one queue has learned, for its wait estimate. Times are seconds.

    Handling time (talk + wrap-up): ``recent`` keeps the last ``RECENT_MAX`` values, oldest
    first, which is what the estimate draws from, and ``recent_hours`` beside it the local hour
    each of those calls began (None where the queue did not say). ``mean``/``var`` are
    exponentially weighted moments of the times themselves (for status pages), ``log_mean``/
    ``log_var`` of their logarithms (the lognormal fit used while few calls are known and for
    tails beyond any call seen). ``count`` is the number observed.

    It also learns how readily callers give up (``observe_wait``): callers ahead who hang up
    shorten everyone's wait behind them, which matters most when the queue is long. The hazard is
    the classic exposure estimate, abandonments per second of waiting (exponentially weighted),
    so a caller ahead leaves at any moment with the same small probability.

    And how wrong it has been (``observe_error``): ``corrections`` holds, per band of positions,
    the quantile of the sampled answer times to announce and the log of a factor applied to it;
    ``errors`` counts the announcements resolved.
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
    recent_hours: list[float | None] = field(default_factory=list)
    corrections: list[list[float]] = field(default_factory=_neutral_corrections)
    errors: int = 0

    def observe(self, handle_s: float, hour: float | None = None) -> None:
        """One completed call's talk + wrap-up time. ``hour``: the local time of day now, when
        the call ended, in hours (14.5 = 14:30), if the queue knows it; the call is kept with
        the hour it began."""
        x = max(float(handle_s), MIN_HANDLE_S)
        if not math.isfinite(x):
            return
        # 1/(n + prior) at first (a plain average of prior and data), never below MIN_ALPHA.
        alpha = max(1.0 / (self.count + 1 + PRIOR_WEIGHT), MIN_ALPHA)
        self.mean, self.var = _ew_update(self.mean, self.var, x, alpha)
        self.log_mean, self.log_var = _ew_update(self.log_mean, self.log_var, math.log(x), alpha)
        self.count += 1
        # A tenth of a second (and a hundredth of an hour) is finer than anything the estimate
        # can tell apart, and keeps the stored row short.
        began = _hour_or_none(None if hour is None else float(hour) - x / 3600.0)
        if len(self.recent_hours) != len(self.recent):
            self.recent_hours = [None] * len(self.recent)
        self.recent.append(round(x, 1))
        self.recent_hours.append(None if began is None else round(began, 2) % 24.0)
        if len(self.recent) > RECENT_MAX:
            del self.recent[: len(self.recent) - RECENT_MAX]
            del self.recent_hours[: len(self.recent_hours) - RECENT_MAX]

    def observe_wait(self, waited_s: float, abandoned: bool) -> None:
        """One stay in the queue that ended: answered after ``waited_s``, or the caller hung up
        (``abandoned``) after ``waited_s``. Leaving by key or timeout is not impatience; don't
        report those."""
        w = max(0.0, float(waited_s))
        if not math.isfinite(w):
            return
        keep = 1.0 - max(1.0 / (self.waits + 1 + PRIOR_WEIGHT), WAIT_MIN_ALPHA)
        self.abandons_ew = keep * self.abandons_ew + (1.0 if abandoned else 0.0)
        self.exposure_ew_s = keep * self.exposure_ew_s + w
        self.waits += 1

    def observe_error(self, announced_s: float, actual_s: float, position: int) -> bool:
        """One announcement resolved: ``announced_s`` is the wait said to the caller at
        ``position`` (unrounded seconds, as ``estimate_wait`` gave it or as the box held it),
        ``actual_s`` how long that caller then waited from that moment until answered. Call it
        for each announcement made to a caller once the caller is answered (callers who hang up
        resolve nothing: their wait is unknown); ``resolve_announcements`` does. Returns whether
        it was used (an announcement of no time, or of an immediate answer, teaches nothing).

        The quantile of the position's band moves up when the caller waited longer than said and
        down when shorter, so it settles where half the announcements are early; the factor moves
        by the relative error, bounded, so one freak wait (an agent called away for ten minutes)
        cannot swing it."""
        try:
            announced, actual, pos = float(announced_s), float(actual_s), int(position)
        except (TypeError, ValueError):
            return False
        if not (math.isfinite(announced) and math.isfinite(actual)) or announced < MIN_HANDLE_S or pos < 1:
            return False
        band = correction_band(pos)
        quantile, log_factor = self.corrections[band]
        step = QUANTILE_STEPS[band] / 2.0
        if actual > announced:
            quantile += step
        elif actual < announced:
            quantile -= step
        relative = (max(actual, 0.0) - announced) / (announced + FACTOR_OFFSET_S)
        log_factor += FACTOR_STEP * min(max(relative, -1.0), 1.0)
        lo, hi = QUANTILE_BOUNDS
        flo, fhi = math.log(FACTOR_BOUNDS[0]), math.log(FACTOR_BOUNDS[1])
        self.corrections[band] = [min(max(quantile, lo), hi), min(max(log_factor, flo), fhi)]
        self.errors += 1
        return True

    def quantile(self, position: int) -> float:
        """Which quantile of the sampled answer times is announced for ``position`` (0.5 until
        errors are seen)."""
        return self.corrections[correction_band(position)][0]

    def correction(self, position: int) -> float:
        """Factor applied to the announced quantile for ``position`` (1.0 until errors are seen)."""
        return math.exp(self.corrections[correction_band(position)][1])

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
            "recent_hours": list(self.recent_hours),
            "corrections": [list(c) for c in self.corrections],
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> "HandlingStats":
        """Tolerant: unknown keys are ignored, missing log moments are derived from mean/var, and
        a row from before the sample existed loads with none (the lognormal it had learned carries
        the estimate until new calls fill the sample). Hours that do not match the sample count as
        unknown; corrections of another layout (an earlier version kept sums per band) start
        again from neutral."""
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
        pairs = []
        raw_hours = d.get("recent_hours")
        values = list(d.get("recent") or ())
        hours = (
            list(raw_hours) if isinstance(raw_hours, list) and len(raw_hours) == len(values) else [None] * len(values)
        )
        for x, h in zip(values, hours):
            try:
                x = float(x)
            except (TypeError, ValueError):
                continue
            if math.isfinite(x) and x > 0:
                pairs.append((max(x, MIN_HANDLE_S), _hour_or_none(h)))
        pairs = pairs[-RECENT_MAX:]
        s.recent = [x for x, _ in pairs]
        s.recent_hours = [h for _, h in pairs]
        s.corrections = _valid_corrections(d.get("corrections")) or _neutral_corrections()
        s.errors = int(d.get("errors", 0))
        return s


def _hour_or_none(h) -> float | None:
    """A local hour of the day in [0, 24), or None if ``h`` is not a finite number."""
    if h is None or isinstance(h, bool):
        return None
    try:
        h = float(h)
    except (TypeError, ValueError):
        return None
    return h % 24.0 if math.isfinite(h) else None


def _valid_corrections(corr) -> list[list[float]] | None:
    if not isinstance(corr, list) or len(corr) != len(CORRECTION_BANDS) + 1:
        return None
    lo, hi = QUANTILE_BOUNDS
    flo, fhi = math.log(FACTOR_BOUNDS[0]), math.log(FACTOR_BOUNDS[1])
    out = []
    for c in corr:
        try:
            q, f = (float(x) for x in c)
        except (TypeError, ValueError):
            return None
        if not (lo <= q <= hi and flo - 1e-9 <= f <= fhi + 1e-9):
            return None
        out.append([q, f])
    return out


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
    normal per recent call (weights falling with age and, when the hour is known, with the
    distance on the clock between the hour that call began and ``hour``) and the lognormal fit.
    Drawing from it conditioned on "longer than e" is exact, which is what makes the rest of a
    long call right: each component's chance of lasting beyond ``e`` reweights it, so past the
    short hump only the long calls (and the fit's tail) remain."""

    loc: np.ndarray  # log seconds
    scale: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, stats: HandlingStats, hour: float | None = None) -> "HandlingMixture":
        fit = (np.array([stats.log_mean]), np.array([stats.log_sigma]), np.array([FIT_WEIGHT]))
        if not stats.recent:
            return cls(*fit)
        logs = np.log(np.asarray(stats.recent, dtype=float))
        w = np.exp(-np.arange(len(logs) - 1, -1, -1) / RECENT_SCALE)
        hour = _hour_or_none(hour)
        if hour is not None and len(stats.recent_hours) == len(logs):
            w = w * _clock_weight(stats.recent_hours, hour)
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
        ``elapsed_s``."""
        return self.draw_totals(np.asarray(u, dtype=float)[None, :], [elapsed_s])[0]

    def draw_totals(self, u: np.ndarray, elapsed_s) -> np.ndarray:
        """Row i of ``u`` (uniforms) gives handling times conditioned on exceeding
        ``elapsed_s[i]``, all rows in one pass. One uniform does both steps: it picks a component
        by its share of the conditioned mass, and its position inside that share is again
        uniform, which is then mapped through the component's upper tail (inverse CDF)."""
        u = np.asarray(u, dtype=float)
        elapsed = np.asarray(elapsed_s, dtype=float)
        survive = np.ones((len(elapsed), len(self.loc)))
        run = elapsed > 0
        if run.any():
            z0 = (np.log(elapsed[run])[:, None] - self.loc[None, :]) / self.scale[None, :]
            survive[run] = 0.5 * _erfc(z0 / math.sqrt(2.0))
        mass = self.weight[None, :] * survive
        total = mass.sum(axis=1)
        gone = ~(total > 0)
        if gone.any():
            # Longer than anything the model can represent: only the fit's far tail is left.
            mass[gone] = 0.0
            mass[gone, -1] = 1.0
            survive[gone, -1] = np.maximum(survive[gone, -1], 1e-300)
            total[gone] = 1.0
        edges = np.cumsum(mass, axis=1) / total[:, None]
        rows = np.arange(len(elapsed))[:, None]
        last = len(self.loc) - 1
        k = np.empty(u.shape, dtype=np.intp)
        # Rows of the same elapsed time share their edges (every fresh call has 0): one search each.
        for e in np.unique(elapsed):
            same = np.flatnonzero(elapsed == e)
            k[same] = np.searchsorted(edges[same[0]], u[same].ravel(), side="right").reshape(len(same), -1)
        k = np.minimum(k, last)
        lower = np.where(k > 0, edges[rows, np.maximum(k - 1, 0)], 0.0)
        share = np.maximum(edges[rows, k] - lower, 1e-300)
        v = np.clip((u - lower) / share, 0.0, 1.0)
        # v in [0, 1] maps onto that component's survival range (0, survive]; z from the top.
        z = -_ndtri(np.maximum(v * survive[rows, k], 1e-300))
        return np.exp(self.loc[k] + self.scale[k] * z)


def _clock_weight(hours: list[float | None], hour: float) -> np.ndarray:
    """Weight of calls that began at ``hours`` (None: unknown) for an estimate at ``hour``."""
    began = np.array([np.nan if h is None else h for h in hours], dtype=float)
    apart = np.abs(began - hour) % 24.0
    apart = np.minimum(apart, 24.0 - apart)
    w = TOD_FLOOR + np.exp(-0.5 * (apart / TOD_SIGMA_H) ** 2)
    return np.where(np.isnan(began), _TOD_UNKNOWN, w)


_erfc_ufunc = np.frompyfunc(math.erfc, 1, 1)


def _erfc(x: np.ndarray) -> np.ndarray:
    return _erfc_ufunc(np.asarray(x, dtype=float)).astype(float)


def residual_samples(elapsed_s: float, stats: HandlingStats, u: np.ndarray, hour: float | None = None) -> np.ndarray:
    """Remaining handling time of a call already ``elapsed_s`` long, one value per uniform in
    ``u``: the learned handling-time law conditioned on exceeding the elapsed time, so a call far
    beyond the usual length still gets a sensible rest and never a negative one."""
    e = max(0.0, float(elapsed_s))
    total = HandlingMixture.of(stats, hour).draw_total(np.asarray(u, dtype=float), e)
    return np.maximum(total - e, MIN_HANDLE_S)


def _play_queue(
    position: int,
    busy_elapsed: list[float],
    idle_agents: int,
    stats: HandlingStats,
    samples: int,
    free_in: list[float] = (),
    hour: float | None = None,
):
    """Play the queue forward ``samples`` times; yields, for positions 1..``position`` in turn,
    the sampled times (s from now) at which the caller there gets an agent."""
    rng = np.random.default_rng(_SEED)
    mix = HandlingMixture.of(stats, hour)
    busy = [max(0.0, float(e)) for e in busy_elapsed]
    fixed = [max(0.0, float(t)) for t in free_in]
    free = np.zeros((samples, idle_agents + len(fixed) + len(busy)))
    for i, t in enumerate(fixed):
        free[:, idle_agents + i] = t
    first_busy = idle_agents + len(fixed)
    if busy:
        rest = mix.draw_totals(rng.random((len(busy), samples)), busy) - np.asarray(busy)[:, None]
        free[:, first_busy:] = np.maximum(rest, MIN_HANDLE_S).T
    # Every draw at once (a handle time and a patience per caller ahead): one pass is cheaper.
    ahead = max(position - 1, 0)
    handles = np.maximum(mix.draw_totals(rng.random((ahead, samples)), np.zeros(ahead)), MIN_HANDLE_S)
    rate = stats.abandon_rate
    patience = rng.exponential(1.0 / rate, (ahead, samples)) if rate > 0 else None
    rows = np.arange(samples)
    for step in range(position):
        k = free.argmin(axis=1)
        start = free[rows, k]
        yield start
        if step == position - 1:
            return
        # The caller ahead takes whichever agent frees first and holds it for a fresh handle
        # time, unless that caller has hung up by then (then the agent stays free for the next).
        handle = handles[step] if patience is None else np.where(patience[step] < start, 0.0, handles[step])
        free[rows, k] = start + handle


def answer_time_samples(
    position: int,
    busy_elapsed: list[float],
    idle_agents: int,
    stats: HandlingStats,
    samples: int = SAMPLES,
    hour: float | None = None,
) -> np.ndarray:
    """Sampled times (s from now) at which the caller at ``position`` (1 = next) gets an agent,
    from the model alone (no self-correction)."""
    last = None
    for last in _play_queue(position, busy_elapsed, idle_agents, stats, samples, hour=hour):
        pass
    return last


def estimate_wait(
    position: int,
    busy_elapsed: list[float],
    idle_agents: int,
    stats: HandlingStats,
    free_in: list[float] = (),
    hour: float | None = None,
) -> float:
    """Seconds until the caller at ``position`` (1 = next) is answered, or ``math.inf`` when no
    agent can answer at all (everyone paused or logged out), so the engine takes the operator
    path instead of promising a time.

    ``busy_elapsed``: for each agent on a call, the seconds since that call was answered;
    ``idle_agents``: agents available now; ``free_in``: for each agent whose end is known (in
    wrap-up, which has a fixed length), the seconds until that agent is free; ``hour``: the
    local time of day in hours (8.5 = 8:30), if the queue knows it (calls from about the same
    time of day then weigh more).

    The value for a position is the quantile of the sampled answer times that its band has
    learned, times the band's factor (the median, times 1, until errors are seen). Bands can
    disagree, so the result is the largest such value over positions up to this one: a caller
    further back is never promised less than one ahead.
    """
    if position <= 0:
        return 0.0
    if idle_agents + len(busy_elapsed) + len(free_in) <= 0:
        return math.inf
    if position <= idle_agents:
        return 0.0
    plays = list(_play_queue(position, busy_elapsed, idle_agents, stats, SAMPLES, free_in, hour))[idle_agents:]
    # One sort for every position's quantile (linear interpolation, as numpy.quantile).
    ordered = np.sort(np.stack(plays), axis=1)
    best = 0.0
    for row, p in enumerate(range(idle_agents + 1, position + 1)):
        at = stats.quantile(p) * (SAMPLES - 1)
        lo = min(int(at), SAMPLES - 2)
        value = ordered[row, lo] + (at - lo) * (ordered[row, lo + 1] - ordered[row, lo])
        best = max(best, float(value) * stats.correction(p))
    return best


def resolve_announcements(stats: HandlingStats, announced: list[tuple[float, float, int]], answered_at: float) -> int:
    """A caller was answered at ``answered_at`` (monotonic seconds): each announcement made to
    that caller, ``(monotonic time, seconds said, position)`` as the queue keeps them, is
    compared with the wait that followed it (``HandlingStats.observe_error``). Returns how many
    were used; entries that are malformed, say no time or an immediate answer, or lie after the
    answer are skipped. Callers who hang up resolve nothing: do not call it for them."""
    used = 0
    try:
        end = float(answered_at)
    except (TypeError, ValueError):
        return 0
    if not math.isfinite(end):
        return 0
    for item in announced or ():
        try:
            at, said, position = float(item[0]), float(item[1]), int(item[2])
        except (TypeError, ValueError, IndexError):
            continue
        if not math.isfinite(at) or at > end:
            continue
        if stats.observe_error(said, end - at, position):
            used += 1
    return used


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
