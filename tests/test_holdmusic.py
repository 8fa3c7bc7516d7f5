"""Hold music (R11): the rendered default piece, its fallback, and which file the queue plays."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from appliance.media import holdmusic
from appliance.media.holdmusic import (
    BUILD_VERSION,
    DEFAULT_PIECE,
    HoldMusicError,
    build_hold_music,
    default_hold_music_path,
    ensure_hold_music,
    fallback_hold_music_path,
    main,
    uploaded_hold_music_path,
)
from appliance.media.prompts import PromptLibrary, read_wav, write_wav_atomic

from .conftest import needs_tools

HAVE_RENDERER = bool(
    shutil.which("fluidsynth") and holdmusic.SOUNDFONT.is_file() and importlib.util.find_spec("music21")
)
needs_renderer = pytest.mark.skipif(
    not HAVE_RENDERER,
    reason="fluidsynth, fluid-soundfont-gm (Debian) and music21 (PyPI) are installed by `make test`",
)
needs_sox = pytest.mark.skipif(not shutil.which("sox"), reason="sox is installed by `make test`")

FRAME_S = 0.02
SILENT_DBFS = -50.0
BOGUS = "/nonexistent/bin/fluidsynth"
NO_PACKAGED = Path("/nonexistent/hold_music.wav")


def frame_dbfs(samples: np.ndarray, rate: int) -> np.ndarray:
    x = samples.astype(np.float64) / 32768.0
    n = int(rate * FRAME_S)
    frames = x[: len(x) // n * n].reshape(-1, n)
    return 20 * np.log10(np.maximum(np.sqrt(np.mean(frames**2, axis=1)), 1e-9))


def longest_silence_s(samples: np.ndarray, rate: int, *, looped: bool = True) -> float:
    """Longest run of 20 ms frames below SILENT_DBFS; ``looped`` joins the end to the start."""
    quiet = frame_dbfs(samples, rate) < SILENT_DBFS
    if looped:
        quiet = np.concatenate([quiet, quiet])
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return min(best, len(samples) // int(rate * FRAME_S)) * FRAME_S


def active_rms_dbfs(samples: np.ndarray, rate: int) -> float:
    db = frame_dbfs(samples, rate)
    active = 10 ** (db[db > SILENT_DBFS] / 20)
    return float(20 * np.log10(np.sqrt(np.mean(active**2))))


def band_share(samples: np.ndarray, rate: int, lo: float, hi: float) -> float:
    x = samples.astype(np.float64)
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / rate)
    return float(power[(f >= lo) & (f <= hi)].sum() / power.sum())


def wav_format(path: Path) -> tuple[int, int, int]:
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth()


def tone(rate: int, seconds: float, freq: float = 440.0, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default piece, rendered once for the module into a box's data directory."""
    if not HAVE_RENDERER:
        pytest.skip("fluidsynth, fluid-soundfont-gm (Debian) and music21 (PyPI) are installed by `make test`")
    data_dir = tmp_path_factory.mktemp("box")
    out = default_hold_music_path(data_dir)
    meta = build_hold_music(out, 8000)
    samples, rate = read_wav(out)
    return data_dir, out, meta, samples, rate


# --- the rendered default piece -----------------------------------------------------------------


@needs_renderer
def test_default_piece_is_bridge_format_and_two_to_five_minutes(built):
    _, out, meta, samples, rate = built
    assert wav_format(out) == (8000, 1, 2)
    seconds = len(samples) / rate
    assert 120 <= seconds <= 300, seconds
    assert abs(meta["duration_s"] - seconds) < 0.1


@needs_renderer
def test_default_piece_is_never_silent_for_two_seconds_even_across_the_loop(built):
    _, _, _, samples, rate = built
    assert longest_silence_s(samples, rate) <= 2.0
    # And it is music, not a low hum: most 20 ms frames are well above the silence floor.
    assert np.mean(frame_dbfs(samples, rate) > -40) > 0.9


@needs_renderer
def test_default_piece_sits_in_the_telephone_band(built):
    _, _, _, samples, rate = built
    assert band_share(samples, rate, 300, 3400) >= 0.8
    assert band_share(samples, rate, 0, 150) < 0.005  # no deep bass for G.711 to mangle


@needs_renderer
def test_default_piece_loops_smoothly(built):
    _, _, _, samples, rate = built
    edge = int(0.05 * rate)
    head, tail = samples[:edge], samples[-edge:]
    for part in (head, tail):
        assert np.sqrt(np.mean(part.astype(np.float64) ** 2)) / 32768 < 10 ** (-45 / 20)
    # No click where the player wraps round: the last and first samples are both near zero.
    assert abs(int(samples[-1])) < 50 and abs(int(samples[0])) < 50
    # ...and the fade really is a fade: the music is much louder a few seconds in.
    assert active_rms_dbfs(samples[5 * rate : 15 * rate], rate) > -35


