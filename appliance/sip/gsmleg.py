"""A call on the GSM modem as a leg of the pjsua2 conference.

``GsmLeg`` is a :class:`MediaLeg` like a SIP call, so the flow engine plays prompts to it, reads
its digits and bridges it to an agent without knowing which line it came on. Its audio is a
``pj.AudioMediaPort`` whose frame callbacks (on the conference clock thread, 50 per second)
only move 320-byte frames in and out of a :class:`VoiceStream`'s buffers (the modem's voice
channel, ``appliance.gsm.voice``, which this package does not import: the glue hands the leg an
opener): no waiting, no logging, no exception back into C.

Call control (answer, hang up, DTMF) belongs to the modem supervisor, whose methods run on the
modem thread and return ``concurrent.futures.Future``; this leg never waits for them on the
asyncio thread. The glue (``appliance.gsm.line``) tells the leg what the modem reports, on the
asyncio thread: ``modem_connected()``, ``modem_ended(reason)``, ``modem_digit(d)``.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import time
from typing import Callable, Protocol

import pjsua2 as pj

from ..errors import SipError
from .stack import MediaLeg

FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit mono: the conference port's frame
SILENCE = bytes(FRAME_BYTES)


class VoiceStream(Protocol):
    """A call's audio outside pjsua2: frames in and out, without ever blocking the caller."""

    def start(self) -> None: ...

    def stop(self, wait: bool = True) -> None: ...

    def read_frame(self) -> bytes: ...

    def write_frame(self, frame: bytes) -> None: ...


# Opens a call's audio when it connects: ``opener(on_digit, on_lost)``; None = no audio path.
VoiceOpener = Callable[[Callable[[str], None], Callable[[str], None]], VoiceStream]

log = logging.getLogger("centralka.sip.gsm")

# The same key reported by the modem's own detector and by ours counts once.
DIGIT_DEDUPE_S = 0.15
_ids = itertools.count(1)


# --- frame buffers through ctypes ----------------------------------------------------------
# ``bytes(frame.buf)`` walks a SWIG vector element by element (~0.1 ms a frame); reading and
# writing its storage directly costs ~2 us. A std::vector starts with its begin and end
# pointers (libstdc++ and libc++ alike); checked once at import, else the slow path is used.


def _vector_data(vec) -> int:
    return ctypes.c_void_p.from_address(int(vec.this)).value or 0


def _direct_ok() -> bool:
    try:
        frame = pj.MediaFrame()
        vec = frame.buf
        vec.resize(4)
        ctypes.memmove(_vector_data(vec), b"\x01\x02\x03\x04", 4)
        if list(frame.buf) != [1, 2, 3, 4]:
            return False
        return ctypes.string_at(_vector_data(frame.buf), 4) == b"\x01\x02\x03\x04"
    except Exception:  # noqa: BLE001
        return False


_DIRECT = _direct_ok()


def _frame_bytes(frame) -> bytes:
    vec = frame.buf
    n = min(len(vec), frame.size)
    if n <= 0:
        return b""
    if _DIRECT:
        return ctypes.string_at(_vector_data(vec), n)
    return bytes(vec)[:n]


def _fill_frame(frame, data: bytes) -> None:
    frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
    if _DIRECT:
        vec = frame.buf
        vec.resize(len(data))
        ctypes.memmove(_vector_data(vec), data, len(data))
    else:
        frame.buf = pj.ByteVector(data)
    frame.size = len(data)


