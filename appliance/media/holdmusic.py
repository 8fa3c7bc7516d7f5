"""Hold music (R11): a public-domain classical piece, rendered at build time from registry packages.

The score comes from the music21 corpus (PyPI ``music21``; its wheel carries the corpus), is
written as MIDI with gentle General MIDI instruments, rendered by ``fluidsynth`` with the
FluidR3 GM soundfont (Debian ``fluidsynth`` and ``fluid-soundfont-gm``), then shaped for the
telephone: converted with the prompts' ``convert_audio``, band-limited to ~300–3400 Hz, gently
compressed so quiet bars survive G.711, faded in and out so the loop point is smooth, and
levelled a few dB below the speech prompts so announcements stand out.

Only scores whose encoding carries its own free licence note are offered (the corpus's
``license.txt`` warns that some encodings restrict commercial use); the note is checked at
build time, so a music21 upgrade that changed it stops the build instead of shipping it.

``ensure_hold_music`` is what the core calls at start; it never leaves the queue silent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PromptError
from .prompts import TARGET_RMS_DBFS, convert_audio, normalise_loudness, read_wav, write_wav_atomic

log = logging.getLogger("centralka.holdmusic")

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
FLUIDSYNTH = "fluidsynth"
MUSIC21_PIN = "music21==10.5.1"
PACKAGED_PATH = Path(__file__).resolve().parent.parent / "data" / "hold_music.wav"
UPLOADED_NAME = "hold_music"  # the admin uploads it as the prompt of this name
# Bump when the piece, the instruments or the shaping change: older built files are then rebuilt.
BUILD_VERSION = 1

# Hold music sits below the announcements (speech prompts are levelled at TARGET_RMS_DBFS).
MUSIC_RMS_DBFS = TARGET_RMS_DBFS - 4.0
BAND_HZ = (300.0, 3400.0)
FADE_IN_S = 0.5
FADE_OUT_S = 2.0
RENDER_RATE = 22050
RENDER_GAIN = 0.4  # fluidsynth master gain; the piece peaks well below full scale at this gain
MAX_RENDER_S = 600  # a stuck note makes fluidsynth render forever: stop at this much audio
RENDER_TIMEOUT_S = 120
FALLBACK_S = 32.0


class HoldMusicError(PromptError):
    "The default hold music cannot be built (a tool, the soundfont or the score is missing)."


@dataclass(frozen=True)
class Piece:
    key: str
    corpus_path: str
    title: str
    composer: str
    measures: tuple[int, int] | None  # the excerpt, inclusive; None = all of it
    programmes: tuple[int, ...]  # General MIDI programme (0-based) for each part, in score order
    rights_must_contain: str  # the encoding's own licence note must say this
    licence: str
    tempo_bpm: float | None = None  # quarter notes a minute, for scores without a tempo mark


# GM programmes used: 0 Acoustic Grand Piano, 48 String Ensemble 1, 49 String Ensemble 2 (slow).
PIECES = {
    "weber": Piece(
        key="weber",
        corpus_path="weber/concertino_clarinet",
        title="Clarinet Concertino, Op. 26 (J. 109): Adagio ma non troppo and Andante theme (bars 1-59)",
        composer="Carl Maria von Weber (1786-1826)",
        measures=(1, 59),
        programmes=(48, 0, 0),  # the clarinet line on strings, the piano reduction on piano
        rights_must_contain="Public Domain",
        licence=(
            "composition in the public domain (composer died 1826); the encoding by Oliver Seely "
            "is marked 'Released to Public Domain in 1998' in the file"
        ),
    ),
    "lusitano": Piece(
        key="lusitano",
        corpus_path="lusitano/allor_che_ignuda",
        title="Allor che ignuda d'herb et fior la terra (madrigal)",
        composer="Vicente Lusitano (c. 1520-after 1561)",
        measures=None,
        programmes=(49, 49, 49),
        rights_must_contain="CC0",
        licence=(
            "composition in the public domain; the encoding by Michael Scott Asato Cuthbert is "
            "released as CC0/Public Domain (note in the file)"
        ),
        tempo_bpm=76,
    ),
}
DEFAULT_PIECE = "weber"
SOUNDFONT_LICENCE = (
    "FluidR3_GM.sf2 by Frank Wen and contributors, MIT licence "
    "(Debian package fluid-soundfont-gm, /usr/share/doc/fluid-soundfont-gm/copyright)"
)


# --- where the files live -----------------------------------------------------------------------


def default_hold_music_path(data_dir: str | Path) -> Path:
    """Where the default hold music is built for a box (once, then reused)."""
    return Path(data_dir) / "music" / "default_hold.wav"


def uploaded_hold_music_path(data_dir: str | Path) -> Path:
    """The admin's own hold music: ``centralka prompt upload hold_music FILE`` puts it here."""
    return Path(data_dir) / "prompts" / "uploaded" / f"{UPLOADED_NAME}.wav"