@needs_renderer
@needs_tools
def test_default_piece_is_quieter_than_a_speech_prompt(built, tmp_path):
    _, _, _, music, rate = built
    speech_path = PromptLibrary(tmp_path / "prompts", rate=rate).synthesise(
        "Wszyscy konsultanci są zajęci. Prosimy czekać na połączenie.", "busy"
    )
    speech, speech_rate = read_wav(speech_path)
    assert speech_rate == rate
    music_db, speech_db = active_rms_dbfs(music, rate), active_rms_dbfs(speech, rate)
    assert music_db <= speech_db - 2.0, (music_db, speech_db)
    assert music_db > speech_db - 10.0, "so quiet that callers think the line is dead"
    assert np.max(np.abs(music.astype(np.int32))) < 32767  # and never clipped


@needs_renderer
def test_metadata_names_the_piece_its_source_and_licences(built):
    _, out, meta, _, _ = built
    assert meta["piece"] == DEFAULT_PIECE
    assert "Weber" in meta["composer"] and meta["title"]
    assert "music21" in meta["source"] and "weber/concertino_clarinet" in meta["source"]
    assert "Public Domain" in meta["encoding_rights"]
    assert "MIT" in meta["soundfont"]
    assert json.loads(out.with_suffix(".json").read_text("utf-8")) == meta
    copyright_file = Path("/usr/share/doc/fluid-soundfont-gm/copyright")
    if copyright_file.exists():  # our licence claim matches what the installed package says
        assert "MIT license" in copyright_file.read_text("utf-8", "replace")


@needs_renderer
def test_the_default_is_built_once_then_reused(built, caplog):
    data_dir, out, _, _, _ = built
    mtime = out.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="centralka.holdmusic"):
        got = ensure_hold_music(data_dir, 8000, fluidsynth=BOGUS, packaged=NO_PACKAGED)
    assert got == out and out.stat().st_mtime_ns == mtime
    assert not caplog.records


@needs_renderer
def test_a_stuck_note_cannot_make_fluidsynth_render_forever(tmp_path, monkeypatch):
    # One organ note with no note-off: fluidsynth's fast render would write audio until the disk fills.
    track = bytes([0x00, 0xC0, 19, 0x00, 0x90, 60, 100, 0x60, 0xFF, 0x2F, 0x00])
    midi = tmp_path / "stuck.mid"
    midi.write_bytes(
        b"MThd"
        + (6).to_bytes(4, "big")
        + bytes([0, 0, 0, 1, 1, 0xE0])
        + b"MTrk"
        + len(track).to_bytes(4, "big")
        + track
    )
    monkeypatch.setattr(holdmusic, "MAX_RENDER_S", 5)
    with pytest.raises(HoldMusicError, match="never ends"):
        holdmusic._render(shutil.which("fluidsynth"), holdmusic.SOUNDFONT, midi, tmp_path / "out.wav")


# --- the fallback and the choice of file (no renderer needed) -----------------------------------


def test_without_fluidsynth_the_queue_gets_a_gentle_tone_pattern_and_a_clear_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="centralka.holdmusic"):
        got = ensure_hold_music(tmp_path, 8000, fluidsynth=BOGUS, packaged=NO_PACKAGED)
    assert got == fallback_hold_music_path(tmp_path)
    assert wav_format(got) == (8000, 1, 2)
    samples, rate = read_wav(got)
    assert len(samples) / rate >= 20
    assert longest_silence_s(samples, rate) <= 2.0
    assert band_share(samples, rate, 300, 3400) >= 0.95
    assert active_rms_dbfs(samples, rate) < -20.0  # below the speech prompts
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "fluidsynth is not installed" in warning
    assert "fluid-soundfont-gm" in warning and "music21" in warning and "hold_music" in warning
    assert not default_hold_music_path(tmp_path).exists()  # so a later start builds the real one


def test_fallback_when_shutil_finds_no_fluidsynth(tmp_path, monkeypatch):
    monkeypatch.setattr(holdmusic.shutil, "which", lambda name: None)
    got = ensure_hold_music(tmp_path, 16000, packaged=NO_PACKAGED)
    assert got == fallback_hold_music_path(tmp_path)
    assert wav_format(got) == (16000, 1, 2)


def test_missing_pieces_are_reported_in_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(HoldMusicError, match=r"^fluidsynth is not installed \(Debian package fluidsynth\)$"):
        build_hold_music(tmp_path / "x.wav", fluidsynth=BOGUS)
    monkeypatch.setattr(holdmusic.shutil, "which", lambda name: "/bin/true")
    with pytest.raises(HoldMusicError, match=r"soundfont .*nope\.sf2 is missing \(Debian package fluid-soundfont-gm\)"):
        build_hold_music(tmp_path / "x.wav", soundfont=tmp_path / "nope.sf2")
    sf2 = tmp_path / "fake.sf2"
    sf2.write_bytes(b"RIFF")
    monkeypatch.setitem(__import__("sys").modules, "music21", None)  # as if not installed
    with pytest.raises(HoldMusicError, match=r"^music21 is not installed \(pip install music21==[0-9.]+\)$"):
        build_hold_music(tmp_path / "x.wav", soundfont=sf2)
    with pytest.raises(HoldMusicError, match="unknown piece"):
        build_hold_music(tmp_path / "x.wav", piece="rock")
    assert not (tmp_path / "x.wav").exists()


