"""Prompts: uploaded recordings converted with sox, espeak-ng speech as the fallback.

Every prompt file the bridge plays is 16-bit mono PCM WAV at the bridge clock rate, loudness
normalised, written atomically (a power cut never leaves half a prompt), and rendered once:
the cache key is the text and every setting that changes the sound.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from ..errors import PromptError
from .texts import BUILTIN_PROMPTS

UPLOAD_SUFFIXES = {".wav", ".mp3", ".ogg", ".flac"}
# Loudness target for speech: -20 dBFS RMS over the voiced part, peaks kept below -1 dBFS.
TARGET_RMS_DBFS = -20.0
PEAK_LIMIT_DBFS = -1.0
MAX_UPLOAD_S = 600
_NAME = re.compile(r"^[a-z0-9_]{1,40}$")


def wav_duration(path: str | Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples as int16 (first channel) and the rate."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise PromptError(f"{path}: {8 * width}-bit audio, expected 16-bit")
    samples = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        samples = samples[::channels]
    return samples, rate


def write_wav_atomic(path: Path, samples: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.astype("<i2").tobytes())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # prompts are not secret; the web UI's user must read them
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def normalise_loudness(samples: np.ndarray) -> np.ndarray:
    x = samples.astype(np.float64) / 32768.0
    if not len(x):
        return samples
    # Measure RMS over 20 ms blocks that are not silence, so pauses do not dilute the level.
    block = 160
    n = len(x) // block * block
    blocks = x[:n].reshape(-1, block) if n else x.reshape(1, -1)
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    voiced = rms[rms > 10 ** (-50 / 20)]
    if not len(voiced):
        return samples
    level = np.sqrt(np.mean(voiced**2))
    gain = 10 ** (TARGET_RMS_DBFS / 20) / level
    peak = np.max(np.abs(x))
    gain = min(gain, 10 ** (PEAK_LIMIT_DBFS / 20) / peak) if peak > 0 else gain
    return np.clip(np.round(x * gain * 32768.0), -32768, 32767).astype(np.int16)


def _run(cmd: list[str], what: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise PromptError(f"{what}: '{cmd[0]}' is not installed (Debian package {_PACKAGES.get(cmd[0], cmd[0])})")
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise PromptError(f"{what}: {cmd[0]} took over 60 s") from exc
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PromptError(f"{what}: {cmd[0]} failed: {msg[-1] if msg else proc.returncode}")


_PACKAGES = {"espeak-ng": "espeak-ng", "sox": "sox"}


def convert_audio(src: Path, dst: Path, rate: int, what: str) -> float:
    """Any audio sox reads -> mono 16-bit WAV at ``rate``, loudness normalised. Returns seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "mid.wav"
        _run(["sox", "-q", str(src), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(mid)], what)
        samples, got_rate = read_wav(mid)
    if len(samples) / got_rate > MAX_UPLOAD_S:
        raise PromptError(f"{what}: {len(samples) / got_rate:.0f} s long, at most {MAX_UPLOAD_S} s allowed")
    if not len(samples):
        raise PromptError(f"{what}: the file holds no audio")
    write_wav_atomic(dst, normalise_loudness(samples), got_rate)
    return len(samples) / got_rate


def trim_silence(samples: np.ndarray, rate: int, keep_s: float = 0.05) -> np.ndarray:
    """espeak-ng pads its output; a prompt should start speaking at once (R1)."""
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > 300)[0]
    if not len(loud):
        return samples
    keep = int(keep_s * rate)
    return samples[max(0, loud[0] - keep) : min(len(samples), loud[-1] + keep)]


class PromptLibrary:
    """Finds or makes the audio file for a prompt name.

    Lookup order: an uploaded recording ``<dir>/uploaded/<name>.wav`` (already converted at
    upload), then speech synthesis of the text (flow text, else built-in text), cached under
    ``<dir>/cache``.
    """

    def __init__(
        self, directory: str | Path, *, rate: int = 8000, voice: str = "pl", speed: int = 150, language: str = "pl"
    ):
        self.dir = Path(directory)
        self.rate = rate
        self.voice = voice
        self.speed = speed
        self.language = language

    def text_for(self, name: str, texts: dict | None = None) -> str | None:
        if texts and texts.get(name):
            return texts[name]
        return BUILTIN_PROMPTS.get(self.language, BUILTIN_PROMPTS["pl"]).get(name)

    def uploaded_path(self, name: str) -> Path:
        return self.dir / "uploaded" / f"{name}.wav"

    def upload(self, name: str, src: str | Path) -> float:
        if not _NAME.match(name):
            raise PromptError(f"prompt name {name!r}: use 1-40 of a-z, 0-9 and _")
        src = Path(src)
        if src.suffix.lower() not in UPLOAD_SUFFIXES:
            raise PromptError(f"{src.name}: unsupported file type; use one of {', '.join(sorted(UPLOAD_SUFFIXES))}")
        return convert_audio(src, self.uploaded_path(name), self.rate, f"prompt {name!r} ({src.name})")

    def path(self, name: str, texts: dict | None = None) -> Path:
        uploaded = self.uploaded_path(name)
        if uploaded.exists():
            return uploaded
        text = self.text_for(name, texts)
        if not text:
            raise PromptError(f"prompt {name!r}: no recording and no text")
        return self.synthesise(text, name)

    def synthesise(self, text: str, name: str = "tts") -> Path:
        key = hashlib.sha256(f"{text}|{self.voice}|{self.speed}|{self.rate}|v1".encode()).hexdigest()[:16]
        out = self.dir / "cache" / f"{name}-{key}.wav"
        if out.exists():
            return out
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "tts.wav"
            mid = Path(tmp) / "mid.wav"
            _run(["espeak-ng", "-v", self.voice, "-s", str(self.speed), "-w", str(raw), "--", text], f"prompt {name!r}")
            _run(
                ["sox", "-q", str(raw), "-r", str(self.rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(mid)],
                f"prompt {name!r}",
            )
            samples, rate = read_wav(mid)
        write_wav_atomic(out, normalise_loudness(trim_silence(samples, rate)), rate)
        return out

    def duration(self, name: str, texts: dict | None = None) -> float | None:
        try:
            return wav_duration(self.path(name, texts))
        except PromptError:
            return None
