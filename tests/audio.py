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
    coverage: float  # share of the prompt heard (1.0 = all of it)


CHUNK_S = 0.4
CHUNK_MIN_SCORE = 0.9
ALIGN_TOLERANCE_S = 0.12


def _resample_to(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples.astype(np.float64)
    n = int(round(len(samples) * target / rate))
    return np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples.astype(np.float64))


def _ncc(x: np.ndarray, r: np.ndarray, energy: np.ndarray, spec_x, size: int) -> np.ndarray:
    m = len(r)
    corr = np.fft.irfft(spec_x * np.conj(np.fft.rfft(r, size)), size)[: len(x) - m + 1]
    win = np.sqrt(np.maximum(energy[m:] - energy[:-m], 1e-9))
    return corr / (win * np.linalg.norm(r) + 1e-9)


def _peaks(score: np.ndarray, min_score: float, spacing: int) -> list[int]:
    idx = np.nonzero(score >= min_score)[0]
    peaks, last = [], -spacing
    for i in idx:
        if i - last < spacing and peaks:
            if score[i] > score[peaks[-1]]:
                peaks[-1] = i
                last = i
            continue
        peaks.append(i)
        last = i
    return peaks


def _load(audio):
    return audio if isinstance(audio, tuple) else read_wav(audio)


def find_occurrences(recording, reference) -> list[tuple[float, float]]:
    """(onset seconds, coverage) of each time ``reference`` is heard in ``recording``.

    The reference is cut into 0.4 s chunks, each located by normalised cross-correlation; chunks
    that line up behind a common onset form one occurrence. Chunking makes this immune to the
    frames a jitter buffer adds or drops, and a prompt cut short by a key press shows up with a
    coverage below 1.
    """
    x, rate = _load(recording)
    r, rrate = _load(reference)
    x = x.astype(np.float64)
    r = _resample_to(r, rrate, rate)
    chunk = int(CHUNK_S * rate)
    n_chunks = max(1, len(r) // chunk)
    if len(x) < chunk:
        return []
    size = 1 << (len(x) + chunk - 1).bit_length()
    spec_x = np.fft.rfft(x, size)
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    onsets: list[tuple[float, int]] = []
    for k in range(n_chunks):
        piece = r[k * chunk : (k + 1) * chunk]
        if np.sqrt(np.mean(piece**2)) < 32768 * 10 ** (SILENCE_DBFS / 20):
            continue  # a pause inside the prompt matches any silence: not evidence
        score = _ncc(x, piece, energy, spec_x, size)
        for p in _peaks(score, CHUNK_MIN_SCORE, chunk):
            onsets.append((p / rate - k * CHUNK_S, k))
    voiced = sum(
        1
        for k in range(n_chunks)
        if np.sqrt(np.mean(r[k * chunk : (k + 1) * chunk] ** 2)) >= 32768 * 10 ** (SILENCE_DBFS / 20)
    )
    onsets.sort()
    found, group = [], []
    for onset, k in onsets + [(float("inf"), -1)]:
        if group and onset - group[0][0] > ALIGN_TOLERANCE_S:
            chunks = {kk for _, kk in group}
            found.append((max(0.0, float(np.median([o for o, _ in group]))), len(chunks) / max(1, voiced)))
            group = []
        group.append((onset, k))
    return [(at, cov) for at, cov in found if cov > 0]


def heard_sequence(recording, references: dict, *, min_coverage: float = 0.5) -> list[Heard]:
    """Every reference heard, in time order: ``[Heard('greeting', 0.04, 1.0), ...]``."""
    out = []
    for name, ref in references.items():
        for at, coverage in find_occurrences(recording, ref):
            if coverage >= min_coverage:
                out.append(Heard(name, at, coverage))
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
