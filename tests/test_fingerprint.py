"""The self-test call's ear (appliance/media/fingerprint.py): the configured greeting is heard
through G.711 and GSM 06.10 coding, quieter and with hiss; another clinic's greeting, a network
announcement, the menu or silence are not. Also the self-test schedule's arithmetic."""

import subprocess

import numpy as np
import pytest

from appliance.config import load_settings
from appliance.media.fingerprint import match
from appliance.media.prompts import PromptLibrary, read_wav
from appliance.selftest.call import SelfTestCalls, greeting_prompt
from appliance.services import Services
from appliance.testing.clock import ManualClock
from appliance.testing.demo import DATA_DIR

from .conftest import needs_tools

GREETING = "Dzień dobry, tu przychodnia Centralka."


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    lib = PromptLibrary(tmp_path_factory.mktemp("fp"), rate=8000)
    return lambda text, name: lib.synthesise(text, name)


def coded(path, tmp_path, how: str):
    """The file through a codec and back, as the far end of a line hears it."""
    out = tmp_path / f"{how}-{path.name}"
    enc = {"gsm": "-t gsm", "alaw": "-e a-law -t wav"}[how]
    subprocess.run(f"sox {path} {enc} - | sox {enc} - -e signed -b 16 {out}", shell=True, check=True)
    return out


def line_recording(*paths, gain=0.5, hiss=40.0, seed=1):
    """What a calling side records: a pause, the prompts quieter, a little line noise."""
    parts = [np.zeros(6000)]
    for p in paths:
        parts += [read_wav(p)[0] * gain, np.zeros(2400)]
    x = np.concatenate(parts)
    return (x + np.random.default_rng(seed).normal(0, hiss, len(x))).astype(np.int16)


@needs_tools
@pytest.mark.parametrize("how", ["alaw", "gsm"])
def test_the_greeting_is_heard_through_the_codecs_of_both_lines(voice, tmp_path, how):
    greeting = voice(GREETING, "greeting")
    menu = voice("Rejestracja, wciśnij 1. Poradnia specjalistyczna, 2.", "menu")
    heard = match(line_recording(coded(greeting, tmp_path, how), menu), read_wav(greeting)[0])
    assert heard.heard(), heard
    assert heard.score > 0.85 and heard.coverage == 1.0
    assert abs(heard.at_s - 0.75) < 0.05  # where it starts: after the 6000-sample pause


@needs_tools
@pytest.mark.parametrize(
    "other",
    [
        "Dzień dobry, tu przychodnia Zdrowie na Mokotowie.",  # another clinic (two thirds the same words)
        "Abonent czasowo niedostępny. Prosimy zadzwonić później.",  # the network's announcement
        "Rejestracja, wciśnij 1. Poradnia specjalistyczna, 2.",  # the menu alone
    ],
)
def test_something_else_answering_is_not_the_greeting(voice, tmp_path, other):
    greeting = voice(GREETING, "greeting")
    heard = match(line_recording(coded(voice(other, "other"), tmp_path, "gsm")), read_wav(greeting)[0])
    assert not heard.heard(), heard


@needs_tools
def test_silence_and_noise_match_nothing(voice):
    greeting = read_wav(voice(GREETING, "greeting"))[0]
    assert match(np.zeros(40000, dtype=np.int16), greeting).score == 0.0
    noise = np.random.default_rng(2).normal(0, 3000, 40000).astype(np.int16)
    assert not match(noise, greeting).heard()
    assert match(np.zeros(100, dtype=np.int16), greeting).score == 0.0  # shorter than the prompt


def test_the_first_prompt_a_caller_hears_is_the_greeting():
    from appliance.flow.model import load_flow_file

    flow = load_flow_file(DATA_DIR / "demo_flow.toml")
    assert greeting_prompt(flow) == "greeting"


def schedule(**selftest):
    settings = load_settings(None, env={}, selftest=selftest)
    return SelfTestCalls(Services(settings=settings, clock=ManualClock()))


def test_the_schedule_runs_on_clinic_days_at_clinic_times():
    calls = schedule(times=["16:10", "08:20"], days=["mon", "fri"])
    friday_noon = ManualClock("2026-12-04T12:00:00+01:00").time()  # a Friday, Warsaw time
    due = calls.next_due(friday_noon)
    assert due == ManualClock("2026-12-04T16:10:00+01:00").time()
    # After the last one on Friday: Monday morning, not Saturday.
    assert calls.next_due(due) == ManualClock("2026-12-07T08:20:00+01:00").time()
    # Summer time is the clinic's too: 08:20 in July is 06:20 UTC.
    july = ManualClock("2026-07-06T00:00:00+00:00").time()  # a Monday
    assert calls.next_due(july) == ManualClock("2026-07-06T06:20:00+00:00").time()


def test_no_days_or_no_times_means_no_schedule():
    assert schedule(times=[]).next_due(0) is None
    assert schedule(days=[]).next_due(0) is None
    assert schedule(times=["25:00", "x"]).next_due(0) is None


@needs_tools
def test_a_flow_that_starts_with_its_menu_is_heard_whole_before_the_key(tmp_path):
    """The greeting is the menu's own prompt there: the self-test presses only after all of it."""
    from appliance.flow.model import load_flow_file
    from appliance.media.prompts import PromptLibrary, wav_duration
    from appliance.selftest.call import KEY_AFTER_S, Probe
    from appliance.services import Prompts

    from .sipkit import ROOT

    calls = schedule()
    svc = calls.services
    svc.prompts = Prompts(PromptLibrary(tmp_path, rate=8000))
    svc.flow = load_flow_file(ROOT / "tests" / "flows" / "allowed_hangup.toml")
    probe = Probe(target="gsm", line_in="gsm", caller="+48221234567")
    probe.menu(svc.flow.start, {"1": "x"})
    menu_prompt = svc.flow.nodes[svc.flow.start].params["prompt"]
    assert greeting_prompt(svc.flow) == menu_prompt
    assert calls._key_after(probe) == pytest.approx(wav_duration(svc.prompts.path(menu_prompt, svc.flow)) + 0.5)
    svc.flow = load_flow_file(DATA_DIR / "demo_flow.toml")
    probe = Probe(target="gsm", line_in="gsm", caller="+48221234567")
    probe.menu("menu", {"1": "rejestracja"})
    assert calls._key_after(probe) == KEY_AFTER_S  # a greeting of its own came before the menu


@needs_tools
def test_a_greeting_with_a_hole_lost_on_the_way_is_still_the_greeting(voice, tmp_path):
    """A loaded GSM bridge drops frames: the right greeting with a hole in it must pass (seen in
    CI: 0.89 with 79 % heard), while another clinic's greeting still fails on its score."""
    greeting = voice(GREETING, "greeting")
    samples, rate = read_wav(coded(greeting, tmp_path, "gsm"))
    holed = samples.copy()
    holed[int(0.2 * rate) : int(0.5 * rate)] = 0  # 0.3 s of its first words
    lossy = tmp_path / "lossy.wav"
    from appliance.media.prompts import write_wav_atomic

    write_wav_atomic(lossy, holed, rate)
    heard = match(line_recording(lossy), read_wav(greeting)[0])
    assert heard.heard() and heard.coverage < 0.8, heard  # (it would have failed at 0.8)
