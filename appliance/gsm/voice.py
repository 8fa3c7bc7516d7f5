"""The modem's voice channel: call audio as 8 kHz 16-bit LE mono PCM on a serial port.

Huawei sticks (``AT^DDSETEX=2``), Quectel (``AT+QPCMV=1,0``) and SIMCom (``AT+CPCMREG=1``) stream
the call's audio on a tty in 320-byte frames, one every 20 ms, and take ours the same way. The
pjsua2 conference pulls and pushes a frame every 20 ms on its own clock thread, which must never
wait, so between the two sit:

* a reader thread: tty -> jitter buffer (a few frames of cushion, bounded: the oldest frame is
  dropped beyond the limit) -> in-band DTMF detector;
* ``read_frame()`` / ``write_frame()`` for the clock thread: never block, never raise (silence
  on an empty buffer);
* a writer thread pacing our frames to the tty at 20 ms from a bounded queue.

The modem and the box have separate clocks; a buffer that stays fuller than needed for a second
is trimmed by one frame so the delay never creeps up.

Unplugging the modem mid-call gives EIO (or EOF) on the tty: both threads stop quietly and
``on_lost(reason)`` is called once. No exception leaves a thread. No pjsua2 here (only ``sip/``
imports it).

Modems that offer their call audio as a USB sound card instead (Quectel ``AT+QPCMV=1,2``) are
named ``alsa:<pcm>`` (e.g. ``alsa:plughw:CARD=Android``) as the voice device: the same two
threads then read from an ``arecord`` and write to an ``aplay`` process (alsa-utils, raw
8 kHz S16_LE mono), which own the sound card; if either dies, the call's audio is lost exactly as
with an unplugged tty.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import subprocess
import termios
import threading
import time
import tty
from typing import Callable

from .dtmf import DtmfDetector

log = logging.getLogger("centralka.gsm.voice")

FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit mono
FRAME_S = 0.020
SILENCE = bytes(FRAME_BYTES)
PULL_GAP_S = 0.1
ALSA_PREFIX = "alsa:"
# The sound card's side: raw 8 kHz 16-bit LE mono, the same frames as the serial PCM port.
CAPTURE_CMD = ("arecord", "-q", "-D", "{pcm}", "-t", "raw", "-f", "S16_LE", "-r", "8000", "-c", "1")
PLAYBACK_CMD = ("aplay", "-q", "-D", "{pcm}", "-t", "raw", "-f", "S16_LE", "-r", "8000", "-c", "1")


class VoiceChannel:
    """One call's audio on the modem's PCM port (``device``, e.g. /dev/ttyUSB1)."""

    def __init__(
        self,
        device: str,
        *,
        on_digit: Callable[[str], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        prebuffer: int = 3,
        max_depth: int = 12,
        out_depth: int = 10,
        commands: tuple | None = None,
    ):
        self.device = device
        self.commands = commands or (CAPTURE_CMD, PLAYBACK_CMD)  # for an alsa: device
        self.on_digit = on_digit
        self.on_lost = on_lost
        self.prebuffer = max(1, prebuffer)
        self.max_depth = max(self.prebuffer + 2, max_depth)
        self.out_depth = max(2, out_depth)
        self.detector = DtmfDetector(self._digit) if on_digit else None
        self._rfd: int | None = None
        self._wfd: int | None = None
        self._procs: list[subprocess.Popen] = []
        self._wake_r = self._wake_w = None
        self._lock = threading.Lock()
        self._in: collections.deque[bytes] = collections.deque()
        self._out: collections.deque[bytes] = collections.deque()
        self._filling = True  # waiting for the cushion before playing out
        self._last_read = 0.0
        self._in_low = None  # lowest depth seen in the current second (for drift trimming)
        self._in_reads = 0
        self._out_low = None
        self._out_writes = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._users = 0
        self._lost = False
        self.lost_reason: str | None = None
        self._stats = dict(
            frames_in=0,
            frames_out=0,
            underruns=0,
            overruns=0,
            trimmed_in=0,
            stale=0,
            out_underruns=0,
            out_overruns=0,
            trimmed_out=0,
            partial_writes=0,
            digits=0,
            detector_errors=0,
        )
        self._started_out = False

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Open the port (raw, non-blocking) and start the threads; OSError if it cannot."""
        if self.device.startswith(ALSA_PREFIX):
            self._open_sound_card(self.device[len(ALSA_PREFIX) :])
        else:
            self._open_tty()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._users = 2
        for name, target in (("reader", self._read_loop), ("writer", self._write_loop)):
            t = threading.Thread(target=self._run, args=(target,), name=f"gsm-voice-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        log.debug("voice channel open on %s", self.device)

    def _open_sound_card(self, pcm: str) -> None:
        capture, playback = ([arg.format(pcm=pcm) for arg in cmd] for cmd in self.commands)
        procs = []
        try:
            procs.append(
                subprocess.Popen(capture, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            )
            procs.append(
                subprocess.Popen(playback, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        except OSError:
            for p in procs:
                p.kill()
                p.wait()
            raise
        self._procs = procs
        self._rfd, self._wfd = procs[0].stdout.fileno(), procs[1].stdin.fileno()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)

    def _open_tty(self) -> None:
        fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[2] &= ~termios.HUPCL  # closing our end must not hang up anything
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            termios.tcflush(fd, termios.TCIOFLUSH)  # audio from before this call is stale
        except termios.error:
            pass  # not a tty (a FIFO in a test): raw mode does not apply
        except OSError:
            os.close(fd)
            raise
        self._rfd = self._wfd = fd

    def stop(self, wait: bool = True, timeout: float = 1.0) -> None:
        """Stop the threads; the port is closed by the last one out. ``wait=False`` returns at
        once (the asyncio thread must not wait for a thread to notice)."""
        self._stop.set()
        w = self._wake_w
        if w is not None:
            try:
                os.write(w, b"x")
            except OSError:
                pass
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(timeout)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def stats(self) -> dict:
        with self._lock:
            out = dict(self._stats)
            out.update(depth_in=len(self._in), depth_out=len(self._out), lost=self.lost_reason)
        return out

    # --- the conference's side (clock thread): never blocks --------------------------------
    def read_frame(self) -> bytes:
        """The next 20 ms of the caller's audio, or silence while the buffer (re)fills."""
        now = time.monotonic()
        with self._lock:
            q = self._in
            last, self._last_read = self._last_read, now
            if now - last > PULL_GAP_S:
                # Nobody listened to the caller for a while (the conference pulls a port only
                # while it has listeners): what piled up meanwhile is stale, keep the cushion.
                while len(q) > self.prebuffer:
                    q.popleft()
                    self._stats["stale"] += 1
            if self._filling:
                if len(q) < self.prebuffer:
                    return SILENCE
                self._filling = False
            if not q:
                if not self._lost and not self._stop.is_set():
                    self._stats["underruns"] += 1
                self._filling = True
                return SILENCE
            frame = q.popleft()
            # The modem's clock may run a little fast: if the buffer never dipped near the
            # cushion for a whole second, drop a frame so the delay stays what it was.
            depth = len(q)
            self._in_low = depth if self._in_low is None else min(self._in_low, depth)
            self._in_reads += 1
            if self._in_reads >= 50:
                if self._in_low > self.prebuffer:
                    q.popleft()
                    self._stats["trimmed_in"] += 1
                self._in_low, self._in_reads = None, 0
            return frame

    def write_frame(self, frame: bytes) -> None:
        """Queue 20 ms of audio for the caller; the oldest queued frame falls away when full."""
        if self._lost or self._stop.is_set():
            return
        with self._lock:
            if len(self._out) >= self.out_depth:
                self._out.popleft()
                self._stats["out_overruns"] += 1
            self._out.append(frame)

    # --- threads ---------------------------------------------------------------------------
    def _run(self, target) -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001 — nothing may escape a thread
            log.exception("voice channel %s: %s failed", self.device, target.__name__)
            self._report_lost(f"internal error: {exc}")
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            procs, self._procs = self._procs, []
            if procs:  # the sound card's processes own their pipes' other ends
                for p in procs:
                    for pipe in (p.stdin, p.stdout):
                        if pipe is not None:
                            try:
                                pipe.close()
                            except OSError:
                                pass
                    if p.poll() is None:
                        p.terminate()
                    try:
                        p.wait(1)
                    except subprocess.TimeoutExpired:
                        p.kill()
            else:
                for fd in {self._rfd, self._wfd}:
                    if fd is not None:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._rfd = self._wfd = self._wake_r = self._wake_w = None

    def _report_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost or self._stop.is_set():
                return
            self._lost = True
            self.lost_reason = reason
        self._stop.set()
        log.warning("voice channel %s lost: %s", self.device, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:  # noqa: BLE001
                log.exception("on_lost callback failed")

    def _read_loop(self) -> None:
        fd, wake = self._rfd, self._wake_r
        pending = bytearray()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd, wake], [], [], 0.5)
            except (OSError, ValueError) as exc:
                self._report_lost(f"select: {exc}")
                return
            if wake in ready or self._stop.is_set():
                return
            if fd not in ready:
                continue
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._report_lost(_describe(exc))
                return
            if not data:
                self._report_lost("end of file on the voice port")
                return
            pending += data
            n = len(pending) // FRAME_BYTES
            if not n:
                continue
            frames = [bytes(pending[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]) for i in range(n)]
            del pending[: n * FRAME_BYTES]
            with self._lock:
                for frame in frames:
                    if len(self._in) >= self.max_depth:
                        self._in.popleft()
                        if time.monotonic() - self._last_read < PULL_GAP_S:
                            self._stats["overruns"] += 1
                        else:
                            self._stats["stale"] += 1
                    self._in.append(frame)
                self._stats["frames_in"] += n
            if self.detector is not None:
                for frame in frames:
                    try:
                        self.detector.feed(frame)
                    except Exception:  # noqa: BLE001 — a detector bug must not cost the audio
                        self._stats["detector_errors"] += 1
                        if self._stats["detector_errors"] == 1:
                            log.exception("DTMF detector failed")

    def _write_loop(self) -> None:
        fd = self._wfd
        deadline = time.monotonic()
        while True:
            deadline += FRAME_S
            delay = deadline - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    return
            elif delay < -5 * FRAME_S:
                deadline = time.monotonic()  # we were not scheduled for a while: no burst
            if self._stop.is_set():
                return
            with self._lock:
                q = self._out
                frame = q.popleft() if q else None
                if frame is not None:
                    self._started_out = True
                    depth = len(q)
                    self._out_low = depth if self._out_low is None else min(self._out_low, depth)
                    self._out_writes += 1
                    if self._out_writes >= 50:
                        if self._out_low >= 2:
                            q.popleft()
                            self._stats["trimmed_out"] += 1
                        self._out_low, self._out_writes = None, 0
                elif self._started_out:
                    self._stats["out_underruns"] += 1
            # A modem wants a steady stream: silence when the conference had nothing for us.
            try:
                written = os.write(fd, frame or SILENCE)
            except BlockingIOError:
                # The modem is not taking audio (voice not switched on yet): this frame is lost.
                with self._lock:
                    self._stats["out_overruns"] += 1
                continue
            except OSError as exc:
                self._report_lost(_describe(exc))
                return
            if written < FRAME_BYTES:
                self._stats["partial_writes"] += 1
            self._stats["frames_out"] += 1

    def _digit(self, digit: str) -> None:
        self._stats["digits"] += 1
        if self.on_digit is not None:
            try:
                self.on_digit(digit)
            except Exception:  # noqa: BLE001
                log.exception("on_digit callback failed")


def _describe(exc: OSError) -> str:
    if exc.errno == errno.EIO:
        return "I/O error on the voice port (modem unplugged?)"
    return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"


class VoiceOpener:
    """A call's audio, opened when the call connects: what ``sip.gsmleg.GsmLeg`` is given instead
    of knowing about modems (``opener(on_digit, on_lost)`` returns a started-able channel)."""

    def __init__(self, device: str, **options):
        self.device = device
        self.options = options

    def __call__(self, on_digit, on_lost) -> VoiceChannel:
        return VoiceChannel(self.device, on_digit=on_digit, on_lost=on_lost, **self.options)

    def __repr__(self) -> str:
        return f"VoiceOpener({self.device!r})"