class _VoicePort(pj.AudioMediaPort):
    """The GSM caller in the conference. Runs on the clock thread: nothing here may block."""

    def __init__(self, voice: VoiceStream | None):
        super().__init__()
        self.voice = voice
        self._released = False

    def release_now(self) -> None:
        """Destroy the C++ port now, while this Python object is alive (the stack calls it when
        the parked port's time is up). Left to Python's own freeing, the destructor runs after
        the object is half gone, and a frame callback the clock thread makes meanwhile crashes
        the process; called here, such a callback still finds ``voice`` None and returns. The
        proxy must not be used afterwards (the leg has already dropped it)."""
        if self._released:
            return
        self._released = True
        self.voice = None
        pj.AudioMediaPort.__swig_destroy__(self)

    def onFrameRequested(self, frame):
        try:
            voice = self.voice
            _fill_frame(frame, voice.read_frame() if voice is not None else SILENCE)
        except Exception:  # noqa: BLE001 — an exception here would unwind through C
            pass

    def onFrameReceived(self, frame):
        try:
            voice = self.voice
            if voice is None:
                return
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
                data = _frame_bytes(frame)
                if len(data) == FRAME_BYTES:
                    voice.write_frame(data)
                    return
            voice.write_frame(SILENCE)
        except Exception:  # noqa: BLE001
            pass


def _code_for(reason: str, connected: bool) -> int:
    text = reason.lower()
    if "busy" in text:
        return 486
    if "lost" in text or "failed" in text or "unplug" in text:
        return 503
    if connected:
        return 200
    if "no answer" in text or "not answered" in text:
        return 480
    return 487


class DigitMerger:
    """Keys from two detectors (ours on the audio, the modem's own) as one stream: a report
    matching an unmatched one of the same key from the other detector within ``window_s`` is
    the same press. Each detector already reports a press once."""

    def __init__(self, window_s: float = DIGIT_DEDUPE_S):
        self.window_s = window_s
        self._recent: list[list] = []  # [digit, at, source, matched]

    def accept(self, digit: str, at: float, source: str) -> bool:
        self._recent = [r for r in self._recent if abs(at - r[1]) < self.window_s]
        for r in self._recent:
            if r[0] == digit and r[2] != source and not r[3]:
                r[3] = True
                return False
        self._recent.append([digit, at, source, False])
        return True


