"""GSM voice: the modem's PCM port bridged into the pjsua2 conference.

A real SipStack on 127.0.0.1 and the modem emulator (its voice pty carries the call audio). A
small stand-in for the modem supervisor answers and hangs up with real AT commands on the
emulator's AT port. Tests listen to what the GSM caller heard (``received(emulator)``) and
to what a recorder or a SIP phone heard from the GSM caller, and count the digits that arrive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
import wave

import numpy as np
import pytest
import serial

from appliance.testing.modem import ModemEmulator
from appliance.gsm.voice import FRAME_BYTES, VoiceChannel, VoiceOpener
from appliance.media.prompts import PromptLibrary, read_wav
from appliance.sip.gsmleg import DigitMerger, GsmLeg
from appliance.sip.stack import PARK_S, SipStack

from .audio import find_occurrences
from .conftest import needs_tools
from .sipkit import Phone, free_port, wait_for

RATE = 8000


# --- helpers -------------------------------------------------------------------------------


def speechlike(seed: int, seconds: float = 1.6) -> np.ndarray:
    """A deterministic phrase-like signal: band-limited noise in syllable-shaped bursts."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    spec = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spec[(freqs < 300) | (freqs > 3400)] = 0
    x = np.fft.irfft(spec, n)
    t = np.arange(n) / RATE
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    x = x * envelope
    return (x / np.max(np.abs(x)) * 12000).astype(np.int16)


def write_wav(path, samples: np.ndarray) -> str:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return str(path)


def received(emulator) -> bytes:
    """What the box wrote to the voice port (a property of the emulator, or a method)."""
    value = emulator.voice_received
    return value() if callable(value) else value


def heard(pcm: bytes, reference: np.ndarray) -> list[tuple[float, float]]:
    """(onset, coverage) of each time ``reference`` is in ``pcm`` (8 kHz 16-bit LE)."""
    rec = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2")
    return find_occurrences((rec, RATE), (reference, RATE))


class StackThread:
    """A SipStack on its own asyncio loop in a thread (the test's main thread stays free)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-stack", daemon=True)
        self.thread.start()
        self.stack = SipStack(address="127.0.0.1", port=free_port(), transports=("udp",))
        self.run(self.stack.start())

    def run(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        async def go():
            return fn(*args)

        return self.run(go())

    def wait(self, fut, timeout: float = 10):
        async def go():
            return await asyncio.wait_for(asyncio.shield(fut), timeout)

        return self.run(go(), timeout + 5)

    def ports(self) -> int:
        return self.call(lambda: len(self.stack.ep.mediaEnumPorts2()))

    def close(self):
        self.run(self.stack.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class AtControl:
    """The modem supervisor's call control, reduced to what these tests need: ATA and the voice
    switch, ATH, AT^DTMF, on the emulator's AT port; ``^CEND`` reported to ``on_ended``."""

    def __init__(self, emulator: ModemEmulator):
        self.port = serial.Serial(emulator.device, 115200, timeout=0.1)
        self.jobs = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-modem")
        self.lines: list[str] = []
        self.on_ended = None
        self._cond = threading.Condition()
        self._stop = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        buf = b""
        while not self._stop:
            try:
                buf += self.port.read(256)
            except Exception:  # noqa: BLE001 — unplugged: the test's leg hears it on the voice port
                return
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                text = line.decode(errors="replace").strip()
                if not text:
                    continue
                with self._cond:
                    self.lines.append(text)
                    self._cond.notify_all()
                if text.startswith("^CEND") and self.on_ended:
                    self.on_ended("remote hangup")

    def command(self, cmd: str, timeout: float = 5) -> list[str]:
        with self._cond:
            start = len(self.lines)
        self.port.write(cmd.encode() + b"\r")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                new = self.lines[start:]
                if any(x in ("OK", "ERROR", "NO CARRIER") or "ERROR" in x for x in new):
                    if "OK" not in new:
                        raise RuntimeError(f"{cmd}: {new}")
                    return new
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(cmd)
                self._cond.wait(left)

    def answer(self):
        def job():
            self.command("ATA")
            self.command("AT^DDSETEX=2")

        return self.jobs.submit(job)

    def hangup(self):
        return self.jobs.submit(self.command, "ATH")

    def send_dtmf(self, digits):
        return self.jobs.submit(lambda: [self.command(f"AT^DTMF=1,{d}") for d in digits])

    def close(self):
        self._stop = True
        self.jobs.shutdown(wait=True)
        try:
            self.port.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture(scope="module")
def sip():
    st = StackThread()
    yield st
    st.close()