def test_cli_exit_codes_and_one_line_errors(tmp_path, capsys):
    assert main(["--list"]) == 0
    assert "weber (default)" in capsys.readouterr().out
    assert main([str(tmp_path / "x.wav"), "--fluidsynth", BOGUS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["holdmusic: error: fluidsynth is not installed (Debian package fluidsynth)"]
    assert main([]) == 2


def _write_default(data_dir: Path, rate: int = 8000, version: int = BUILD_VERSION) -> Path:
    default = default_hold_music_path(data_dir)
    write_wav_atomic(default, tone(rate, 3.0, 330.0), rate)
    default.with_suffix(".json").write_text(json.dumps({"version": version, "piece": DEFAULT_PIECE}))
    return default


def test_an_uploaded_hold_music_wins_over_the_default(tmp_path):
    default = _write_default(tmp_path)
    uploaded = uploaded_hold_music_path(tmp_path)
    write_wav_atomic(uploaded, tone(8000, 3.0), 8000)
    assert uploaded == tmp_path / "prompts" / "uploaded" / "hold_music.wav"
    assert ensure_hold_music(tmp_path, 8000, fluidsynth=BOGUS, packaged=NO_PACKAGED) == uploaded
    # Removing the upload brings the default back.
    uploaded.unlink()
    assert ensure_hold_music(tmp_path, 8000, fluidsynth=BOGUS, packaged=NO_PACKAGED) == default


def test_a_broken_upload_is_ignored(tmp_path, caplog):
    uploaded = uploaded_hold_music_path(tmp_path)
    uploaded.parent.mkdir(parents=True)
    uploaded.write_bytes(b"not a wav")
    with caplog.at_level(logging.WARNING, logger="centralka.holdmusic"):
        got = ensure_hold_music(tmp_path, 8000, fluidsynth=BOGUS, packaged=NO_PACKAGED)
    assert got == fallback_hold_music_path(tmp_path)
    assert any("not a playable" in r.getMessage() for r in caplog.records)


def _fake_packaged(directory: Path, rate: int, version: int = BUILD_VERSION) -> Path:
    path = directory / "pkg" / "hold_music.wav"
    write_wav_atomic(path, tone(rate, 4.0, 523.25), rate)
    path.with_suffix(".json").write_text(json.dumps({"version": version, "piece": DEFAULT_PIECE}))
    return path


def test_the_packaged_copy_becomes_the_boxs_default_once(tmp_path):
    packaged = _fake_packaged(tmp_path, 8000)
    box = tmp_path / "box"
    got = ensure_hold_music(box, 8000, fluidsynth=BOGUS, packaged=packaged)
    assert got == default_hold_music_path(box)
    assert np.array_equal(read_wav(got)[0], read_wav(packaged)[0])
    assert json.loads(got.with_suffix(".json").read_text())["copied_from"] == str(packaged)
    mtime = got.stat().st_mtime_ns
    assert ensure_hold_music(box, 8000, fluidsynth=BOGUS, packaged=packaged) == got
    assert got.stat().st_mtime_ns == mtime


@needs_sox
def test_the_packaged_copy_is_resampled_for_another_bridge_rate(tmp_path):
    packaged = _fake_packaged(tmp_path, 8000)
    got = ensure_hold_music(tmp_path / "box", 16000, fluidsynth=BOGUS, packaged=packaged)
    assert got == default_hold_music_path(tmp_path / "box")
    assert wav_format(got) == (16000, 1, 2)
    samples, rate = read_wav(got)
    assert abs(len(samples) / rate - 4.0) < 0.05
    assert active_rms_dbfs(samples, rate) < -20.0


def test_a_stale_packaged_copy_is_not_used(tmp_path):
    packaged = _fake_packaged(tmp_path, 8000, version=BUILD_VERSION - 1)
    got = ensure_hold_music(tmp_path / "box", 8000, fluidsynth=BOGUS, packaged=packaged)
    assert got == fallback_hold_music_path(tmp_path / "box")


def test_an_older_default_is_kept_when_it_cannot_be_made_again(tmp_path, caplog):
    default = _write_default(tmp_path, version=BUILD_VERSION - 1)
    with caplog.at_level(logging.WARNING, logger="centralka.holdmusic"):
        assert ensure_hold_music(tmp_path, 8000, fluidsynth=BOGUS, packaged=NO_PACKAGED) == default
    assert any("keeping the older" in r.getMessage() for r in caplog.records)