class GsmLeg(MediaLeg):
    """One call on the GSM modem. ``control`` is the modem supervisor (``answer()``,
    ``hangup()``, ``send_dtmf(digits)``, each returning a concurrent Future)."""

    line = "gsm"

    def __init__(
        self,
        stack,
        direction: str,
        control,
        open_voice: VoiceOpener | None,
        *,
        remote_number: str,
        local_number: str = "",
    ):
        super().__init__(stack, direction)
        self.control = control
        self.open_voice = open_voice
        self.remote_number = remote_number or ""
        self.local_number = local_number or ""
        self.remote_uri = f"tel:{self.remote_number}" if self.remote_number else "tel:anonymous"
        self.remote_user = self.remote_number
        self.local_uri = f"tel:{self.local_number}" if self.local_number else ""
        self.local_user = self.local_number
        self.sip_call_id = f"gsm-{os.getpid()}-{int(time.time())}-{next(_ids)}"
        self.voice: VoiceStream | None = None
        self.port: _VoicePort | None = None
        self.connected = False
        self._digits = DigitMerger()
        self._answering = False
        stack.media_legs.add(self)  # so the stack ends it before the library goes away

    # --- actions (asyncio thread) ------------------------------------------------------------
    def answer(self, code: int = 200, reason: str = "") -> None:
        """Answer (200) or reject (>= 300: the modem hangs up) an incoming GSM call. 1xx means
        nothing to a GSM caller (the network rings for us) and is ignored."""
        if not self.alive:
            raise SipError("the GSM call has ended")
        if self.direction != "in" or code < 200:
            return
        if code >= 300:
            self._local_hangup = True
            self._control("hangup", self.control.hangup)
            self._finish(code, reason or "rejected")
            return
        if self._answering or self.connected:
            return
        self._answering = True
        self._control("answer", self.control.answer, on_ok=self.modem_connected)

    def hangup(self, code: int = 0, reason: str = "") -> None:
        if not self.alive:
            return
        self._local_hangup = True
        self._control("hangup", self.control.hangup)
        self._finish(code or 200, reason or "hung up")

    def send_dtmf(self, digits: str) -> None:
        if not self.alive:
            raise SipError("the GSM call has ended")
        self._control(f"DTMF {digits!r}", lambda: self.control.send_dtmf(digits))

    # --- what the modem reports (asyncio thread, from the glue) ------------------------------
    def modem_connected(self) -> None:
        """The call is up (our answer taken, or the far end picked up): start the audio."""
        if not self.alive or self.connected:
            return
        self.connected = True
        if self.open_voice is not None:
            voice = self.open_voice(self._digit_from_reader, self._lost_from_thread)
            try:
                voice.start()
                self.voice = voice
            except OSError as exc:
                # The call stays up (the flow can still send the caller on), but without audio.
                log.error("GSM call %s: cannot open the voice port %s: %s", self.sip_call_id, self.open_voice, exc)
        else:
            log.error("GSM call %s: the modem has no voice port; the call has no audio", self.sip_call_id)
        port = _VoicePort(self.voice)
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, 8000, 1, 20000, 16)
        try:
            port.createPort(self.sip_call_id, fmt)
        except pj.Error as exc:
            log.error("GSM call %s: no conference port: %s", self.sip_call_id, exc.info())
            self.port = port
            self.hangup(503, "no conference port")
            return
        self.port = port
        self._set_audio(port)
        if not self.confirmed.done():
            self.confirmed.set_result(True)

    def modem_ended(self, reason: str) -> None:
        """The far end hung up, the modem refused or lost the call, or the modem is gone."""
        if not self.alive:
            return
        self._finish(_code_for(reason, self.connected), reason)

    def modem_digit(self, digit: str) -> None:
        """A key reported by the modem's own DTMF detector (a URC)."""
        self._digit(digit, time.monotonic(), "modem")

    # --- internals ---------------------------------------------------------------------------
    def _control(self, what: str, call, on_ok=None) -> None:
        try:
            future = call()
        except Exception as exc:  # noqa: BLE001 — a supervisor that refuses at once
            self._control_failed(what, exc)
            return
        wrapped = asyncio.wrap_future(future, loop=self.loop)

        def done(f):
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self._control_failed(what, exc)
            elif on_ok is not None:
                on_ok()

        wrapped.add_done_callback(done)

    def _control_failed(self, what: str, exc: BaseException) -> None:
        if not self.alive:
            log.debug("GSM call %s: %s after the end: %s", self.sip_call_id, what, exc)
            return
        log.warning("GSM call %s: %s failed: %s", self.sip_call_id, what, exc)
        if what == "answer":
            self._finish(503, f"answer failed: {exc}")

    def _finish(self, code: int, reason: str) -> None:
        voice, self.voice = self.voice, None
        if voice is not None:
            voice.stop(wait=False)
        # Disconnect every player, recorder and bridge first (``_ended``), then park the port:
        # the bridge drops ports asynchronously and the clock thread may still call it.
        port, self.port = self.port, None
        self._ended(code, reason)
        if port is not None:
            port.voice = None
            self.stack.park(port)

    def _digit_from_reader(self, digit: str) -> None:
        # The voice channel's reader thread: hand over to the asyncio thread.
        at = time.monotonic()
        loop = self.loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(self._digit, digit, at, "inband")

    def _lost_from_thread(self, reason: str) -> None:
        loop = self.loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(self._voice_lost, reason)

    def _voice_lost(self, reason: str) -> None:
        if not self.alive:
            return
        log.warning("GSM call %s: voice channel lost (%s); ending the call", self.sip_call_id, reason)
        self._control("hangup", self.control.hangup)
        self._finish(503, f"voice channel lost: {reason}")

    def _digit(self, digit: str, at: float, source: str) -> None:
        if not self.alive:
            return
        if self._digits.accept(digit, at, source):
            self._on_digit(digit)
