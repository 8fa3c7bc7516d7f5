"""In-band DTMF from GSM callers: every key once, nothing from speech, music or noise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from appliance.gsm.dtmf import DtmfDetector, dtmf_tones
from appliance.testing.modem import dtmf_pcm
from appliance.media.prompts import read_wav

from .conftest import needs_tools

ROOT = Path(__file__).resolve().parent.parent
ALL_KEYS = "123A456B789C*0#D"
RATE = 8000


def keys(pcm: bytes, chunk: int = 320) -> str:
    """What a caller's key presses come out as, fed in 20 ms frames like the voice port's."""
    det = DtmfDetector()
    got = []
    for i in range(0, len(pcm), chunk):
        got += det.feed(pcm[i : i + chunk])
    return "".join(got)


def pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def test_every_key_is_heard_once():
    assert keys(dtmf_tones(ALL_KEYS)) == ALL_KEYS


def test_the_emulated_gsm_caller_keys_are_heard():
    assert keys(dtmf_pcm("0123456789*#")) == "0123456789*#"


def test_a_long_press_is_one_digit():
    assert keys(dtmf_tones("5", on_ms=1500)) == "5"


def test_the_same_key_twice_is_two_digits():
    assert keys(dtmf_tones("7777", on_ms=60, off_ms=60)) == "7777"


@pytest.mark.parametrize("lead_ms", [0, 3, 7, 12, 17])
def test_a_40_ms_press_counts_and_a_20_ms_blip_does_not(lead_ms):
    assert keys(dtmf_tones("369", on_ms=40, off_ms=60, lead_ms=lead_ms)) == "369"
    assert keys(dtmf_tones("369", on_ms=20, off_ms=60, lead_ms=lead_ms)) == ""


def test_a_short_dropout_inside_a_press_is_not_a_second_press():
    press = dtmf_tones("8", on_ms=80, off_ms=10) + dtmf_tones("8", on_ms=80, off_ms=100)
    assert keys(press) == "8"


def test_any_byte_split_gives_the_same_digits():
    data = dtmf_tones("159#", on_ms=50, off_ms=50)
    assert keys(data, chunk=77 * 2 + 1) == "159#"


@pytest.mark.parametrize("level", [-3, -10, -20, -25])
def test_levels_a_phone_sends_are_heard(level):
    assert keys(dtmf_tones(ALL_KEYS, level_dbm0=level)) == ALL_KEYS


def test_tones_too_faint_to_be_a_key_press_are_ignored():
    assert keys(dtmf_tones(ALL_KEYS, level_dbm0=-40)) == ""


@pytest.mark.parametrize("twist", [-3, 0, 4, 8])
def test_twist_within_limits_is_accepted(twist):
    assert keys(dtmf_tones(ALL_KEYS, twist_db=twist)) == ALL_KEYS


@pytest.mark.parametrize("twist", [-10, 12])
def test_excessive_twist_is_rejected(twist):
    assert keys(dtmf_tones(ALL_KEYS, twist_db=twist)) == ""


@pytest.mark.parametrize("error", [-0.015, 0.015])
def test_frequency_within_tolerance_is_accepted(error):
    assert keys(dtmf_tones(ALL_KEYS, freq_error=error)) == ALL_KEYS


@pytest.mark.parametrize("error", [-0.05, 0.05])
def test_frequency_far_off_is_rejected(error):
    assert keys(dtmf_tones(ALL_KEYS, freq_error=error)) == ""


def test_keys_are_heard_through_line_noise():
    rng = np.random.default_rng(7)
    clean = samples(dtmf_tones(ALL_KEYS, level_dbm0=-15))
    power = np.mean(clean[clean != 0] ** 2)
    noisy = clean + rng.normal(0, np.sqrt(power / 10 ** (12 / 10)), len(clean))  # 12 dB SNR
    assert keys(pcm(noisy)) == ALL_KEYS


def test_noise_alone_gives_nothing():
    rng = np.random.default_rng(3)
    assert keys(pcm(rng.normal(0, 4000, RATE * 10))) == ""


def test_single_tones_and_pairs_of_rows_give_nothing():
    t = np.arange(RATE) / RATE
    for signal in (
        np.sin(2 * np.pi * 697 * t),
        np.sin(2 * np.pi * 1336 * t),
        np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 852 * t),
        np.sin(2 * np.pi * 1209 * t) + np.sin(2 * np.pi * 1477 * t),
    ):
        assert keys(pcm(6000 * signal)) == ""


def test_voice_like_harmonics_give_nothing():
    # A sung vowel gliding through the DTMF band: harmonics of a 100-300 Hz voice.
    t = np.arange(RATE * 6) / RATE
    f0 = 100 + 200 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.2 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 30))
    assert keys(pcm(8000 * voice / np.max(np.abs(voice)))) == ""


def test_the_boxs_hold_music_gives_nothing():
    music, rate = read_wav(ROOT / "appliance" / "data" / "hold_music.wav")
    assert rate == RATE
    for gain in (0.3, 1.0, 1.8):
        assert keys(pcm(music.astype(np.float64) * gain)) == ""


@needs_tools
def test_speech_gives_nothing(tmp_path):
    texts = (
        "Dzień dobry, tu przychodnia. Aby umówić wizytę, wciśnij jeden, aby rozmawiać z "
        "rejestracją, wciśnij dwa. Pięćdziesiąt sześć, siedemdziesiąt osiem, dziewięćset."
    )
    for voice in ("pl", "pl+f3", "en"):
        wav = tmp_path / f"{voice}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), texts], check=True)
        speech, rate = read_wav(wav)
        speech = np.interp(np.arange(0, len(speech), rate / RATE), np.arange(len(speech)), speech.astype(np.float64))
        for gain in (1.0, 3.0):
            assert keys(pcm(speech * gain)) == "", voice


def test_keys_pressed_while_music_plays_are_still_heard():
    music, _ = read_wav(ROOT / "appliance" / "data" / "hold_music.wav")
    bed = music[RATE * 20 : RATE * 24].astype(np.float64) * 0.1  # music 20 dB under the keys
    tones = samples(dtmf_tones("2580", level_dbm0=-8, lead_ms=500))
    mixed = bed.copy()
    mixed[: len(tones)] += tones
    assert keys(pcm(mixed)) == "2580"