@pytest.fixture
def modem():
    emulator = ModemEmulator("huawei")
    control = AtControl(emulator)
    control.command("AT+CLIP=1")
    yield emulator, control
    control.close()
    emulator.close()


@pytest.fixture
def thread_errors():
    errors = []
    old = threading.excepthook
    threading.excepthook = lambda args: errors.append(args)
    yield errors
    threading.excepthook = old


def gsm_call(sip, emulator, control, number="600123456") -> GsmLeg:
    """A GSM caller rings and the box answers: the leg is up and its audio flows."""
    emulator.ring(number)
    leg = sip.call(
        lambda: GsmLeg(
            sip.stack,
            "in",
            control,
            VoiceOpener(emulator.voice_device),
            remote_number=number,
            local_number="48500100200",
        )
    )
    control.on_ended = lambda reason: sip.loop.call_soon_threadsafe(leg.modem_ended, reason)
    sip.call(leg.answer, 200)
    assert sip.wait(leg.confirmed) is True
    return leg


def end(sip, leg):
    sip.call(leg.hangup)
    time.sleep(PARK_S + 0.5)  # parked ports and recorders are freed (WAV headers written)


# --- tests ---------------------------------------------------------------------------------


def test_gsm_caller_hears_a_prompt_played_to_the_call(sip, modem, tmp_path):
    emulator, control = modem
    prompt = speechlike(1)
    leg = gsm_call(sip, emulator, control)
    assert (leg.remote_uri, leg.remote_user, leg.line) == ("tel:600123456", "600123456", "gsm")
    assert leg.sip_call_id.startswith("gsm-") and leg.direction == "in"
    sip.call(leg.play, write_wav(tmp_path / "prompt.wav", prompt))
    time.sleep(2.4)
    found = heard(received(emulator), prompt)
    end(sip, leg)
    assert len(found) == 1 and found[0][1] > 0.9, found


def test_what_the_gsm_caller_says_is_recorded(sip, modem, tmp_path):
    emulator, control = modem
    phrase = speechlike(2)
    leg = gsm_call(sip, emulator, control)
    rec = tmp_path / "caller.wav"
    sip.call(leg.record, rec)
    emulator.caller_says(phrase.astype("<i2").tobytes())
    wait_for(lambda: not emulator.caller_still_speaking(), 15, "the modem sending the whole phrase")
    time.sleep(0.4)  # the last frames through the voice channel's cushion and the bridge
    end(sip, leg)
    samples, rate = read_wav(rec)
    found = find_occurrences((samples, rate), (phrase, RATE))
    assert len(found) == 1 and found[0][1] > 0.9, found


def test_keys_pressed_by_the_gsm_caller_arrive_once_each(sip, modem):
    emulator, control = modem
    leg = gsm_call(sip, emulator, control)
    emulator.caller_presses("12#")
    time.sleep(1.5)
    emulator.caller_presses("0", on_ms=60, off_ms=60)  # a short press counts too
    time.sleep(1.0)
    digits = sip.call(lambda: list(leg.digits))
    end(sip, leg)
    assert digits == ["1", "2", "#", "0"]


def test_same_press_from_both_detectors_counts_once():
    merger = DigitMerger()
    # The modem's URC and our in-band detector report the same press 60 ms apart.
    assert merger.accept("5", 10.00, "modem") is True
    assert merger.accept("5", 10.06, "inband") is False
    # A quick second press of the same key: both detectors report it again.
    assert merger.accept("5", 10.12, "modem") is True
    assert merger.accept("5", 10.19, "inband") is False
    # Only one detector hears a press: it still counts; different keys never merge.
    assert merger.accept("7", 11.0, "inband") is True
    assert merger.accept("8", 11.01, "modem") is True


def test_modem_reported_digit_reaches_the_flow(sip, modem):
    emulator, control = modem
    leg = gsm_call(sip, emulator, control)
    sip.call(leg.modem_digit, "9")
    digits = sip.call(lambda: list(leg.digits))
    end(sip, leg)
    assert digits == ["9"]


