"""What a caller heard: find known prompts in a recording and measure silences.

Recordings come from the pjsua2 test phone (8 kHz, 16-bit mono, after a G.711 round trip).
A prompt is found by normalised cross-correlation of its waveform against the recording, which
survives G.711 well (scores ~0.9+) and cannot be fooled by a different phrase (scores ~0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.media.prompts import read_wav

FRAME_S = 0.02
SILENCE_DBFS = -45.0


@dataclass
class Heard:
    name: str
    at: float  # seconds from the start of the recording
    score: float


def _resample_to(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples.astype(np.float64)
    n = int(round(len(samples) * target / rate))
    return np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples.astype(np.float64))


def find_occurrences(recording, reference, *, prefix_s: float | None = None, min_score: float = 0.6):
    """Onsets (seconds) and scores of ``reference`` in ``recording`` (paths or (samples, rate))."""
    x, rate = read_wav(recording) if not isinstance(recording, tuple) else recording
    r, rrate = read_wav(reference) if not isinstance(reference, tuple) else reference
    x = x.astype(np.float64)
    r = _resample_to(r, rrate, rate)
    if prefix_s:
        r = r[: int(prefix_s * rate)]
    m = len(r)
    if m == 0 or len(x) < m:
        return []
    n = len(x) + m
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(r, size)), size)[: len(x) - m + 1]
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    win = np.sqrt(np.maximum(energy[m:] - energy[:-m], 1e-9))
    score = corr / (win * np.linalg.norm(r) + 1e-9)
    found = []
    order = np.argsort(score)[::-1]
    taken = np.zeros(len(score), dtype=bool)
    for idx in order[:2000]:
        if score[idx] < min_score:
            break
        if taken[idx]:
            continue
        found.append((idx / rate, float(score[idx])))
        taken[max(0, idx - m // 2): idx + m // 2] = True
    return sorted(found)


def heard_sequence(recording, references: dict, **kw) -> list[Heard]:
    """Every reference heard, in time order: ``[Heard('greeting', 0.04, 0.97), ...]``."""
    out = []
    for name, ref in references.items():
        for at, score in find_occurrences(recording, ref, **kw):
            out.append(Heard(name, at, score))
    return sorted(out, key=lambda h: h.at)


def silences(recording, *, threshold_dbfs: float = SILENCE_DBFS) -> list[tuple[float, float]]:
    """(start, length) of every silent stretch, in seconds."""
    x, rate = read_wav(recording)
    frame = int(FRAME_S * rate)
    n = len(x) // frame
    if n == 0:
        return [(0.0, len(x) / rate)]
    blocks = x[: n * frame].astype(np.float64).reshape(n, frame) / 32768.0
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    silent = rms < 10 ** (threshold_dbfs / 20)
    runs, start = [], None
    for i, s in enumerate(silent):
        if s and start is None:
            start = i
        elif not s and start is not None:
            runs.append((start * FRAME_S, (i - start) * FRAME_S))
            start = None
    if start is not None:
        runs.append((start * FRAME_S, (n - start) * FRAME_S))
    return runs


def longest_silence(recording) -> float:
    return max((length for _, length in silences(recording)), default=0.0)


def first_sound(recording, *, threshold_dbfs: float = SILENCE_DBFS) -> float | None:
    """Seconds until the caller first hears anything."""
    runs = silences(recording, threshold_dbfs=threshold_dbfs)
    if not runs or runs[0][0] > 0:
        return 0.0
    x, rate = read_wav(recording)
    first_len = runs[0][1]
    return first_len if first_len < len(x) / rate - FRAME_S else None