def fallback_hold_music_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "music" / "fallback_hold.wav"


def _meta_path(wav: Path) -> Path:
    return wav.with_suffix(".json")


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    write_wav_atomic(path, samples, rate)
    os.chmod(path, 0o644)  # the packaged copy is built as root and played by the service user


def _wav_rate(path: Path) -> int | None:
    """The rate of a playable 16-bit WAV with some audio in it, else None."""
    try:
        samples, rate = read_wav(path)
    except Exception:  # noqa: BLE001 — missing, truncated or not a WAV (wave.Error, EOFError, PromptError)
        return None
    return rate if len(samples) else None


def _built_rate(path: Path, piece: str) -> int | None:
    """The rate of ``piece`` built by this version of the code (per the .json beside it), else None."""
    try:
        meta = json.loads(_meta_path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != BUILD_VERSION or meta.get("piece") != piece:
        return None
    return _wav_rate(path)


# --- shaping for the telephone ------------------------------------------------------------------


def _band_limit(x: np.ndarray, rate: int) -> np.ndarray:
    """Gentle band-pass: raised-cosine skirts below 300 Hz and above 3400 Hz (zero-phase)."""
    lo, hi = BAND_HZ
    n = len(x)
    size = 1 << max(1, (n - 1).bit_length())
    spec = np.fft.rfft(x, size)
    f = np.fft.rfftfreq(size, 1.0 / rate)
    gain = np.ones_like(f)
    lo0 = lo * 0.6  # nothing below 180 Hz: G.711 and handset speakers do bass badly
    gain[f <= lo0] = 0.0
    ramp = (f > lo0) & (f < lo)
    gain[ramp] = np.sin(0.5 * np.pi * (f[ramp] - lo0) / (lo - lo0)) ** 2
    hi1 = min(hi * 1.12, rate / 2)
    gain[f >= hi1] = 0.0
    ramp = (f > hi) & (f < hi1)
    gain[ramp] = np.cos(0.5 * np.pi * (f[ramp] - hi) / (hi1 - hi)) ** 2
    return np.fft.irfft(spec * gain, size)[:n]


def _block_rms(x: np.ndarray, block: int) -> np.ndarray:
    n = len(x) // block * block
    if not n:
        return np.sqrt(np.mean(x**2, keepdims=True)) if len(x) else np.zeros(1)
    return np.sqrt(np.mean(x[:n].reshape(-1, block) ** 2, axis=1))


def _trim(x: np.ndarray, rate: int, tail_s: float = 1.0) -> np.ndarray:
    """Drop the silence MIDI and the reverb tail leave at the ends, keeping ``tail_s`` of decay."""
    block = max(1, rate // 50)
    rms = _block_rms(x, block)
    if not len(rms) or rms.max() <= 0:
        return x
    loud = np.nonzero(rms > rms.max() * 10 ** (-40 / 20))[0]
    start = loud[0] * block
    end = min(len(x), (loud[-1] + 1) * block + int(tail_s * rate))
    return x[start:end]


def _compress(x: np.ndarray, rate: int, ratio: float = 2.0) -> np.ndarray:
    """Slow, gentle compression around the median level: pianissimo bars come up, loud ones
    go down, so the music neither vanishes under line noise nor jumps out between announcements."""
    block = max(1, rate // 20)  # 50 ms
    rms = _block_rms(x, block)
    active = rms[rms > 10 ** (-60 / 20)]
    if not len(active):
        return x
    # Level over ~0.6 s, so single notes are not pumped.
    k = 12
    smooth = np.sqrt(np.convolve(rms**2, np.ones(k) / k, mode="same"))
    level = 20 * np.log10(np.maximum(smooth, 1e-6))
    ref = 20 * np.log10(np.median(active))
    gain_db = np.clip((ref - level) * (1 - 1 / ratio), -6.0, 10.0)
    gain_db[level < -65] = 0.0  # do not lift true silence or the reverb floor
    centres = (np.arange(len(gain_db)) + 0.5) * block
    g = np.interp(np.arange(len(x)), centres, 10 ** (gain_db / 20))
    return x * g


def _fade(x: np.ndarray, rate: int) -> np.ndarray:
    """Raised-cosine fade-in and fade-out that reach exactly zero at both ends of the loop."""
    x = x.copy()
    fade_in = min(int(FADE_IN_S * rate), len(x) // 2)
    fade_out = min(int(FADE_OUT_S * rate), len(x) // 2)
    if fade_in > 1:
        x[:fade_in] *= np.sin(0.5 * np.pi * np.arange(fade_in) / (fade_in - 1)) ** 2
    if fade_out > 1:
        x[-fade_out:] *= np.cos(0.5 * np.pi * np.arange(fade_out) / (fade_out - 1)) ** 2
    return x


def _level(x: np.ndarray) -> np.ndarray:
    """Float samples (full scale 1.0) -> int16 at the hold-music level, below the speech prompts."""
    as16 = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    levelled = normalise_loudness(as16)  # speech level, peaks below -1 dBFS
    quieter = levelled.astype(np.float64) * 10 ** ((MUSIC_RMS_DBFS - TARGET_RMS_DBFS) / 20)
    return np.clip(np.round(quieter), -32768, 32767).astype(np.int16)


def shape_for_phone(samples: np.ndarray, rate: int) -> np.ndarray:
    """int16 music at ``rate`` -> band-limited, compressed, faded int16 at the hold-music level."""
    x = samples.astype(np.float64) / 32768.0
    x = _trim(x, rate)
    x = _band_limit(x, rate)
    x = _compress(x, rate)
    peak = np.max(np.abs(x)) if len(x) else 0.0
    if peak > 0:
        x = x / peak * 0.9
    x = _fade(x, rate)
    return _level(x)


def rms_dbfs(samples: np.ndarray, rate: int, floor_dbfs: float = -50.0) -> float:
    """RMS over the 20 ms blocks above ``floor_dbfs`` (how normalise_loudness measures)."""
    x = samples.astype(np.float64) / 32768.0
    rms = _block_rms(x, max(1, rate // 50))
    active = rms[rms > 10 ** (floor_dbfs / 20)]
    if not len(active):
        return float("-inf")
    return float(20 * np.log10(np.sqrt(np.mean(active**2))))


# --- rendering ----------------------------------------------------------------------------------


def _import_music21():
    try:
        import music21  # noqa: F401
        from music21 import corpus, instrument, tempo
    except ImportError as exc:
        raise HoldMusicError(f"music21 is not installed (pip install {MUSIC21_PIN})") from exc
    return music21, corpus, instrument, tempo


def _check_tools(fluidsynth: str, soundfont: Path) -> str:
    exe = shutil.which(fluidsynth)
    if exe is None:
        raise HoldMusicError("fluidsynth is not installed (Debian package fluidsynth)")
    if not Path(soundfont).is_file():
        raise HoldMusicError(f"the soundfont {soundfont} is missing (Debian package fluid-soundfont-gm)")
    return exe


def _score_midi(piece: Piece, midi_path: Path) -> dict:
    """Write the piece as MIDI with our instruments; returns what the score says about itself."""
    music21, corpus, instrument, tempo = _import_music21()
    try:
        score = corpus.parse(piece.corpus_path)
    except Exception as exc:  # noqa: BLE001 — music21 raises many kinds for a missing corpus file
        raise HoldMusicError(f"the music21 corpus has no {piece.corpus_path!r}: {exc}") from exc
    md = score.metadata
    rights = (str(md.copyright) if md is not None and md.copyright is not None else "").strip()
    if piece.rights_must_contain.lower() not in rights.lower():
        raise HoldMusicError(
            f"{piece.corpus_path}: its licence note is {rights or 'missing'!r}, expected "
            f"{piece.rights_must_contain!r}; not shipping it"
        )
    score = score.toSoundingPitch()  # the clarinet is written in B-flat; MIDI must sound in concert pitch
    if piece.measures:
        score = score.measures(*piece.measures)
    # Grace notes have no duration in MIDI: music21 writes their note-off before the note-on,
    # leaving a note that never ends (and fluidsynth then renders forever).
    for n in list(score.recurse().notes):
        if n.duration.isGrace or n.quarterLength == 0:
            n.activeSite.remove(n)
    parts = list(score.parts)
    if len(parts) != len(piece.programmes):
        raise HoldMusicError(f"{piece.corpus_path}: {len(parts)} parts, expected {len(piece.programmes)}")
    for part, programme in zip(parts, piece.programmes):
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        new = instrument.Instrument()
        new.midiProgram = programme
        part.insert(0, new)
    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    if piece.tempo_bpm and not any(m.number for m in marks):
        for m in marks:  # numberless marks play at music21's 120 and would override ours
            m.activeSite.remove(m)
        parts[0].getElementsByClass("Measure").first().insert(0, tempo.MetronomeMark(number=piece.tempo_bpm))
    score.write("midi", fp=str(midi_path))
    return {
        "encoding_rights": rights,
        "music21_version": music21.__version__,
        "corpus_file": (md.corpusFilePath if md is not None else None) or piece.corpus_path,
    }


def _fluidsynth_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = out.strip().splitlines()[0] if out.strip() else "?"
    return first.replace("FluidSynth runtime version", "").strip() or "?"


def _render(exe: str, soundfont: Path, midi_path: Path, wav_path: Path) -> None:
    cmd = [
        exe,
        "-ni",
        "-q",
        "-C",
        "0",
        "-R",
        "1",
        "-g",
        str(RENDER_GAIN),
        "-r",
        str(RENDER_RATE),
        "-T",
        "wav",
        "-O",
        "s16",
        "-F",
        str(wav_path),
        str(soundfont),
        str(midi_path),
    ]
    limit = MAX_RENDER_S * RENDER_RATE * 2 * 2  # stereo 16-bit
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            size = wav_path.stat().st_size if wav_path.exists() else 0
            if size > limit:
                raise HoldMusicError(f"fluidsynth rendered over {MAX_RENDER_S} s of audio (a note never ends)")
            if time.monotonic() - started > RENDER_TIMEOUT_S:
                raise HoldMusicError(f"fluidsynth took over {RENDER_TIMEOUT_S} s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode("utf-8", "replace").strip().splitlines() if proc.stderr else []
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise HoldMusicError(f"fluidsynth failed: {err[-1] if err else proc.returncode}")
    if not wav_path.exists() or wav_path.stat().st_size <= 44:
        raise HoldMusicError("fluidsynth wrote no audio")


def build_hold_music(
    out_path: str | Path,
    rate: int = 8000,
    piece: str = DEFAULT_PIECE,
    *,
    fluidsynth: str = FLUIDSYNTH,
    soundfont: str | Path = SOUNDFONT,
) -> dict:
    """Render ``piece`` to ``out_path`` (mono 16-bit WAV at ``rate``, written atomically) and
    write its metadata beside it (``.json``). Returns the metadata. Raises HoldMusicError."""
    if piece not in PIECES:
        raise HoldMusicError(f"unknown piece {piece!r}; choose one of {', '.join(sorted(PIECES))}")
    p = PIECES[piece]
    out_path = Path(out_path)
    soundfont = Path(soundfont)
    exe = _check_tools(fluidsynth, soundfont)
    _import_music21()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        midi_path = Path(tmp) / "piece.mid"
        raw = Path(tmp) / "render.wav"
        mono = Path(tmp) / "mono.wav"
        info = _score_midi(p, midi_path)
        _render(exe, soundfont, midi_path, raw)
        convert_audio(raw, mono, rate, f"hold music {piece!r}")
        samples, got_rate = read_wav(mono)
    music = shape_for_phone(samples, got_rate)
    seconds = len(music) / got_rate
    meta = {
        "version": BUILD_VERSION,
        "piece": p.key,
        "title": p.title,
        "composer": p.composer,
        "source": (
            f"music21 {info['music21_version']} corpus (PyPI music21), {info['corpus_file']}"
            + (f", bars {p.measures[0]}-{p.measures[1]}" if p.measures else "")
        ),
        "encoding_rights": info["encoding_rights"],
        "licence": p.licence,
        "soundfont": SOUNDFONT_LICENCE,
        "renderer": f"fluidsynth {_fluidsynth_version(exe)}",
        "gm_programmes": list(p.programmes),
        "rate": got_rate,
        "duration_s": round(seconds, 2),
        "rms_dbfs": round(rms_dbfs(music, got_rate), 1),
        "build_s": round(time.monotonic() - started, 1),
    }
    _write_wav(out_path, music, got_rate)
    _write_json_atomic(_meta_path(out_path), meta)
    return meta


# --- the fallback: a generated, gentle tone pattern ---------------------------------------------


def fallback_tones(rate: int, seconds: float = FALLBACK_S) -> np.ndarray:
    """Soft bell-like arpeggios over I-vi-IV-V in C, all inside the telephone band.

    Not music anyone chose, but never silence: a caller in the queue must hear that the line is
    alive. Synthesised here, so it needs neither tools nor packages.
    """
    chords = [(523.25, 659.25, 783.99), (440.00, 523.25, 659.25), (349.23, 440.00, 523.25), (392.00, 493.88, 587.33)]
    n = int(seconds * rate)
    x = np.zeros(n)
    step = 0.5  # one note every half second
    note_len = int(1.6 * rate)
    t = np.arange(note_len) / rate
    env = (1 - np.exp(-t / 0.01)) * np.exp(-t / 0.45)
    i = 0
    while True:
        start = int(i * step * rate)
        if start >= n:
            break
        chord = chords[(i // 8) % len(chords)]
        f = chord[(0, 1, 2, 1, 0, 1, 2, 1)[i % 8]]
        tone = (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2 * f * t)) * env
        end = min(n, start + note_len)
        x[start:end] += tone[: end - start]
        i += 1
    x = _band_limit(x, rate)
    x = x / (np.max(np.abs(x)) or 1.0) * 0.9
    return _level(_fade(x, rate))


def write_fallback(out_path: str | Path, rate: int) -> Path:
    out_path = Path(out_path)
    _write_wav(out_path, fallback_tones(rate), rate)
    _write_json_atomic(
        _meta_path(out_path),
        {
            "version": BUILD_VERSION,
            "piece": "fallback",
            "title": "generated tone pattern (fallback)",
            "composer": None,
            "source": "synthesised by appliance.media.holdmusic",
            "licence": "our own",
            "rate": rate,
            "duration_s": FALLBACK_S,
        },
    )
    return out_path


# --- what the core calls ------------------------------------------------------------------------


def _from_packaged(src: Path, dst: Path, rate: int) -> None:
    """Give the box its own copy of the packaged default, resampled when the bridge runs at
    another rate (then band-limited, faded and levelled as hold music again)."""
    samples, got = read_wav(src)
    if got != rate:
        with tempfile.TemporaryDirectory() as tmp:
            mid = Path(tmp) / "mid.wav"
            convert_audio(src, mid, rate, "packaged hold music")
            resampled, got = read_wav(mid)
        samples = _level(_fade(_band_limit(resampled.astype(np.float64) / 32768.0, got), got))
    _write_wav(dst, samples, got)
    meta = json.loads(_meta_path(src).read_text("utf-8"))
    meta.update(rate=got, copied_from=str(src))
    _write_json_atomic(_meta_path(dst), meta)


def ensure_hold_music(
    data_dir: str | Path,
    rate: int,
    *,
    piece: str = DEFAULT_PIECE,
    fluidsynth: str = FLUIDSYNTH,
    soundfont: str | Path = SOUNDFONT,
    packaged: str | Path | None = None,
) -> Path:
    """The file the queue plays, made if needed; never raises for a missing tool.

    Order: the admin's upload (``<data_dir>/prompts/uploaded/hold_music.wav``); the box's default
    (``<data_dir>/music/default_hold.wav``), made once: copied from the package when the build
    step rendered ``appliance/data/hold_music.wav`` (resampled if the bridge runs at another
    rate), else rendered here with fluidsynth (a few seconds); and when none of that can be had,
    a generated tone pattern (``music/fallback_hold.wav``) with a warning that says how to get
    the real music. A default made by older code or for another piece is made again.
    """
    data_dir = Path(data_dir)
    packaged = Path(packaged) if packaged is not None else PACKAGED_PATH
    uploaded = uploaded_hold_music_path(data_dir)
    if uploaded.exists():
        if _wav_rate(uploaded) is not None:
            return uploaded
        log.warning("uploaded hold music %s is not a playable 16-bit WAV; using the default", uploaded)
    default = default_hold_music_path(data_dir)
    if _built_rate(default, piece) == rate:
        return default
    try:
        if _built_rate(packaged, piece) is not None:
            _from_packaged(packaged, default, rate)
            log.info("hold music: copied the packaged %s to %s", packaged.name, default)
        else:
            log.info("hold music: building the default piece once (a few seconds): %s", default)
            build_hold_music(default, rate, piece, fluidsynth=fluidsynth, soundfont=soundfont)
        return default
    except (PromptError, OSError, ValueError) as exc:
        reason = str(exc)
    if _wav_rate(default) is not None:
        log.warning("hold music: cannot make the default again (%s); keeping the older %s", reason, default)
        return default
    fallback = fallback_hold_music_path(data_dir)
    log.warning(
        "hold music: the default piece cannot be built (%s); callers in the queue hear a generated "
        "tone pattern instead. For the real music install the Debian packages fluidsynth and "
        "fluid-soundfont-gm and %s (make setup does), then restart, or upload your own with "
        "`centralka prompt upload %s FILE`",
        reason,
        MUSIC21_PIN,
        UPLOADED_NAME,
    )
    if _wav_rate(fallback) != rate:
        write_fallback(fallback, rate)
    return fallback


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.media.holdmusic",
        description="Render the default hold music (a public-domain piece) for the telephone.",
    )
    parser.add_argument("out", nargs="?", help="the WAV file to write (metadata goes beside it as .json)")
    parser.add_argument("--piece", default=DEFAULT_PIECE, choices=sorted(PIECES))
    parser.add_argument("--rate", type=int, default=8000, help="sample rate, the bridge clock (default 8000)")
    parser.add_argument("--list", action="store_true", help="list the pieces and their licences")
    parser.add_argument("--fluidsynth", default=FLUIDSYNTH, help=argparse.SUPPRESS)
    parser.add_argument("--soundfont", default=str(SOUNDFONT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        for p in PIECES.values():
            print(f"{p.key}{' (default)' if p.key == DEFAULT_PIECE else ''}: {p.composer} - {p.title}\n    {p.licence}")
        return 0
    if not args.out:
        parser.print_usage(sys.stderr)
        print("holdmusic: error: give the WAV file to write", file=sys.stderr)
        return 2
    if args.rate < 8000 or args.rate > 48000:
        print(f"holdmusic: error: --rate {args.rate}: use 8000-48000", file=sys.stderr)
        return 2
    try:
        meta = build_hold_music(args.out, args.rate, args.piece, fluidsynth=args.fluidsynth, soundfont=args.soundfont)
    except PromptError as exc:
        print(f"holdmusic: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"holdmusic: error: {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"{args.out}: {meta['composer']} - {meta['title']}; {meta['duration_s']:.0f} s at {meta['rate']} Hz, "
        f"{meta['rms_dbfs']:.1f} dBFS RMS, built in {meta['build_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