@needs_tools
def test_gsm_call_bridged_to_a_sip_phone_carries_audio_both_ways(sip, modem, tmp_path):
    emulator, control = modem
    agent_text = "Rejestracja, słucham."
    phone = Phone(tmp_path, "agent", answer_after=0.2, say={"agent": agent_text})
    try:
        leg = gsm_call(sip, emulator, control)
        agent = sip.call(sip.stack.dial, phone.address("agent"))
        assert sip.wait(agent.confirmed) is True
        sip.run(asyncio.wait_for(agent.media_active.wait(), 5))
        sip.call(leg.bridge, agent)
        phrase = speechlike(3)
        emulator.caller_says(phrase.astype("<i2").tobytes())
        wait_for(lambda: not emulator.caller_still_speaking(), 15, "the modem sending the whole phrase")
        time.sleep(0.6)  # its last frames on their way: the box's buffers, RTP, the phone's jitter buffer
        sip.call(agent.hangup)
        phone.wait("disconnected", timeout=10)
        caller_heard = received(emulator)
        end(sip, leg)
        voice, rate = read_wav(
            PromptLibrary(tmp_path / "phone-cache" / "centralka-phone-prompts", rate=8000).synthesise(agent_text, "say")
        )
        agent_heard, agent_rate = read_wav(phone.recording())
    finally:
        phone.stop()
    assert heard(caller_heard, voice), "the GSM caller did not hear the agent"
    found = find_occurrences((agent_heard, agent_rate), (phrase, RATE))
    assert len(found) == 1 and found[0][1] > 0.9, f"the agent did not hear the GSM caller: {found}"


def test_far_end_hanging_up_ends_the_call_and_frees_its_port(sip, modem):
    emulator, control = modem
    time.sleep(PARK_S + 0.3)
    before = sip.ports()
    leg = gsm_call(sip, emulator, control)
    sip.call(leg.ringback)
    assert sip.ports() > before
    emulator.hangup_remote()
    gone = sip.wait(leg.disconnected)
    assert gone.by == "remote" and gone.reason == "remote hangup"
    assert sip.call(lambda: leg.alive) is False
    time.sleep(PARK_S + 0.5)
    assert sip.ports() == before


def test_modem_unplugged_mid_call_ends_the_call_cleanly(sip, modem, thread_errors):
    emulator, control = modem
    time.sleep(PARK_S + 0.3)
    before = sip.ports()
    leg = gsm_call(sip, emulator, control)
    voice = leg.voice
    time.sleep(0.5)
    emulator.fault("unplug")
    gone = sip.wait(leg.disconnected)
    assert gone.code == 503 and "voice channel lost" in gone.reason
    time.sleep(PARK_S + 0.5)
    assert not voice.running
    assert sip.ports() == before
    assert sip.stack.errors == 0
    assert not thread_errors


