"""The GSM audio bridge: CPU per GSM call and the delay it adds.

Runs in one process: a SipStack (null sound device, 8 kHz conference) on 127.0.0.1, the modem
emulator (Huawei profile) on pseudo-terminals, and a tiny stand-in for the modem supervisor that
answers with ``ATA`` + ``AT^DDSETEX=2`` on the emulator's AT port. Then:

* **CPU**: process CPU time (utime+stime of every thread from /proc/self/task, *minus the
  emulator's own threads*) over ``--seconds`` with no call, then with one GSM call whose caller
  hears the shared hold music while talking (the emulator's caller sends a 440 Hz tone, so the
  jitter buffer, the writer and the DTMF detector all work). The difference is the bridge's cost.
* **Latency**: the GSM leg's port is looped back to itself in the conference. A 100 ms chirp
  goes in from the emulator's caller; where it comes back in what the box wrote to the voice
  port (cross-correlation) gives the round trip modem -> reader -> jitter buffer -> conference
  -> write queue -> writer -> modem. The emulator runs on a 20 ms tick and adds on average 10 ms
  each way (the chirp leaves at its next tick; what the box wrote is read at its next tick):
  20 ms are subtracted.

Human-readable lines first, then exactly one JSON line, last. Never fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.testing.modem import ModemEmulator  # noqa: E402
from appliance.gsm.voice import VoiceOpener  # noqa: E402
from appliance.sip.gsmleg import GsmLeg  # noqa: E402
from appliance.sip.stack import SipStack  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
RATE = 8000
EMULATOR_ADDS_S = 0.020
HOLD_MUSIC = ROOT / "appliance" / "data" / "hold_music.wav"


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        async def go():
            return fn(*args)

        return self.run(go())


class AtCall:
    """Answer/hang up on the emulator's AT port (what the modem supervisor does for real)."""

    def __init__(self, emulator):
        self.fd = os.open(emulator.device, os.O_RDWR | os.O_NOCTTY)

    def _cmd(self, text):
        os.write(self.fd, text.encode() + b"\r")
        deadline, seen = time.monotonic() + 5, b""
        while b"OK\r\n" not in seen and b"ERROR" not in seen and time.monotonic() < deadline:
            seen += os.read(self.fd, 1024)
        return seen

    def _done(self, fn, *args):
        import concurrent.futures

        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001
            f.set_exception(exc)
        return f

    def answer(self):
        return self._done(lambda: (self._cmd("ATA"), self._cmd("AT^DDSETEX=2")))

    def hangup(self):
        return self._done(self._cmd, "ATH")

    def send_dtmf(self, digits):
        return self._done(lambda: None)

    def close(self):
        os.close(self.fd)


def thread_ticks(exclude: set[int]) -> int:
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) in exclude:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def cpu_percent(seconds: float, exclude: set[int]) -> float:
    t0, c0 = time.monotonic(), thread_ticks(exclude)
    time.sleep(seconds)
    t1, c1 = time.monotonic(), thread_ticks(exclude)
    return 100.0 * (c1 - c0) / HZ / (t1 - t0)


def chirp(ms=100) -> np.ndarray:
    t = np.arange(int(RATE * ms / 1000)) / RATE
    f0, f1 = 300.0, 3400.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
    return (12000 * np.sin(phase) * np.hanning(len(t))).astype(np.int16)


