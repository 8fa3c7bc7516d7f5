"""In-band DTMF detection for GSM calls: a GSM caller's key presses arrive as tones in the audio.

Menus and PESEL entry depend on these digits, and a false digit (hold music, a voice saying
"tak") sends a patient down the wrong branch, so the detector is strict in the ways ITU-T Q.24
asks of a receiver and lenient only where GSM codecs need it:

* one Goertzel filter per DTMF frequency over a 20 ms window (160 samples at 8 kHz), stepped
  every 10 ms; a window counts only when
  - each of the two tones is above ``MIN_LEVEL_DBM0`` (Q.24: operate from 0 to about -25 dBm0),
  - the strongest row and column beat every other row/column by ``DOMINANCE_DB``,
  - the two tones hold ``TONE_SHARE`` of the window's energy (speech, music and noise spread
    theirs over many frequencies; a tone more than ~3.5 % off its nominal frequency falls out
    of its filter),
  - twist is within ``NORMAL_TWIST_DB`` (high tone weaker) / ``REVERSE_TWIST_DB`` (stronger),
  - both 10 ms halves of the window carry similar energy (a steady tone, not a syllable);
* a key is reported after ``HITS_TO_REPORT`` consecutive windows agree (a tone of 40 ms is
  always caught, 23 ms never is), exactly once, and the next key only after
  ``MISSES_TO_RELEASE`` windows without it (a 10 ms drop-out inside one press is not two
  presses; Q.24's 40 ms pause between presses is enough).

The detector is fed from the voice channel's reader thread, never the media clock thread.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

SAMPLE_RATE = 8000
ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")

HOP = 80  # 10 ms
WINDOW = 160  # 20 ms

# G.711: a 0 dBm0 sine peaks 3.14 dB below full scale.
DBM0_PEAK = 32768 * 10 ** (-3.14 / 20)
MIN_LEVEL_DBM0 = -30.0
DOMINANCE_DB = 8.0
TONE_SHARE = 0.75
DOMINANCE_EDGE_DB = 4.0
TONE_SHARE_EDGE = 0.5
# Q.24 asks for 8 dB normal and 4 dB reverse twist; a little more room for what a GSM codec
# does to the tones (measured at a boundary, leakage between the filters eats a fraction of a dB).
NORMAL_TWIST_DB = 9.0
REVERSE_TWIST_DB = 6.0
# Each tone is looked for at its nominal frequency and 1.5 % either side (Q.24: accept +-1.5 %);
# a 20 ms window alone loses half a tone's power 25 Hz off, so one filter is not enough.
DETUNE = 0.015
STEADY_DB = 6.0
HARMONIC_DB = 20.0
# Looser: at the edge of the frequency tolerance the column tone's fit leaves some of it close by.
ROW_SECOND_HARMONIC_DB = 15.0
HITS_TO_REPORT = 3
STRICT_HITS = 2
MISSES_TO_RELEASE = 4

_FREQS = np.array([f * (1 + d) for f in ROWS + COLS for d in (-DETUNE, 0.0, DETUNE)])
_N = np.arange(WINDOW)
# Goertzel at the exact frequencies, done as one small matrix product per window.
_BASIS = np.exp(-2j * np.pi * np.outer(_FREQS, _N) / SAMPLE_RATE)
_MIN_AMPLITUDE = DBM0_PEAK * 10 ** (MIN_LEVEL_DBM0 / 20)
# A window with less energy than two tones at the minimum level cannot hold a digit.
_MIN_ENERGY = WINDOW * _MIN_AMPLITUDE**2  # = 2 tones * A^2/2 * N
_DOMINANCE = 10 ** (DOMINANCE_DB / 10)
_DOMINANCE_EDGE = 10 ** (DOMINANCE_EDGE_DB / 10)
_NORMAL_TWIST = 10 ** (NORMAL_TWIST_DB / 10)
_REVERSE_TWIST = 10 ** (REVERSE_TWIST_DB / 10)
_STEADY = 10 ** (STEADY_DB / 10)
_HARMONIC = 10 ** (HARMONIC_DB / 10)
_ROW_SECOND_HARMONIC = 10 ** (ROW_SECOND_HARMONIC_DB / 10)


class DtmfDetector:
    """Feed 8 kHz 16-bit LE mono PCM with :meth:`feed`; each key press calls ``on_digit`` once
    (and is returned by ``feed``)."""

    def __init__(self, on_digit: Callable[[str], None] | None = None):
        self.on_digit = on_digit
        self._pending = np.zeros(0, dtype=np.float64)
        self._odd_byte = b""
        self._last_half: np.ndarray | None = None
        self._candidate: str | None = None
        self._hits = 0
        self._strict = 0
        self._pressed: str | None = None
        self._misses = 0
        self.windows = 0

    def reset(self) -> None:
        self.__init__(self.on_digit)

    def feed(self, pcm: bytes) -> list[str]:
        if self._odd_byte:
            pcm = self._odd_byte + pcm
        self._odd_byte = pcm[len(pcm) & ~1 :]
        samples = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.float64)
        if len(self._pending):
            samples = np.concatenate((self._pending, samples))
        found = []
        n_hops = len(samples) // HOP
        for i in range(n_hops):
            half = samples[i * HOP : (i + 1) * HOP]
            if self._last_half is not None:
                digit = self._step(self._last_half, half)
                if digit is not None:
                    found.append(digit)
            self._last_half = half
        self._pending = samples[n_hops * HOP :]
        for digit in found:
            if self.on_digit is not None:
                self.on_digit(digit)
        return found

    def _step(self, first: np.ndarray, second: np.ndarray) -> str | None:
        self.windows += 1
        found = classify(first, second)
        key, strict = found if found else (None, False)
        if self._pressed is not None:
            if key == self._pressed:
                self._misses = 0
                return None
            self._misses += 1
            if self._misses < MISSES_TO_RELEASE:
                return None
            self._pressed, self._misses = None, 0
            self._candidate, self._hits, self._strict = None, 0, 0
        if key is None:
            self._candidate, self._hits, self._strict = None, 0, 0
            return None
        if key != self._candidate:
            self._candidate, self._hits, self._strict = key, 0, 0
        self._hits += 1
        self._strict += strict
        if self._hits >= HITS_TO_REPORT and self._strict >= STRICT_HITS:
            self._pressed, self._misses = key, 0
            self._candidate, self._hits, self._strict = None, 0, 0
            return key
        return None


def classify(first: np.ndarray, second: np.ndarray) -> tuple[str, bool] | None:
    """The key one 20 ms window (given as its two 10 ms halves) holds and whether it passed the
    strict tests (or only the looser ones for a window where a tone starts or stops), or None."""
    e1 = float(np.dot(first, first))
    e2 = float(np.dot(second, second))
    energy = e1 + e2
    if energy < _MIN_ENERGY:
        return None
    lo, hi = (e1, e2) if e1 < e2 else (e2, e1)
    if lo * _STEADY < hi:
        return None  # the level jumps inside the window: speech, a click, a tone starting
    window = np.concatenate((first, second))
    spectrum = _BASIS @ window
    power = (spectrum.real**2 + spectrum.imag**2).reshape(8, 3).max(axis=1)
    rows, cols = power[:4], power[4:]
    r = int(np.argmax(rows))
    c = int(np.argmax(cols))
    pr, pc = rows[r], cols[c]
    # A sine of amplitude A at the filter's frequency gives |X|^2 = (A N / 2)^2.
    min_power = (_MIN_AMPLITUDE * WINDOW / 2) ** 2
    if pr < min_power or pc < min_power:
        return None
    if pc > pr * _REVERSE_TWIST or pr > pc * _NORMAL_TWIST:
        return None
    # How far the strongest row/column stands out and the share of the window's energy in the
    # two tones (a tone's energy is 2 |X|^2 / N). A window where the tone starts or stops
    # splatters, so it is held to looser limits and only counts next to strict ones.
    dominance = min(pr / max(np.max(np.delete(rows, r)), 1e-9), pc / max(np.max(np.delete(cols, c)), 1e-9))
    share = 2 * (pr + pc) / WINDOW / energy
    if dominance < _DOMINANCE_EDGE or share < TONE_SHARE_EDGE:
        return None
    strict = bool(dominance >= _DOMINANCE and share >= TONE_SHARE)
    # A keypad's tones are (near) pure sines; a held note of an instrument or a voice has
    # overtones. Measured on the box's hold music: chords landing on a row and a column
    # frequency carry a second or third harmonic only 3-18 dB down. The row tone's second
    # harmonic (1394-1882 Hz) sits among the column tones, so it is measured on what is left
    # once the two tones found are fitted and taken away.
    dr = int(np.argmax(_detunes(spectrum, r)))
    dc = int(np.argmax(_detunes(spectrum, 4 + c)))
    if abs(dr - dc) == 2:
        # One tone sharp and the other flat: a keypad makes both from one clock, so its
        # errors go the same way; a note and its octave (an overtone) land just like this.
        strict = False
    fr = _FREQS[3 * r + dr]
    fc = _FREQS[12 + 3 * c + dc]
    basis = np.stack(
        [
            np.cos(2 * np.pi * fr * _N / SAMPLE_RATE),
            np.sin(2 * np.pi * fr * _N / SAMPLE_RATE),
            np.cos(2 * np.pi * fc * _N / SAMPLE_RATE),
            np.sin(2 * np.pi * fc * _N / SAMPLE_RATE),
        ],
        1,
    )
    coef, *_ = np.linalg.lstsq(basis, window, rcond=None)
    rest = window - basis @ coef
    if _tone_power(rest, 3 * ROWS[r]) * _HARMONIC > pr or _tone_power(rest, 2 * COLS[c]) * _HARMONIC > pc:
        return None
    if _tone_power(rest, 2 * ROWS[r]) * _ROW_SECOND_HARMONIC > pr:
        strict = False  # also what the splatter of a tone starting looks like
    return KEYS[r][c], strict


def _detunes(spectrum: np.ndarray, tone: int) -> np.ndarray:
    z = spectrum[3 * tone : 3 * tone + 3]
    return z.real**2 + z.imag**2


def _tone_power(window: np.ndarray, freq: float) -> float:
    z = np.dot(window, np.exp(-2j * np.pi * freq * _N / SAMPLE_RATE))
    return z.real**2 + z.imag**2


def dtmf_tones(
    digits: str,
    *,
    on_ms: float = 100,
    off_ms: float = 100,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
    freq_error: float = 0.0,
    lead_ms: float = 0.0,
) -> bytes:
    """DTMF as a phone sends it: each key ``on_ms`` of two tones, then ``off_ms`` of silence.

    ``level_dbm0`` is the low (row) tone's level; the high tone is ``twist_db`` weaker (negative:
    stronger). ``freq_error`` shifts both tones by that fraction (0.02 = +2 %).
    """
    out = [np.zeros(int(SAMPLE_RATE * lead_ms / 1000))]
    a_low = DBM0_PEAK * 10 ** (level_dbm0 / 20)
    a_high = a_low * 10 ** (-twist_db / 20)
    for digit in digits.upper():
        r = next(i for i, row in enumerate(KEYS) if digit in row)
        c = KEYS[r].index(digit)
        n = np.arange(int(round(SAMPLE_RATE * on_ms / 1000)))
        f_low, f_high = ROWS[r] * (1 + freq_error), COLS[c] * (1 + freq_error)
        out.append(
            a_low * np.sin(2 * math.pi * f_low * n / SAMPLE_RATE)
            + a_high * np.sin(2 * math.pi * f_high * n / SAMPLE_RATE)
        )
        out.append(np.zeros(int(round(SAMPLE_RATE * off_ms / 1000))))
    signal = np.concatenate(out)
    return np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()
