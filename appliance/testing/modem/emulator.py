"""A USB GSM modem on a pseudo-terminal: what tests and `make demo` use instead of hardware.

``ModemEmulator`` opens a pty pair and answers AT commands on it the way a Huawei E173, a
SIMCom SIM7600 or a Quectel EC25 does, so the *unmodified* python-gsmmodem-new (or anything
else that talks AT over a serial port) opens ``emulator.device`` like a real ``/dev/ttyUSB2``.
A second pty, ``emulator.voice_device``, carries the call audio (8 kHz 16-bit LE mono PCM,
320-byte frames every 20 ms) once the box switches voice on with the model's own command.

Tests drive the radio side: ``ring()``, ``hangup_remote()``, ``deliver_sms()``,
``status_report()``, ``caller_says()``/``caller_presses()``, and break things with
``fault()``. Every SMS-SUBMIT that leaves is decoded here (by our own 3GPP 23.040 decoder, not
the library's, so the two check each other) and kept in ``sent_sms``.

Where the replies come from, per profile:

* from the vendors' AT command manuals as we know them (identification strings, the voice
  commands ``^DDSETEX`` / ``+QPCMV`` / ``+CPCMREG``, SIMCom's ``VOICE CALL: BEGIN/END``,
  Quectel's and SIMCom's boot lines, ``+CLIP`` layouts);
* from the Huawei E1752/K3715 transcripts recorded in python-gsmmodem's test/fakemodems.py
  (``COMMAND NOT SUPPORT``, the one-per-line ``+CLAC`` list with a stray CR, ``^ORIG/^CONN/
  ^CEND``; the E173 runs the same 11.126 firmware family);
* from 3GPP TS 27.007 / 27.005 where a manual says nothing (error numbers, ``+CPMS`` and
  ``+CMGR`` layouts, string parameters following ``+CSCS``).

Nothing here was checked against the three physical modems; hw-tests/ is where that happens.

This file is the machinery the three share: ptys, plugging, the command line parser and
dispatch, 27.007/27.005 commands, calls, SMS storage, faults, the voice port. What one model
does differently lives in its profile file (huawei.py, simcom.py, quectel.py; hooks described
in profile.py); the PDU codec is pdu.py, the voice audio and DTMF pcm.py.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import errno
import fcntl
import logging
import math
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import tty
from dataclasses import dataclass

from .huawei import HUAWEI
from .pcm import FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE, dtmf_pcm, pcm16
from .pdu import decode_submit_pdu, encode_deliver_pdus, encode_status_report_pdu
from .profile import AtError, Call, Final, int_arg, unquote
from .quectel import QUECTEL
from .simcom import SIMCOM

log = logging.getLogger(__name__)

CTRL_Z = 0x1A
ESC = 0x1B

FAULT_KINDS = ("no_reply", "late_reply", "unplug", "pin_required", "network_lost", "sim_busy")

PROFILES = {p.key: p for p in (HUAWEI, SIMCOM, QUECTEL)}

# Polish networks: IMSI prefix (MCC+MNC) and the SMS centre each publishes.
_NETWORKS = {
    "Plus": ("26001", "+48601000310"),
    "T-Mobile.pl": ("26002", "+48602951111"),
    "Orange": ("26003", "+48501200777"),
    "Play": ("26006", "+48790998250"),
}

_CME_TEXT = {
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    14: "SIM busy",
    16: "incorrect password",
    21: "invalid index",
    30: "no network service",
    50: "incorrect parameters",
}

_MEMORIES = ("SM", "ME", "SR")
_CAPACITY = {"SM": 30, "ME": 255, "SR": 30}


@dataclass
class _Stored:
    stat: int  # 0 REC UNREAD, 1 REC READ, 2 STO UNSENT, 3 STO SENT
    pdu: str


class ModemEmulator:
    """One USB GSM modem on pseudo-terminals. Use as a context manager or call ``close()``."""

    def __init__(
        self,
        profile: str = "huawei",
        *,
        pin: str | None = None,
        operator: str = "Plus",
        signal: int = 20,
        puk: str = "12345678",
        reset_delay: float = 1.0,
        callee_answer_delay: float | None = 3.0,
        answer_between_polls: bool = False,
        send_delay: float = 0.02,
        caller_tone_hz: float | None = None,
        callee_presses: tuple[str, float] | None = None,
    ):
        if profile not in PROFILES:
            raise ValueError(f"unknown modem profile {profile!r}; one of {', '.join(PROFILES)}")
        self.profile = PROFILES[profile]
        self.pin, self.puk = pin, puk
        self._pin_from_fault = False
        self.operator, self.signal = operator, signal
        self.reset_delay = reset_delay
        self.callee_answer_delay = callee_answer_delay
        # The person the box calls presses these keys this long after answering (the demo's
        # patient who takes the callback); None: only what a test says with caller_presses.
        self.callee_presses = callee_presses
        # The callee picks up once its delay is over, but only just after an AT+CLCC reply went
        # out: its call-state line then never lands inside a poll's reply (a library defect,
        # test_urc_during_a_command_is_taken_as_its_reply_defect) — for tests of the normal path.
        self.answer_between_polls = answer_between_polls
        self._answer_due: Call | None = None
        self.send_delay = send_delay
        self.caller_tone_hz = caller_tone_hz
        # The network beyond the radio (appliance.testing.carrier): told when the box dials,
        # answers, hangs up or sends keys, and then decides what the far end does; None: the
        # scripted callee above. Its methods are called with the emulator's lock held: they
        # may only hand the news on (e.g. loop.call_soon_threadsafe), never wait.
        self.network = None

        self.log: collections.deque = collections.deque(maxlen=50000)
        self.sent_sms: list[dict] = []
        self.dialled: list[str] = []
        self.dtmf_sent: list[str] = []
        self.replugged = threading.Event()

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._timers: set[threading.Timer] = set()
        self._dir = tempfile.mkdtemp(prefix="centralka-modem-")
        os.makedirs(os.path.join(self._dir, "by-id"))
        self._next_tty = 0
        self._master = self._slave = self._voice_master = self._voice_slave = None
        self._retired_at: list[int] = []
        self._retired_voice: list[int] = []
        self.device = self.voice_device = None
        self.stable_device = os.path.join(self._dir, "by-id", self.profile.usb_name)

        # The SIM and the modem's flash keep these across resets and replugs.
        self.pin_state = "SIM PIN" if pin else "READY"
        self.pin_tries = 3
        self.puk_tries = 10
        self._storage: dict[str, dict[int, _Stored]] = {m: {} for m in _MEMORIES}
        self._mr = 0
        self._concat_ref = 0
        self._network_lost = False
        self._faults: dict[str, int | None] = {}
        self._voice_received = bytearray()
        self._caller_audio = bytearray()
        self._tone_phase = 0.0
        self.voice_dropped_frames = 0

        self._power_on()
        self._plug()
        self._at_thread = threading.Thread(target=self._serve_at, name="modem-at", daemon=True)
        self._voice_thread = threading.Thread(target=self._serve_voice, name="modem-pcm", daemon=True)
        self._at_thread.start()
        self._voice_thread.start()

    # ---------------------------------------------------------------- life cycle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop the threads, close the ptys, remove the device links."""
        self._stop.set()
        with self._lock:
            for timer in list(self._timers):
                timer.cancel()
            self._timers.clear()
        for thread in (self._at_thread, self._voice_thread):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=2)
        with self._lock:
            self._unplug_ports(now=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def _power_on(self) -> None:
        """Settings a modem has after power-up (the SIM keeps its PIN state and counters)."""
        self.echo = True
        self.cmee = 0
        self.cmgf = 0
        self.cscs = self.profile.charset
        self.cnmi = [0, 0, 0, 0, 0]
        self.clip = 0
        self.crc = 0
        self.cvhu = 0
        self.creg = {"+CREG": 0, "+CGREG": 0, "+CEREG": 0}
        self.cops_format = 0
        self.cfun = 1
        self.csmp = [17, 167, 0, 0]
        self.cpms = ["SM", "SM", "SM"]
        self.smsc = _NETWORKS.get(self.operator, _NETWORKS["Plus"])[1]
        self._calls: dict[int, Call] = {}
        self._voice_on = False
        self._line = bytearray()
        self._sms_body: bytearray | None = None
        self._cmgs_length = 0
        self._cmgs_number: str | None = None
        self._held_reply: str | None = None
        self._with_next_reply: list[str] = []
        self._after_reply: list[str] = []
        self._last_command = ""
        # A power cycle un-hangs a hung modem; only the network and the SIM stay as they are.
        for kind in ("no_reply", "late_reply", "sim_busy"):
            self._faults.pop(kind, None)
        if self.pin and self.pin_state == "READY":
            self.pin_state = "SIM PIN"

    def _plug(self) -> None:
        """Create the pty pair(s) and the device links, as USB enumeration creates ttyUSBn."""
        base = self._next_tty
        self._next_tty += 5
        self._master, self._slave = self._open_pty()
        self._voice_master, self._voice_slave = self._open_pty()
        self.device = os.path.join(self._dir, f"ttyUSB{base + self.profile.at_port}")
        self.voice_device = os.path.join(self._dir, f"ttyUSB{base + self.profile.voice_port}")
        os.symlink(os.ttyname(self._slave), self.device)
        os.symlink(os.ttyname(self._voice_slave), self.voice_device)
        tmp = self.stable_device + ".new"
        os.symlink(os.ttyname(self._slave), tmp)
        os.replace(tmp, self.stable_device)
        self._record("event", f"plugged: AT {self.device}, voice {self.voice_device}")
        lines = list(self.profile.boot_lines)
        if self.pin_state != "READY" and lines:
            lines = [f"+CPIN: {self.pin_state}" if ln == "+CPIN: READY" else ln for ln in lines if "DONE" not in ln]
        for line in lines:
            self._write(f"\r\n{line}\r\n")

    @staticmethod
    def _open_pty() -> tuple[int, int]:
        master, slave = os.openpty()
        # Raw at once: a cooked slave would echo our replies back to us as commands and
        # turn CR into LF before the library has opened (and reconfigured) the port.
        tty.setraw(master)
        tty.setraw(slave)
        flags = fcntl.fcntl(master, fcntl.F_GETFL)
        fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        return master, slave

    def _unplug_ports(self, *, now: bool = False) -> None:
        """The device disappears: links removed, ptys closed (the box's reads then fail).

        A master is closed by the thread that reads it (unless ``now``): closed here, its
        number could be reused at once by the box's next open() while that thread still
        selects on it, and we would read the box's own bytes.
        """
        for name, retired in (("_master", self._retired_at), ("_voice_master", self._retired_voice)):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                retired.append(fd)
        for name in ("_slave", "_voice_slave"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                os.close(fd)
        if now:
            self._close_retired(self._retired_at)
            self._close_retired(self._retired_voice)
        for path in (self.device, self.voice_device, self.stable_device):
            if path and os.path.lexists(path):
                os.unlink(path)

    @staticmethod
    def _close_retired(retired: list) -> None:
        while retired:
            try:
                os.close(retired.pop())
            except OSError:
                pass

    def replug(self) -> str:
        """Plug the modem back in (after ``fault("unplug")`` or a reset): new ptys, new names.

        Returns the new ``device``. The stable by-id link (``stable_device``) follows it, as a
        udev rule by vendor/product/serial would.
        """
        with self._lock:
            if self.plugged:
                self._unplug_ports()
            self._power_on()
            self._plug()
        self.replugged.set()
        return self.device

    # ---------------------------------------------------------------- transcript

    def _record(self, direction: str, text: str) -> None:
        self.log.append((direction, text))
        log.debug("%s %s %r", self.profile.key, direction, text)

    @property
    def commands(self) -> list[str]:
        """Every AT command line received, in order."""
        return [text for direction, text in list(self.log) if direction == "rx"]

    def transcript(self) -> str:
        out = []
        for direction, text in list(self.log):
            shown = text.replace("\r", "\\r").replace("\n", "\\n")
            out.append(f"{direction:>5} {shown}")
        return "\n".join(out)

    # ---------------------------------------------------------------- writing to the box

    def _write(self, text: str) -> None:
        with self._lock:
            fd = self._master
            if fd is None or not text:
                return
            self._record("tx", text)
            data = text.encode("utf-8")
            try:
                while data:
                    sent = os.write(fd, data)
                    data = data[sent:]
            except BlockingIOError:
                self._record("event", "AT port buffer full: reply dropped (nobody reading)")
            except OSError as exc:
                self._record("event", f"write failed: {exc}")

    def _urc(self, *lines: str) -> None:
        """Unsolicited lines, in one write, never in the middle of a command's reply."""
        with self._lock:
            self._write("".join(f"\r\n{line}\r\n" for line in lines))

    def unsolicited(self, *lines: str, with_next_reply: bool = False) -> None:
        """Send arbitrary unsolicited lines (e.g. Huawei's ``^RSSI:17``).

        With ``with_next_reply`` they go out just before the reply to the next command, the way
        a URC that fires while the command runs reaches the box.
        """
        with self._lock:
            if with_next_reply:
                self._with_next_reply.extend(lines)
            else:
                self._urc(*lines)

    def _later(self, delay: float, func, *args) -> None:
        def run():
            with self._lock:
                self._timers.discard(timer)
            if not self._stop.is_set():
                func(*args)

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def _te(self, text: str) -> str:
        """A string parameter in the TE character set (27.007 5.5: follows +CSCS)."""
        if self.cscs == "UCS2":
            return text.encode("utf-16-be", "surrogatepass").hex().upper()
        return text

    def _from_te(self, text: str) -> str:
        if self.cscs == "UCS2" and re.fullmatch(r"(?:[0-9A-Fa-f]{4})+", text or ""):
            return bytes.fromhex(text).decode("utf-16-be", "surrogatepass")
        return text

    # ---------------------------------------------------------------- AT port reader

    def _serve_at(self) -> None:
        while not self._stop.is_set():
            self._close_retired(self._retired_at)
            fd = self._master
            if fd is None:
                self._stop.wait(0.02)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(fd, 4096)
            except (OSError, ValueError) as exc:
                # EIO: nobody has the slave open; EBADF: unplugged under our feet.
                if getattr(exc, "errno", None) not in (errno.EAGAIN, errno.EIO, errno.EBADF, None):
                    self._record("event", f"AT read failed: {exc}")
                self._stop.wait(0.02)
                continue
            with self._lock:
                if fd == self._master:
                    self._feed(data)

    def _feed(self, data: bytes) -> None:
        for byte in data:
            if self._sms_body is not None:
                if byte == CTRL_Z:
                    body, self._sms_body = bytes(self._sms_body), None
                    self._finish_cmgs(body)
                elif byte == ESC:
                    # ESC cancels the message (27.005); modems then answer OK and send nothing.
                    self._sms_body = None
                    self._record("event", "SMS input cancelled with ESC")
                    self._write("\r\nOK\r\n")
                else:
                    self._sms_body.append(byte)
            elif byte == 0x0D:
                line, self._line = bytes(self._line), bytearray()
                self._on_line(line)
            elif byte == 0x0A:
                continue
            elif byte in (0x08, 0x7F):
                del self._line[-1:]
            else:
                self._line.append(byte)

    def _take_fault(self, kind: str) -> bool:
        if kind not in self._faults:
            return False
        left = self._faults[kind]
        if left is not None:
            if left <= 1:
                del self._faults[kind]
            else:
                self._faults[kind] = left - 1
        return True

    def _on_line(self, raw: bytes) -> None:
        text = raw.decode("latin-1").strip()
        if not text:
            return
        self._record("rx", text)
        if self._held_reply is not None:
            # The reply the previous command should have had arrives only now, after the
            # library gave up on it: it lands on this command.
            held, self._held_reply = self._held_reply, None
            self._write(held)
        if self._take_fault("no_reply"):
            self._record("event", "hung: command swallowed")
            return
        echo = text + "\r" if self.echo else ""
        reply = self._execute(text)
        if self._with_next_reply:
            reply = "".join(f"\r\n{ln}\r\n" for ln in self._with_next_reply) + reply
            self._with_next_reply = []
        if self._sms_body is None and self._take_fault("late_reply"):
            self._record("event", "late: reply held back until the next command")
            self._write(echo)
            self._held_reply = reply
        else:
            self._write(echo + reply)
        after, self._after_reply = self._after_reply, []
        if after:
            self._urc(*after)

    # ---------------------------------------------------------------- command parsing

    def _frame(self, lines: list[str], final: str) -> str:
        body = "".join(f"\r\n{line}\r\n" for line in lines)
        return body + (f"\r\n{final}\r\n" if final else "")

    def _error(self, exc: AtError) -> str:
        if exc.kind == "unknown":
            return self.profile.not_supported
        if exc.kind == "plain" or self.cmee == 0:
            return "ERROR"
        if exc.kind == "CME" and self.cmee == 2:
            return f"+CME ERROR: {_CME_TEXT.get(exc.code, 'unknown')}"
        return f"+{exc.kind} ERROR: {exc.code}"

    def _execute(self, text: str) -> str:
        if text.upper() == "A/":
            text = self._last_command or "AT"
        if not text.upper().startswith("AT"):
            return ""  # line noise: real modems ignore anything not starting with AT
        self._last_command = text
        lines: list[str] = []
        try:
            for command in self._split(text[2:]):
                lines += self._run(command)
        except AtError as exc:
            return self._frame(lines, self._error(exc))
        except Final as final:
            return self._frame(lines, "") + final.text
        return self._frame(lines, "OK")

    @staticmethod
    def _split(body: str) -> list[tuple]:
        """AT command line -> [("basic", letter, arg) | ("ext", name, op, args)]."""
        out, i = [], 0
        while i < len(body):
            ch = body[i]
            if ch in "+^$%":
                j, quoted = i, False
                while j < len(body) and (quoted or body[j] != ";"):
                    if body[j] == '"':
                        quoted = not quoted
                    j += 1
                m = re.fullmatch(r"([+^$%][A-Za-z0-9]+)(=\?|\?|=(.*))?", body[i:j], re.S)
                if not m:
                    raise AtError("plain")
                op = {"=?": "test", "?": "read"}.get(m.group(2) or "", "set" if m.group(2) else "exec")
                out.append(("ext", m.group(1).upper(), op, ModemEmulator._args(m.group(3) or "")))
                i = j + 1
            elif ch in "Dd":
                out.append(("basic", "D", body[i + 1 :]))
                break
            elif ch in "; ":
                i += 1
            else:
                m = re.match(r"(&?[A-Za-z])(\d*)(=\d*|\?)?", body[i:])
                if not m:
                    raise AtError("plain")
                out.append(("basic", m.group(1).upper(), m.group(2) + (m.group(3) or "")))
                i += m.end()
        return out

    @staticmethod
    def _args(text: str) -> list[str]:
        args, current, quoted = [], [], False
        for ch in text:
            if ch == '"':
                quoted = not quoted
                current.append(ch)
            elif ch == "," and not quoted:
                args.append("".join(current).strip())
                current = []
            else:
                current.append(ch)
        if text:
            args.append("".join(current).strip())
        return args

    _unq = staticmethod(unquote)
    _int = staticmethod(int_arg)

    def _run(self, command: tuple) -> list[str]:
        if command[0] == "basic":
            return self._basic(command[1], command[2])
        _, name, op, args = command
        if name not in self.profile.commands:
            raise AtError("unknown")
        sim = name in self.profile.sim_commands
        if sim or (name == "+CPIN" and op == "read"):
            if self._take_fault("sim_busy"):
                raise AtError("CME", 14)
        if sim and self.pin_state != "READY":
            raise AtError("CME", 12 if self.pin_state == "SIM PUK" else 11)
        own = self.profile.own_handler(name)
        if own is not None:
            return own(self, op, args) or []
        handler = getattr(self, "_at_" + re.sub(r"\W", "", name).lower(), None)
        if handler is None:
            return []  # a command the model has and we do not model: accepted quietly
        return handler(op, args) or []

    # ---------------------------------------------------------------- V.25ter basic commands

    def _basic(self, letter: str, arg: str) -> list[str]:
        if letter in ("Z", "&F"):
            # Restores the stored profile: echo comes back on, error codes go terse.
            self.echo, self.cmee = True, 0
        elif letter == "E":
            self.echo = arg != "0"
        elif letter == "A":
            self._answer()
        elif letter == "H":
            self._local_hangup()
        elif letter == "D":
            self._dial(arg.strip())
        elif letter == "I":
            return self.profile.identification()
        elif letter in ("V", "Q", "X", "&C", "&D", "&W", "&V", "L", "M", "S", "&S", "&K"):
            pass
        else:
            raise AtError("plain")
        return []

    # ---------------------------------------------------------------- identity and status

    def _at_cgmi(self, op, args):
        return [self.profile.manufacturer] if op == "exec" else []

    _at_gmi = _at_cgmi

    def _at_cgmm(self, op, args):
        return [self.profile.model] if op == "exec" else []

    _at_gmm = _at_cgmm

    def _at_cgmr(self, op, args):
        return [self.profile.revision] if op == "exec" else []

    _at_gmr = _at_cgmr

    def _at_cgsn(self, op, args):
        return [self.profile.imei] if op == "exec" else []

    _at_gsn = _at_cgsn

    def _at_cimi(self, op, args):
        prefix = _NETWORKS.get(self.operator, _NETWORKS["Plus"])[0]
        return [prefix + "1234567890"] if op == "exec" else []

    def _at_gcap(self, op, args):
        return ["+GCAP: +CGSM,+DS,+ES"]

    def _at_clac(self, op, args):
        if not self.profile.clac:
            raise AtError("plain")
        if op != "exec":
            return []
        basic = [
            "&C",
            "&D",
            "&F",
            "&V",
            "&W",
            "A",
            "D",
            "E",
            "H",
            "I",
            "L",
            "M",
            "O",
            "Q",
            "S0",
            "S3",
            "S4",
            "S5",
            "S7",
            "S8",
            "S10",
            "V",
            "X",
            "Z",
        ]
        end = self.profile.clac_line_end
        return [name + end for name in basic + sorted(self.profile.commands)]

    def _at_cmee(self, op, args):
        if op == "read":
            return [f"+CMEE: {self.cmee}"]
        if op == "test":
            return ["+CMEE: (0-2)"]
        value = self._int(args[0] if args else "0")
        if value not in (0, 1, 2):
            raise AtError("CME", 50)
        self.cmee = value
        return []

    def _at_cfun(self, op, args):
        if op == "read":
            return [f"+CFUN: {self.cfun}"]
        if op == "test":
            return ["+CFUN: (0,1,4),(0-1)"]
        if op != "set" or not args:
            raise AtError("CME", 50)
        fun = self._int(args[0])
        if fun not in (0, 1, 4):
            raise AtError("CME", 50)
        if len(args) > 1 and self._int(args[1]) == 1:
            # Full reset: OK first, then the USB device drops off the bus and comes back
            # (possibly under a new ttyUSB number) a little later.
            self._record("event", "AT+CFUN=1,1: resetting")
            self._later(0.1, self._reset)
            return []
        was = self._registered()
        self.cfun = fun
        if was != self._registered():
            self._after_reply += self._creg_urcs()
        return []

    def _reset(self) -> None:
        with self._lock:
            self._unplug_ports()
            self._record("event", "unplugged (reset)")
        self.replugged.clear()
        self._later(self.reset_delay, self.replug)

    def _at_cpin(self, op, args):
        if op == "read":
            return [f"+CPIN: {self.pin_state}"]
        if op != "set" or not args:
            return []
        given = self._unq(args[0])
        if self.pin_state == "READY":
            raise AtError("CME", 3)
        if self.pin_state == "SIM PIN":
            if given == self.pin:
                self.pin_state, self.pin_tries = "READY", 3
                self._record("event", "PIN accepted")
                self._after_reply += self._creg_urcs()
                return []
            self.pin_tries -= 1
            if self.pin_tries <= 0:
                self.pin_state = "SIM PUK"
                self._record("event", "third wrong PIN: SIM wants its PUK")
            raise AtError("CME", 16)
        # SIM PUK: AT+CPIN="<puk>","<new pin>"
        if len(args) < 2:
            raise AtError("CME", 12)
        if given != self.puk:
            self.puk_tries -= 1
            raise AtError("CME", 16)
        self.pin = self._unq(args[1])
        self.pin_state, self.pin_tries, self.puk_tries = "READY", 3, 10
        return []

    def _registered(self) -> bool:
        return self.cfun == 1 and not self._network_lost and self.pin_state == "READY"

    def _at_csq(self, op, args):
        if op == "test":
            return ["+CSQ: (0-31,99),(0-7,99)"]
        if self.cfun != 1 or self._network_lost:
            return ["+CSQ: 99,99"]
        return [f"+CSQ: {self.signal},99"]

    def _creg_line(self, name: str, n: int, urc: bool) -> str:
        stat = 1 if self._registered() else 0
        fields = [] if urc else [str(n)]
        fields.append(str(stat))
        if n >= 2 and stat == 1:
            fields += ['"1A2B"', '"00C3D4E5"']
            if self.profile.access_tech == 7:
                fields.append("7")  # LTE modules append <AcT>
        return f"{name}: {','.join(fields)}"

    def _creg_urcs(self) -> list[str]:
        return [
            self._creg_line(name, n, urc=True) for name, n in self.creg.items() if n and name in self.profile.commands
        ]

    def _at_creg(self, op, args, name="+CREG"):
        if op == "read":
            return [self._creg_line(name, self.creg[name], urc=False)]
        if op == "test":
            return [f"{name}: (0-2)"]
        n = self._int(args[0] if args else "0")
        if n not in (0, 1, 2):
            raise AtError("CME", 50)
        self.creg[name] = n
        return []

    def _at_cgreg(self, op, args):
        return self._at_creg(op, args, "+CGREG")

    def _at_cereg(self, op, args):
        return self._at_creg(op, args, "+CEREG")

    def _at_cops(self, op, args):
        mcc_mnc = _NETWORKS.get(self.operator, _NETWORKS["Plus"])[0]
        act = self.profile.access_tech
        if op == "read":
            if not self._registered():
                return ["+COPS: 0"]
            name = mcc_mnc if self.cops_format == 2 else self._te(self.operator)
            return [f'+COPS: 0,{self.cops_format},"{name}",{act}']
        if op == "test":
            return [f'+COPS: (2,"{self.operator}","{self.operator}","{mcc_mnc}",{act}),,(0-4),(0-2)']
        if args and self._int(args[0]) == 3 and len(args) > 1:
            self.cops_format = self._int(args[1])
        return []

    # ---------------------------------------------------------------- settings the library makes

    def _at_cmgf(self, op, args):
        if op == "read":
            return [f"+CMGF: {self.cmgf}"]
        if op == "test":
            return ["+CMGF: (0,1)"]
        value = self._int(args[0] if args else "0")
        if value not in (0, 1):
            raise AtError("CME", 50)
        self.cmgf = value
        return []

    def _at_cscs(self, op, args):
        if op == "read":
            return [f'+CSCS: "{self.cscs}"']
        if op == "test":
            return [self.profile.charsets]
        wanted = self._unq(args[0]) if args else ""
        if f'"{wanted}"' not in self.profile.charsets:
            raise AtError("CME", 4)
        self.cscs = wanted
        return []

    def _at_cnmi(self, op, args):
        if op == "read":
            return ["+CNMI: " + ",".join(map(str, self.cnmi))]
        if op == "test":
            return ["+CNMI: (0-2),(0-3),(0,2),(0-2),(0,1)"]
        values = list(self.cnmi)
        for i, arg in enumerate(args[:5]):
            if arg != "":
                values[i] = self._int(arg)
        if not (0 <= values[0] <= 3 and 0 <= values[1] <= 3 and 0 <= values[3] <= 2):
            raise AtError("CMS", 303)
        self.cnmi = values
        return []

    def _at_clip(self, op, args):
        if op == "read":
            return [f"+CLIP: {self.clip},1"]
        if op == "set":
            self.clip = self._int(args[0] if args else "0")
        return []

    def _at_crc(self, op, args):
        if op == "read":
            return [f"+CRC: {self.crc}"]
        if op == "set":
            self.crc = self._int(args[0] if args else "0")
        return []

    def _at_cvhu(self, op, args):
        if op == "read":
            return [f"+CVHU: {self.cvhu}"]
        if op == "set":
            self.cvhu = self._int(args[0] if args else "0")
        return []

    def _at_csmp(self, op, args):
        if op == "read":
            return ["+CSMP: " + ",".join(map(str, self.csmp))]
        if op == "set":
            for i, arg in enumerate(args[:4]):
                if arg != "":
                    self.csmp[i] = self._int(arg)
        return []

    def _at_csca(self, op, args):
        if op == "read":
            if not self.smsc:
                raise AtError("CMS", 330)
            return [f'+CSCA: "{self._te(self.smsc)}",145']
        if op == "set" and args:
            self.smsc = self._from_te(self._unq(args[0]))
        return []

    # ---------------------------------------------------------------- SMS storage

    def _memory(self, name: str) -> dict[int, _Stored]:
        # "MT" is ME and SM together on these modems; we file it under ME.
        return self._storage["ME" if name == "MT" else name]

    def _cpms_counts(self) -> list[str]:
        out = []
        for name in self.cpms:
            key = "ME" if name == "MT" else name
            out += [str(len(self._storage[key])), str(_CAPACITY[key])]
        return out

    def _at_cpms(self, op, args):
        if op == "test":
            return [self.profile.cpms_test]
        if op == "read":
            fields = []
            for name, (used, total) in zip(self.cpms, zip(*[iter(self._cpms_counts())] * 2)):
                fields += [f'"{name}"', used, total]
            return ["+CPMS: " + ",".join(fields)]
        wanted = [self._unq(a) for a in args if a]
        if not wanted or any(f'"{w}"' not in self.profile.cpms_test for w in wanted):
            raise AtError("CMS", 302)
        for i, name in enumerate(wanted[:3]):
            self.cpms[i] = name
        return ["+CPMS: " + ",".join(self._cpms_counts())]

    def _store(self, memory: str, pdu: str) -> int:
        slots = self._memory(memory)
        # These three index from 0 (unlike the SIM800, which starts at 1).
        index = next(i for i in range(_CAPACITY["ME" if memory == "MT" else memory] + 1) if i not in slots)
        slots[index] = _Stored(0, pdu)
        return index

    @staticmethod
    def _tpdu_length(pdu: str) -> int:
        data = bytes.fromhex(pdu)
        return len(data) - 1 - data[0]

    def _at_cmgr(self, op, args):
        if op != "set" or not args:
            return []
        if self.cmgf == 1:
            raise AtError("CMS", 303)  # text-mode reading is not emulated
        entry = self._memory(self.cpms[0]).get(self._int(args[0]))
        if entry is None:
            raise AtError("CMS", 321)
        lines = [f"+CMGR: {entry.stat},,{self._tpdu_length(entry.pdu)}", entry.pdu]
        if entry.stat == 0:
            entry.stat = 1
        return lines

    def _at_cmgl(self, op, args):
        if op == "test":
            return ["+CMGL: (0-4)"]
        if self.cmgf == 1:
            raise AtError("CMS", 303)
        wanted = self._int(args[0] if args else "0")
        lines = []
        for index, entry in sorted(self._memory(self.cpms[0]).items()):
            if wanted == 4 or entry.stat == wanted:
                lines += [f"+CMGL: {index},{entry.stat},,{self._tpdu_length(entry.pdu)}", entry.pdu]
                if entry.stat == 0:
                    entry.stat = 1
        return lines

    def _at_cmgd(self, op, args):
        if op == "test":
            return ["+CMGD: (0-254),(0-4)"]
        if op != "set" or not args:
            raise AtError("CMS", 302)
        slots = self._memory(self.cpms[0])
        index = self._int(args[0])
        flag = self._int(args[1]) if len(args) > 1 and args[1] else 0
        doomed = {
            0: {index} & set(slots),
            1: {i for i, e in slots.items() if e.stat == 1},
            2: {i for i, e in slots.items() if e.stat in (1, 3)},
            3: {i for i, e in slots.items() if e.stat in (1, 2, 3)},
            4: set(slots),
        }.get(flag)
        if doomed is None:
            raise AtError("CMS", 302)
        for i in doomed:
            del slots[i]
        return []

    # ---------------------------------------------------------------- sending SMS

    def _at_cmgs(self, op, args):
        if op == "test":
            return []
        if op != "set" or not args:
            raise AtError("CMS", 302)
        if self.cmgf == 0:
            self._cmgs_length = self._int(args[0])
            self._cmgs_number = None
        else:
            self._cmgs_number = self._from_te(self._unq(args[0]))
        self._sms_body = bytearray()
        # The prompt: CR LF "> " and no final result until the message ends with Ctrl-Z.
        raise Final("\r\n> ")

    def _finish_cmgs(self, body: bytes) -> None:
        text = body.decode("latin-1")
        if self.echo:
            self._write(text)
        if self.cmgf == 1:
            entry = {
                "pdu_hex": None,
                "number": self._cmgs_number,
                "text": self._from_te(text),
                "udh": None,
                "encoding": "text",
                "request_status_report": bool(self.csmp[0] & 0x20),
            }
        else:
            pdu = text.strip()
            self._record("rx-pdu", pdu)
            try:
                entry = decode_submit_pdu(pdu)
                if entry["tpdu_length"] != self._cmgs_length:
                    raise ValueError(f"AT+CMGS={self._cmgs_length} but the TPDU has {entry['tpdu_length']} octets")
            except (ValueError, IndexError) as exc:
                self._record("event", f"bad PDU: {exc}")
                self._write(f"\r\n{self._error(AtError('CMS', 304))}\r\n")
                return
        if not self._registered():
            self._write(f"\r\n{self._error(AtError('CMS', 331))}\r\n")
            return
        if self.send_delay:
            time.sleep(self.send_delay)  # the radio is busy; the modem queues what comes next
        entry["mr"] = self._mr
        self._mr = (self._mr + 1) % 256
        entry["sent_at"] = _dt.datetime.now().astimezone()
        self.sent_sms.append(entry)
        self._write(f"\r\n+CMGS: {entry['mr']}\r\n\r\nOK\r\n")

    # ---------------------------------------------------------------- calls

    def _new_call_id(self) -> int:
        return next(i for i in range(1, 8) if i not in self._calls)

    def _at_clcc(self, op, args):
        if op != "exec":
            return []
        lines = [
            f'+CLCC: {c.id},{c.direction},{c.state},0,0,"{self._te(c.number)}",{c.ton}'
            for c in sorted(self._calls.values(), key=lambda c: c.id)
        ]
        call, self._answer_due = self._answer_due, None
        if call is not None and self._calls.get(call.id) is call:
            call.state, call.answered_at = 0, time.monotonic()
            self._after_reply += self.profile.connected_urcs(call)
        return lines

    def _at_chup(self, op, args):
        if op == "exec":
            self._local_hangup()
        return []

    def _answer(self) -> None:
        call = next((c for c in self._calls.values() if c.state == 4), None)
        if call is None:
            raise Final("\r\nNO CARRIER\r\n")
        call.state, call.answered_at = 0, time.monotonic()
        self._record("event", f"call {call.id} answered")
        self._after_reply += self.profile.connected_urcs(call)
        if self.network is not None:
            self.network.answered(call.id)

    def _end_call(self, call: Call, *, remote: bool) -> list[str]:
        self._calls.pop(call.id, None)
        if not self.in_call() and self.profile.voice_lasts_one_call:
            self._voice_on = False
        self._record("event", f"call {call.id} ended ({'remote' if remote else 'local'})")
        duration = int(time.monotonic() - call.answered_at) if call.answered_at else 0
        if self.network is not None and not remote:
            self.network.ended(call.id)
        return self.profile.ended_urcs(call, duration=duration, remote=remote)

    def _local_hangup(self) -> None:
        for call in list(self._calls.values()):
            self._after_reply += self._end_call(call, remote=False)

    def _dial(self, dial_string: str) -> None:
        voice = dial_string.endswith(";")
        number = dial_string.rstrip(";").strip()
        if not voice or not self._registered() or not number:
            raise Final("\r\nNO CARRIER\r\n")
        call = Call(self._new_call_id(), 0, 2, number, 145 if number.startswith("+") else 129)
        self._calls[call.id] = call
        self.dialled.append(number)
        self._record("event", f"dialling {number} as call {call.id}")
        self._after_reply += self.profile.dialling_urcs(call)
        if self.network is not None and self.network.dialled(call.id, number):
            return  # the network rings the far end and reports back (remote_alerting, ...)
        delay = self.callee_answer_delay
        self._later(0.3 if delay is None else min(0.3, delay), self._callee_alerting, call)

    def _callee_alerting(self, call: Call) -> None:
        with self._lock:
            if self._calls.get(call.id) is not call:
                return
            call.state = 3
            urcs = self.profile.alerting_urcs(call)
            if urcs:
                self._urc(*urcs)
            if self.callee_answer_delay is not None:
                self._later(max(0.0, self.callee_answer_delay - 0.3), self._callee_answers, call)

    def _callee_answers(self, call: Call) -> None:
        with self._lock:
            if self._calls.get(call.id) is not call:
                return
            if self.answer_between_polls:
                self._answer_due = call  # (taken by the next AT+CLCC, after its reply)
                return
            call.state, call.answered_at = 0, time.monotonic()
            urcs = self.profile.connected_urcs(call)
            if urcs:
                self._urc(*urcs)
            if self.callee_presses and call.direction == 0:  # (a call the box placed)
                digits, after = self.callee_presses
                self._later(after, lambda: self.in_call() and self.caller_presses(digits))

    def _at_vts(self, op, args):
        if op == "test":
            return ["+VTS: (0-9,*,#,A,B,C,D)"]
        if not self.in_call():
            raise AtError("CME", 3)
        self.keys_sent(self._unq(args[0]) if args else "")
        return []

    def keys_sent(self, digits: str) -> None:
        """The box sent keys into the call (+VTS, or the model's own command): the far end hears them."""
        self.dtmf_sent.extend(digits)
        if self.network is not None and digits:
            self.network.keys(digits)

    # ---------------------------------------------------------------- for the profiles' own commands

    def in_call(self) -> bool:
        """A call is connected (27.007 state 0, active)."""
        return any(c.state == 0 for c in self._calls.values())

    @property
    def voice_on(self) -> bool:
        """The model's voice switch (^DDSETEX, +CPCMREG, +QPCMV) is on."""
        return self._voice_on

    def switch_voice(self, on: bool, how: str) -> None:
        """The box set the voice switch with the model's command ``how``."""
        self._voice_on = on
        self._record("event", f"voice {'on' if on else 'off'} ({how})")

    # ---------------------------------------------------------------- the radio side (tests)

    def ring(self, caller: str, *, ton: int | None = None, clip_in_separate_write: bool = False) -> int:
        """An incoming call rings once (call again for the next ring, as the network repeats it).

        ``caller`` "" means a withheld number. ``ton`` 145 international, 129 unknown/national
        (the default follows the leading "+"). Normally RING and +CLIP leave in one write, as a
        modem sends them; ``clip_in_separate_write`` sends +CLIP 100 ms later. Returns the call's id.
        """
        with self._lock:
            if ton is None:
                ton = 145 if caller.startswith("+") else (128 if not caller else 129)
            if ton == 145 and caller and not caller.startswith("+"):
                caller = "+" + caller
            call = next((c for c in self._calls.values() if c.state == 4), None)
            if call is None:
                call = Call(self._new_call_id(), 1, 4, caller, ton)
                self._calls[call.id] = call
                self._record("event", f"incoming call {call.id} from {caller or 'withheld'}")
            ring = "+CRING: VOICE" if self.crc else "RING"
            clip = None
            if self.clip:
                validity = "0" if caller else "1"
                tail = self.profile.clip_tail[:-1] + validity
                clip = f'+CLIP: "{self._te(caller)}",{ton}{tail}'
            if clip is None:
                self._urc(ring)
            elif not clip_in_separate_write:
                self._urc(ring, clip)
            else:
                self._urc(ring)
        if clip is not None and clip_in_separate_write:
            time.sleep(0.1)
            self._urc(clip)
        return call.id

    def hangup_remote(self, call_id: int | None = None) -> None:
        """The other party hangs up (a ringing caller gives up, or an answered call ends);
        ``call_id``: only that call (a stale hang-up of an older call ends nothing)."""
        with self._lock:
            lines = []
            for call in list(self._calls.values()):
                if call_id is None or call.id == call_id:
                    lines += self._end_call(call, remote=True)
            if lines:
                self._urc(*lines)

    def remote_alerting(self, call_id: int) -> None:
        """The far end of a call the box dialled rings (for ``network``)."""
        call = self._calls.get(call_id)
        if call is not None and call.state == 2:
            with self._lock:
                call.state = 3
                urcs = self.profile.alerting_urcs(call)
                if urcs:
                    self._urc(*urcs)

    def remote_answers(self, call_id: int) -> None:
        """The far end of a call the box dialled picks up (for ``network``)."""
        call = self._calls.get(call_id)
        if call is not None and call.state in (2, 3):
            saved, self.callee_presses = self.callee_presses, None
            try:
                self._callee_answers(call)
            finally:
                self.callee_presses = saved

    def take_voice(self, start: int) -> tuple[bytes, int]:
        """What the box wrote to the voice port from offset ``start`` on, and the new offset."""
        with self._lock:
            return bytes(self._voice_received[start:]), len(self._voice_received)

    @property
    def calls(self) -> list[dict]:
        """The modem's calls as +CLCC would list them."""
        with self._lock:
            return [dict(id=c.id, direction=c.direction, state=c.state, number=c.number) for c in self._calls.values()]

    def deliver_sms(self, number: str, text: str, *, parts: int = 1, notify_together: bool = False) -> list[int]:
        """The network delivers an SMS from ``number``; returns the storage indices.

        Stored as PDU-mode SMS-DELIVER in the +CPMS receive memory, announced with +CMTI (one per
        part, 200 ms apart, or all in one write with ``notify_together``), or pushed with +CMT
        when the box chose AT+CNMI=…,2. ``parts`` > 1 cuts the text into that many parts with a
        concatenation header (UCS-2: at most 67 characters each, GSM-7: 153).
        """
        with self._lock:
            self._concat_ref = (self._concat_ref + 1) % 256
            pdus = encode_deliver_pdus(
                number,
                text,
                smsc=self.smsc,
                parts=parts,
                ref=self._concat_ref,
                when=_dt.datetime.now().astimezone().replace(microsecond=0),
            )
            memory, mt = self.cpms[2], self.cnmi[1]
            indices = [] if mt == 2 else [self._store(memory, pdu) for pdu in pdus]
            self._record("event", f"SMS from {number} in {len(pdus)} part(s)")
        if mt == 2:
            for pdu in pdus:
                self._urc(f"+CMT: ,{self._tpdu_length(pdu)}", pdu)
        elif mt in (1, 3):
            lines = [f'+CMTI: "{memory}",{i}' for i in indices]
            if notify_together:
                self._urc(*lines)
            else:
                for n, line in enumerate(lines):
                    if n:
                        time.sleep(0.2)
                    self._urc(line)
        return indices

    def stored_sms(self, memory: str = "ME") -> dict[int, str]:
        """What is left in a message memory (index -> PDU hex)."""
        with self._lock:
            return {i: e.pdu for i, e in sorted(self._memory(memory).items())}

    def status_report(self, mr: int, delivered: bool = True) -> None:
        """The SMSC reports on the SMS the modem sent with reference ``mr``."""
        with self._lock:
            sent = next((s for s in reversed(self.sent_sms) if s.get("mr") == mr), None)
            recipient = sent["number"] if sent else "+48600000000"
            sent_at = (sent or {}).get("sent_at") or _dt.datetime.now().astimezone()
            # 0x00 delivered; 0x46 "SM validity period expired" (permanent error).
            pdu = encode_status_report_pdu(
                mr,
                recipient,
                smsc=self.smsc,
                sent=sent_at.replace(microsecond=0),
                done=_dt.datetime.now().astimezone().replace(microsecond=0),
                status=0x00 if delivered else 0x46,
            )
            ds = self.cnmi[3]
            if ds == 1:
                self._urc(f"+CDS: {self._tpdu_length(pdu)}", pdu)
            else:
                index = self._store("SR", pdu)
                if ds == 2:
                    self._urc(f'+CDSI: "SR",{index}')

    # ---------------------------------------------------------------- faults

    def fault(self, kind: str, *, times: int | None = None) -> None:
        """Break the modem. ``times`` limits command faults to the next n commands concerned.

        no_reply      swallow commands (no echo, no reply): a hung modem
        late_reply    answer a command only when the next one arrives (default: once), so the
                      reply lands on the following command, after the library's timeout
        unplug        close the ptys: the library gets EIO / SerialException; ``replug()``
        pin_required  the SIM asks for its PIN again (as after a power cut); PIN "1234" if none
        network_lost  no coverage: +CREG stat 0, +CSQ: 99,99, sending fails with +CMS ERROR: 331
        sim_busy      SIM commands answer +CME ERROR: 14
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._record("event", f"fault {kind}" + (f" x{times}" if times else ""))
            if kind == "unplug":
                self._unplug_ports()
                self.replugged.clear()
            elif kind == "pin_required":
                if self.pin is None:
                    self.pin, self._pin_from_fault = "1234", True
                was = self._registered()
                self.pin_state = "SIM PIN"
                if was:
                    self._urc(*self._creg_urcs())
            elif kind == "network_lost":
                was = self._registered()
                self._network_lost = True
                if was and self._creg_urcs():
                    self._urc(*self._creg_urcs())
            else:
                self._faults[kind] = times if times is not None else (1 if kind == "late_reply" else None)

    def clear_faults(self) -> None:
        """Back to health: coverage returns, the SIM is unlocked, commands answered again.

        A held late reply still lands on the next command; an unplugged modem needs ``replug()``.
        """
        with self._lock:
            was = self._registered()
            self._faults.clear()
            self._network_lost = False
            if self.pin_state != "READY":
                self.pin_state, self.pin_tries = "READY", 3
            if self._pin_from_fault:
                self.pin, self._pin_from_fault = None, False
            self._record("event", "faults cleared")
            if not was and self._registered() and self._creg_urcs():
                self._urc(*self._creg_urcs())

    # ---------------------------------------------------------------- voice PCM

    @property
    def voice_streaming(self) -> bool:
        with self._lock:
            return self._voice_on and self.in_call()

    @property
    def voice_received(self) -> bytes:
        """Everything the box wrote to the voice port while a call's audio was on."""
        with self._lock:
            return bytes(self._voice_received)

    def caller_says(self, pcm: bytes) -> None:
        """Queue 8 kHz 16-bit LE mono audio as the far end's voice."""
        with self._lock:
            self._caller_audio += pcm

    def caller_backlog(self) -> int:
        """Bytes of far-end audio queued and not yet sent to the box."""
        with self._lock:
            return len(self._caller_audio)

    def caller_still_speaking(self) -> bool:
        """Audio queued by :meth:`caller_says` has not all gone to the box yet."""
        with self._lock:
            return bool(self._caller_audio)

    def caller_presses(self, digits: str, *, on_ms: int = 100, off_ms: int = 100) -> None:
        """The caller presses keys: in-band DTMF on the voice channel, as GSM delivers it."""
        self.caller_says(dtmf_pcm(digits, on_ms=on_ms, off_ms=off_ms))

    def _next_frame(self) -> bytes:
        with self._lock:
            frame = bytes(self._caller_audio[:FRAME_BYTES])
            del self._caller_audio[:FRAME_BYTES]
        missing = (FRAME_BYTES - len(frame)) // 2
        if missing and self.caller_tone_hz:
            step = 2 * math.pi * self.caller_tone_hz / SAMPLE_RATE
            start = self._tone_phase
            frame += pcm16(int(8000 * math.sin(start + step * i)) for i in range(missing))
            self._tone_phase = (start + step * missing) % (2 * math.pi)
        elif missing:
            frame += bytes(2 * missing)
        return frame

    def _serve_voice(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += FRAME_SECONDS
            delay = deadline - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -5 * FRAME_SECONDS:
                deadline = time.monotonic()  # we were starved; do not burst to catch up
            self._close_retired(self._retired_voice)
            fd = self._voice_master
            if fd is None:
                continue
            streaming = self.voice_streaming
            try:
                while True:
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    if streaming:
                        with self._lock:
                            self._voice_received += data
            except OSError:
                pass  # EAGAIN: nothing written; EIO: voice port not open
            if streaming:
                try:
                    os.write(fd, self._next_frame())
                except BlockingIOError:
                    self.voice_dropped_frames += 1  # nobody reads the port: frames fall away
                except OSError:
                    pass


# --------------------------------------------------------------------------------------------
# python -m appliance.testing.modem --profile huawei


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.testing.modem",
        description="Run an emulated USB GSM modem on a pseudo-terminal. Prints the AT device "
        "path, then the voice (PCM) device path, and runs until Ctrl-C.",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="huawei")
    parser.add_argument("--pin", help="SIM PIN to require (default: none)")
    parser.add_argument("--operator", default="Plus", help="network name (default: Plus)")
    parser.add_argument("--signal", type=int, default=20, help="+CSQ rssi 0-31 (default: 20)")
    parser.add_argument("--debug", action="store_true", help="log every command and reply")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        emulator = ModemEmulator(args.profile, pin=args.pin, operator=args.operator, signal=args.signal)
    except (OSError, ValueError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(emulator.device, flush=True)
    print(emulator.voice_device, flush=True)
    try:
        device = emulator.device
        while not stop.wait(0.2):
            if emulator.plugged and emulator.device != device:
                device = emulator.device
                print(f"emulator: re-enumerated as {device}", file=sys.stderr, flush=True)
    finally:
        emulator.close()
    return 0