def test_voice_channel_buffers_and_reports_unplug_once(modem):
    emulator, control = modem
    emulator.ring("600123456")
    control.answer().result(5)
    lost = []
    ch = VoiceChannel(emulator.voice_device, on_lost=lost.append)
    ch.start()
    emulator.caller_says(speechlike(4, 0.4).astype("<i2").tobytes())
    time.sleep(0.3)
    frames = [ch.read_frame() for _ in range(5)]
    for _ in range(10):
        ch.write_frame(b"\x10\x00" * (FRAME_BYTES // 2))
    time.sleep(0.5)
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert any(f != bytes(FRAME_BYTES) for f in frames)
    assert b"\x10\x00" * (FRAME_BYTES // 2) in received(emulator)
    emulator.fault("unplug")
    time.sleep(0.5)
    assert len(lost) == 1
    assert ch.read_frame() == bytes(FRAME_BYTES)  # silence, no exception, no wait
    ch.write_frame(bytes(FRAME_BYTES))
    ch.stop()
    assert not ch.running


@pytest.mark.parametrize("direct", [True, False])
def test_frames_cross_the_port_intact_on_both_copy_paths(monkeypatch, direct):
    # The fast path writes the SWIG vector's storage through ctypes; the slow one goes through
    # pj.ByteVector. Either must hand the conference exactly the modem's bytes and back.
    import pjsua2 as pj

    from appliance.sip import gsmleg

    if direct and not gsmleg._DIRECT:
        pytest.skip("this build's vectors are not laid out as expected: the slow path is in use")
    monkeypatch.setattr(gsmleg, "_DIRECT", direct)
    frame = pj.MediaFrame()
    data = bytes(range(256)) + bytes(64)
    gsmleg._fill_frame(frame, data)
    assert frame.size == 320 and frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO
    assert gsmleg._frame_bytes(frame) == data


# --- a modem whose call audio is a USB sound card (alsa:<pcm>) -------------------------------------
# arecord/aplay own a real card; here two real processes stand in for them with the same raw
# 8 kHz S16_LE stream (a keypad press then silence out of "the card", and everything we play
# into a file), so the pipe plumbing, the DTMF path and the loss of the card are all exercised.
_CARD_SAYS = """
import sys, time, math
def tone(f1, f2, ms):
    n = 8 * ms
    return b"".join(int(8000 * (math.sin(2 * math.pi * f1 * i / 8000) + math.sin(2 * math.pi * f2 * i / 8000)))
                    .to_bytes(2, "little", signed=True) for i in range(n))
audio = bytes(3200) + tone(697, 1209, 120) + bytes(3200) + tone(941, 1477, 120) + bytes(16000)
for i in range(0, len(audio), 320):
    sys.stdout.buffer.write(audio[i:i + 320]); sys.stdout.flush(); time.sleep(0.02)
time.sleep(float(sys.argv[1]))
"""
_CARD_HEARS = """
import sys
out = open(sys.argv[1], "wb", buffering=0)
while True:
    data = sys.stdin.buffer.read1(4096)
    if not data:
        break
    out.write(data)
"""


def test_a_sound_card_voice_channel_carries_audio_and_keys_both_ways(tmp_path):
    from appliance.gsm.voice import VoiceChannel

    heard_file = tmp_path / "card-heard.raw"
    digits, lost = [], []
    voice = VoiceChannel(
        "alsa:plughw:CARD=Modem",
        on_digit=digits.append,
        on_lost=lost.append,
        commands=([sys.executable, "-c", _CARD_SAYS, "1.5"], [sys.executable, "-c", _CARD_HEARS, str(heard_file)]),
    )
    voice.start()
    try:
        ours = b"\x10\x20" * 160
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(digits) < 2:
            voice.read_frame()
            voice.write_frame(ours)
            time.sleep(0.02)
        assert digits == ["1", "#"]  # a keypad press heard on the card's audio, once each
        time.sleep(0.3)
        assert heard_file.read_bytes().count(ours) > 10  # what we played reached the card
        # The card goes away (arecord exits: the USB device was unplugged): the call's audio is lost.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not lost:
            voice.read_frame()
            time.sleep(0.02)
        assert lost == ["end of file on the voice port"]
    finally:
        voice.stop()
    assert not voice.running


def test_a_missing_sound_card_tool_is_a_clear_error():
    from appliance.gsm.voice import VoiceChannel

    voice = VoiceChannel("alsa:hw:9", commands=(["/nonexistent/arecord"], ["/nonexistent/aplay"]))
    with pytest.raises(OSError):
        voice.start()


class HeldSupervisor:
    """The modem supervisor as the GSM line's glue sees it (events come from the test), holding
    each dial until the test lets it go."""

    def __init__(self):
        self.dials: list[concurrent.futures.Future] = []

    @staticmethod
    def _done():
        f = concurrent.futures.Future()
        f.set_result(None)
        return f

    def health(self):
        return {"state": "up"}

    def dial(self, number):
        self.dials.append(concurrent.futures.Future())
        return self.dials[-1]

    answer = hangup = _done

    def send_dtmf(self, digits):
        return self._done()


def test_modem_events_reach_only_the_call_they_are_about(sip):
    """Issue 12 item 7: a RING while the box dials is a call of its own (not lost), and a late
    "call ended" of an earlier call does not end the one on the line now."""
    from appliance.config import load_settings
    from appliance.gsm.line import GsmLine
    from appliance.gsm.supervisor import ModemError
    from appliance.lines import LineFailed
    from appliance.services import Services

    incoming = []
    services = Services(settings=load_settings(None, env={}), stack=sip.stack)
    services.incoming = lambda leg, line: incoming.append((leg, line))
    line = GsmLine(services)
    line.supervisor, line.loop = HeldSupervisor(), sip.loop
    dialling = asyncio.run_coroutine_threadsafe(line.dial("+48600123456"), sip.loop)
    wait_for(lambda: line.supervisor.dials, 5, "the dial handed to the modem")
    sip.call(line._event, "ring", {"call": 5, "caller": "+48600999888", "ton": 145})
    [(leg, on)] = incoming
    assert (on, leg.direction, leg.remote_number) == ("gsm", "in", "+48600999888")
    line.supervisor.dials[0].set_exception(ModemError("the modem is already on a call"))
    with pytest.raises(LineFailed):
        dialling.result(10)
    assert leg.alive and line.busy
    sip.call(line._event, "call_ended", {"call": 4, "reason": "remote hangup", "direction": "out"})
    assert leg.alive  # an earlier call's end: not this call's
    sip.call(line._event, "ring", {"call": 5, "caller": "+48600999888", "ton": 145})
    assert len(incoming) == 1  # the network repeating RING for the same call
    sip.call(line._event, "call_ended", {"call": 5, "reason": "caller hung up before answer", "direction": "in"})
    assert not leg.alive and not line.busy