def find(received: bytes, ref: np.ndarray) -> int | None:
    x = np.frombuffer(received[: len(received) & ~1], dtype="<i2").astype(np.float64)
    if len(x) < len(ref):
        return None
    size = 1 << (len(x) + len(ref)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(ref.astype(np.float64), size)), size)
    corr = corr[: len(x) - len(ref) + 1]
    peak = int(np.argmax(corr))
    energy = np.sqrt(np.sum(x[peak : peak + len(ref)] ** 2) * np.sum(ref.astype(np.float64) ** 2)) + 1e-9
    return peak if corr[peak] / energy > 0.8 else None


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20, help="CPU window per case (default 20)")
    p.add_argument("--chirps", type=int, default=10, help="latency samples (default 10)")
    args = p.parse_args(argv)

    lt = LoopThread()
    stack = SipStack(address="127.0.0.1", port=free_udp_port(), transports=("udp",))
    lt.run(stack.start())
    emulator = ModemEmulator("huawei", caller_tone_hz=440)
    control = AtCall(emulator)
    result: dict = {"bench": "gsm_voice", "seconds": args.seconds}
    try:
        emulator_threads = {emulator._at_thread.native_id, emulator._voice_thread.native_id}
        exclude = emulator_threads | {threading.get_native_id()}
        time.sleep(1)
        idle = cpu_percent(args.seconds, exclude)
        print(f"idle (stack + null sound device, no call): {idle:.2f} % CPU")

        def new_call():
            emulator.ring("600123456")
            leg = lt.call(
                lambda: GsmLeg(stack, "in", control, VoiceOpener(emulator.voice_device), remote_number="600123456")
            )
            lt.call(leg.answer, 200)
            if not lt.run(asyncio.wait_for(asyncio.shield(leg.confirmed), 10)):
                raise RuntimeError("the GSM call did not come up")
            return leg

        # --- CPU: one GSM caller talking all the time, hearing the hold music and themselves ---
        # (the port must have a listener or the conference never pulls the caller's audio)
        leg = new_call()
        music = lt.call(stack.shared_player, HOLD_MUSIC)
        lt.call(leg.listen, music)
        port = leg.audio
        lt.call(port.startTransmit, port)
        time.sleep(1)
        busy = cpu_percent(args.seconds, exclude)
        stats = leg.voice.stats
        lt.call(port.stopTransmit, port)
        lt.call(leg.unlisten, music)
        lt.call(leg.hangup)
        port = music = None  # no pj object may outlive the library
        time.sleep(2)
        per_call = busy - idle
        print(f"one GSM call (caller talking, hears hold music + own voice): {busy:.2f} % CPU")
        print(f"  -> the bridge costs {per_call:.2f} % of one core per GSM call")
        print(
            f"  voice channel: {stats['frames_in']} frames in, {stats['frames_out']} out, "
            f"{stats['underruns']} underruns, {stats['overruns']} overruns, {stats['trimmed_in']}+"
            f"{stats['trimmed_out']} trimmed (clock drift)"
        )
        result.update(
            idle_cpu_pct=round(idle, 3),
            call_cpu_pct=round(busy, 3),
            cpu_pct_per_gsm_call=round(per_call, 3),
            voice_stats={k: v for k, v in stats.items() if k != "lost"},
        )

        # --- latency: the caller's audio looped back to the caller ---------------------------
        emulator.caller_tone_hz = None
        leg = new_call()
        port = leg.audio
        lt.call(port.startTransmit, port)
        time.sleep(1.5)
        ref = chirp()
        delays = []
        for _ in range(args.chirps):
            with emulator._lock:
                start = len(emulator._voice_received)
                emulator._caller_audio += ref.astype("<i2").tobytes()
            time.sleep(0.6)
            with emulator._lock:
                got = bytes(emulator._voice_received[start:])
            at = find(got, ref)
            if at is not None:
                delays.append(at / RATE - EMULATOR_ADDS_S)
        lt.call(port.stopTransmit, port)
        lt.call(leg.hangup)
        prebuffer = leg.voice.prebuffer if leg.voice else 3
        port = leg = None
        time.sleep(2)
        if delays:
            med = statistics.median(delays)
            print(
                f"round trip through the bridge (modem -> conference -> modem), {len(delays)} chirps: "
                f"median {med * 1000:.0f} ms, min {min(delays) * 1000:.0f}, max {max(delays) * 1000:.0f} "
                f"(emulator's {EMULATOR_ADDS_S * 1000:.0f} ms taken off)"
            )
            print(
                f"  -> added delay one way ~{med * 500:.0f} ms (jitter cushion {prebuffer} frames of "
                f"20 ms on the way in)"
            )
            result.update(
                round_trip_ms_median=round(med * 1000, 1),
                round_trip_ms_min=round(min(delays) * 1000, 1),
                round_trip_ms_max=round(max(delays) * 1000, 1),
                chirps_found=len(delays),
                chirps_sent=args.chirps,
            )
        else:
            print("latency: the chirp never came back")
            result.update(round_trip_ms_median=None, chirps_found=0, chirps_sent=args.chirps)
    finally:
        control.close()
        lt.run(stack.stop())
        emulator.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
