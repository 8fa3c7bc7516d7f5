"""The voice port's audio (8 kHz 16-bit LE mono PCM, 320-byte frames every 20 ms) and the
in-band DTMF a GSM caller's phone sends on it."""

from __future__ import annotations

import array
import math
import sys

SAMPLE_RATE = 8000
FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit mono
FRAME_SECONDS = 0.020

DTMF_FREQUENCIES = {
    "1": (697, 1209),
    "2": (697, 1336),
    "3": (697, 1477),
    "A": (697, 1633),
    "4": (770, 1209),
    "5": (770, 1336),
    "6": (770, 1477),
    "B": (770, 1633),
    "7": (852, 1209),
    "8": (852, 1336),
    "9": (852, 1477),
    "C": (852, 1633),
    "*": (941, 1209),
    "0": (941, 1336),
    "#": (941, 1477),
    "D": (941, 1633),
}


def pcm16(samples) -> bytes:
    """16-bit little-endian PCM from integer samples."""
    pcm = array.array("h", samples)
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()


def dtmf_pcm(digits: str, *, on_ms: int = 100, off_ms: int = 100, level: float = 0.25) -> bytes:
    """Two-tone DTMF as a GSM caller's phone sends it in-band: 8 kHz 16-bit LE mono."""
    out = bytearray()
    amplitude = level * 32767
    for digit in digits.upper():
        low, high = DTMF_FREQUENCIES[digit]
        n_on = SAMPLE_RATE * on_ms // 1000
        out += pcm16(
            int(
                amplitude
                * (math.sin(2 * math.pi * low * i / SAMPLE_RATE) + math.sin(2 * math.pi * high * i / SAMPLE_RATE))
            )
            for i in range(n_on)
        )
        out += bytes(2 * (SAMPLE_RATE * off_ms // 1000))
    return bytes(out)
