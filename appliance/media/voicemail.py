"""Audio of a voice message (R15): the beep, listening for the end, storing it compressed.

The bridge records the caller into a WAV file as the call goes (``Leg.record``); this module
reads what has arrived so far to notice the caller has stopped talking (:class:`GrowingWav`),
and afterwards turns the file into MP3 (every mail client and phone plays it; about 1 MB for
5 minutes at 24 kbit/s) with the silence that ended the message cut off. No pjsua2 here.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import PromptError
from .prompts import _run, write_wav_atomic

BEEP_HZ = 1000
BEEP_S = 0.4
# Speech over a phone line sits around -30..-15 dBFS; line noise and comfort noise below -45.
SILENCE_DBFS = -45.0
FRAME_S = 0.1
MP3_KBPS = 24
HEADER_BYTES = 44  # pjmedia's WAV writer: a plain 44-byte header, fixed up when the file closes


def make_beep(path: Path, rate: int) -> Path:
    """The tone before recording: 0.4 s at 1 kHz with soft edges (no click)."""
    if path.exists():
        return path
    t = np.arange(int(BEEP_S * rate)) / rate
    tone = np.sin(2 * np.pi * BEEP_HZ * t)
    ramp = np.minimum(1.0, np.minimum(t, BEEP_S - t) / 0.02)
    write_wav_atomic(path, np.round(tone * ramp * 0.3 * 32767).astype(np.int16), rate)
    return path


def frame_levels(samples: np.ndarray, rate: int) -> np.ndarray:
    """dBFS of each 100 ms frame."""
    n = int(FRAME_S * rate)
    if len(samples) < n:
        return np.zeros(0)
    frames = samples[: len(samples) // n * n].astype(np.float64).reshape(-1, n) / 32768.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-9))


class GrowingWav:
    """Reads the audio a recorder has written so far (16-bit mono), frame by frame."""

    def __init__(self, path: Path, rate: int):
        self.path = Path(path)
        self.rate = rate
        self.offset = HEADER_BYTES
        self.levels: list[float] = []
        self._rest = b""
        self._pending = np.zeros(0, np.int16)

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self._rest + data
        usable = len(data) // 2 * 2
        self._rest = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2")
        self._pending = np.concatenate([self._pending, samples])
        n = int(FRAME_S * self.rate)
        whole = len(self._pending) // n * n
        if whole:
            self.levels.extend(frame_levels(self._pending[:whole], self.rate).tolist())
            self._pending = self._pending[whole:]

    @property
    def seconds(self) -> float:
        return len(self.levels) * FRAME_S

    def spoke(self) -> bool:
        """Has the caller said anything yet (half a second above the silence level)?"""
        return sum(1 for x in self.levels if x > SILENCE_DBFS) >= int(0.5 / FRAME_S)

    def silent_for(self) -> float:
        """Seconds of silence at the end of what has arrived."""
        count = 0
        for level in reversed(self.levels):
            if level > SILENCE_DBFS:
                break
            count += 1
        return count * FRAME_S


def wait_closed(path: Path, timeout: float = 5.0) -> bool:
    """True once the recorder closed the file (its RIFF size matches the file's length)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
            size = os.path.getsize(path)
            if len(head) == 8 and head[:4] == b"RIFF" and struct.unpack("<I", head[4:])[0] == size - 8 and size > 44:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def repair_wav(path: Path) -> float | None:
    """A recording whose writer died before closing it (a power cut, kill -9: pjmedia fixes the
    header's sizes only at close) made whole: the sizes set from the file's length. Returns its
    seconds of audio; None when it is not such a WAV (then it cannot be trusted either)."""
    try:
        with open(path, "r+b") as f:
            head = f.read(HEADER_BYTES)
            if len(head) < HEADER_BYTES or head[:4] != b"RIFF" or head[8:12] != b"WAVE" or head[36:40] != b"data":
                return None
            channels, rate = struct.unpack("<HI", head[22:28])
            bits = struct.unpack("<H", head[34:36])[0]
            f.seek(0, os.SEEK_END)
            data = (f.tell() - HEADER_BYTES) // 2 * 2
            f.truncate(HEADER_BYTES + data)  # half a sample at the end is not audio
            f.seek(4)
            f.write(struct.pack("<I", HEADER_BYTES - 8 + data))
            f.seek(40)
            f.write(struct.pack("<I", data))
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        return None
    if not rate or not channels or bits != 16:
        return None
    return data / (rate * channels * 2)


def compress(src: Path, dst: Path, *, cut_end_s: float = 0.0) -> float:
    """The recording as MP3 (mono, 24 kbit/s), ``cut_end_s`` of trailing silence removed;
    returns its length in seconds. Written atomically next to ``dst``."""
    import wave

    with wave.open(str(src), "rb") as w:
        seconds = w.getnframes() / float(w.getframerate())
    keep = max(0.5, seconds - cut_end_s)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".mp3")
    os.close(fd)
    try:
        _run(["sox", "-q", str(src), "-C", str(MP3_KBPS), "-t", "mp3", tmp, "trim", "0", f"{keep:.2f}"], "voicemail")
        if os.path.getsize(tmp) == 0:
            raise PromptError("voicemail: sox wrote an empty file")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return keep
