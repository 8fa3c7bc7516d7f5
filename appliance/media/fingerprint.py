"""Is this prompt in that recording? A spectral fingerprint match for the self-test call.

The self-test call (appliance/selftest/call.py) records what the calling side hears and asks
whether the configured greeting is in it. A waveform cross-correlation is exact over G.711 but
falls apart over GSM: the full-rate codec keeps the spectral envelope of speech, not its
waveform. So both sides are turned into log band energies (24 bands, 250–3400 Hz, 32 ms frames
every 16 ms) with each band's mean removed (what a codec or a line's level does to a band is
a constant offset in dB), and compared by correlation:

- a coarse pass slides the whole reference over the recording and keeps the best offset;
- a fine pass lets each half-second chunk of the reference move a few frames around that
  offset (a jitter buffer adds and drops frames), and the score is the chunks' mean
  correlation, weighted by how much speech each holds. Silent chunks count for nothing: a
  pause matches any silence.

Measured (tests/test_fingerprint.py, espeak-ng's Polish voice): the greeting through G.711 or
GSM 06.10, quieter and with hiss, scores 0.91–0.93 with all of it heard; the same greeting with
another clinic's name at the end 0.67–0.68 with two thirds heard; another sentence about 0.37.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 8000
FRAME = 256  # 32 ms at 8 kHz
HOP = 128  # 16 ms
BANDS = 24
LOW_HZ, HIGH_HZ = 250.0, 3400.0
CHUNK_FRAMES = 31  # about half a second
FINE_SHIFT = 6  # frames each chunk may move (about ±100 ms)
FLOOR_DB = 45.0
VOICED_DB = 25.0  # a frame this far below the loudest counts as silence
CHUNK_MATCHED = 0.6  # a chunk correlating this well was heard
# What the self-test asks of the greeting unless configured otherwise: the same sentence scores
# 0.9+, one that shares its first two thirds (another clinic's name) about 0.68 — the score is
# what tells them apart. Coverage only asks that most of it was heard: a loaded GSM bridge once
# lost half a second of the right greeting (0.89 with 79 % heard), which must still pass.
MATCH_SCORE = 0.75
MATCH_COVERAGE = 0.6


@dataclass
class Match:
    score: float  # 0..1: mean correlation of the reference's voiced chunks at their best place
    at_s: float  # where in the recording the reference starts
    coverage: float  # share of the reference's speech in chunks that matched (CHUNK_MATCHED)
    seconds: float  # length of the reference

    def heard(self, score: float = MATCH_SCORE, coverage: float = MATCH_COVERAGE) -> bool:
        return self.score >= score and self.coverage >= coverage

    def to_json(self) -> dict:
        return {
            "score": round(self.score, 3),
            "at_s": round(self.at_s, 2),
            "coverage": round(self.coverage, 2),
            "seconds": round(self.seconds, 2),
        }


def _to_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    if rate == RATE or len(x) < 2:
        return x
    n = int(round(len(x) * RATE / rate))
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)


def _band_edges() -> np.ndarray:
    freqs = np.fft.rfftfreq(FRAME, 1.0 / RATE)
    edges = np.geomspace(LOW_HZ, HIGH_HZ, BANDS + 1)
    return np.searchsorted(freqs, edges)


_EDGES = _band_edges()
_WINDOW = np.hanning(FRAME)


def band_energies(samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Log band energies in dB, shape (frames, BANDS); no normalisation."""
    x = _to_rate(samples, rate)
    if len(x) < FRAME:
        return np.zeros((0, BANDS))
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP] * _WINDOW
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    cums = np.concatenate([np.zeros((len(power), 1)), np.cumsum(power, axis=1)], axis=1)
    bands = cums[:, _EDGES[1:]] - cums[:, _EDGES[:-1]]
    db = 10.0 * np.log10(bands + 1.0)
    # Everything more than FLOOR_DB under the loudest band is the same "nothing": a line's hiss
    # and digital silence must not differ where the reference pauses.
    return np.maximum(db, db.max() - FLOOR_DB)


def _voiced(energies: np.ndarray) -> np.ndarray:
    """Frames with speech in them: within VOICED_DB of the loudest frame (and not digital silence)."""
    if not len(energies):
        return np.zeros(0, dtype=bool)
    level = energies.max(axis=1)
    return (level > level.max() - VOICED_DB) & (level > 20.0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-9 else 0.0


def _sliding_corr(rec: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Correlation of ``ref`` (per-band means removed) with every same-length window of ``rec``."""
    n = len(ref)
    windows = np.lib.stride_tricks.sliding_window_view(rec, (n, BANDS))[:, 0]  # (offsets, n, BANDS)
    r = ref - ref.mean(axis=0)
    rnorm = np.sqrt((r * r).sum())
    w = windows - windows.mean(axis=1, keepdims=True)
    num = np.einsum("onb,nb->o", w, r)
    wnorm = np.sqrt(np.einsum("onb,onb->o", w, w))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / (wnorm * rnorm)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def match(recording: np.ndarray, reference: np.ndarray, *, rate: int = RATE, ref_rate: int = RATE) -> Match:
    """Where and how well ``reference`` is heard in ``recording`` (both mono PCM arrays)."""
    ref = band_energies(reference, ref_rate)
    rec = band_energies(recording, rate)
    seconds = len(_to_rate(reference, ref_rate)) / RATE
    voiced = _voiced(ref)
    if not voiced.any() or len(rec) < len(ref) or len(ref) < 2:
        return Match(0.0, 0.0, 0.0, seconds)
    coarse = _sliding_corr(rec, ref)
    best = int(np.argmax(coarse))
    scores, weights = [], []
    for start in range(0, len(ref), CHUNK_FRAMES):
        piece = ref[start : start + CHUNK_FRAMES]
        speech = voiced[start : start + CHUNK_FRAMES]
        if speech.sum() < max(3, len(piece) // 4):
            continue  # mostly a pause: matches any silence, so it proves nothing
        top = 0.0
        for shift in range(-FINE_SHIFT, FINE_SHIFT + 1):
            at = best + start + shift
            if at < 0 or at + len(piece) > len(rec):
                continue
            top = max(top, _corr(rec[at : at + len(piece)], piece))
        scores.append(top)
        weights.append(float(speech.sum()))
    if not scores:
        return Match(0.0, best * HOP / RATE, 0.0, seconds)
    s = np.asarray(scores)
    w = np.asarray(weights)
    return Match(
        score=float(max(0.0, (s * w).sum() / w.sum())),
        at_s=best * HOP / RATE,
        coverage=float(w[s >= CHUNK_MATCHED].sum() / w.sum()),
        seconds=seconds,
    )
