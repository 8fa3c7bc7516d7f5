"""The modem supervisor: one thread owns the GSM modem, its serial port and the SMS outbox.

Everything that talks AT runs on that thread — health polls, SMS sending, reading incoming SMS,
answering and placing calls (``answer()``/``dial()``… queue a job and return a Future) — so the
library's blocking calls and its unsolicited lines never race each other. Other threads only read
``health()`` (a copy under a lock that is never held during serial I/O) and get events through
``on_event(name, data)``, called on the modem thread:

========================  =====================================================================
``ring``                  ``{call, caller, ton}`` once per incoming call; caller "" when withheld
``dialled``               ``{call, number}`` the modem took our ATD (before dial()'s Future is done)
``call_connected``        ``{call, direction}`` ("in" after answer(), "out" when the callee answers)
``call_ended``            ``{call, reason, direction}`` caller hung up before answer, remote/local hangup…
``health``                the health dict, on every change (``last_ok`` alone is not a change)
``sms_in``                ``{message_id, number, text}`` a whole incoming SMS, stored and joined
``alarm``                 ``{kind, text}`` also stored with appliance.alarms.raise_alarm
========================  =====================================================================

``call`` is the supervisor's own number for the call (1, 2, … for the life of the process): the
glue matches every event to the leg it belongs to, so an event of an earlier call (a late
``call_ended``) never ends a newer one, and a RING while we dial is a call of its own.

Recovery ladder for a modem that stops answering or vanishes (each step only when the one
before did not help): resync on the open port (drains late replies) → reopen the port →
``AT+CFUN=1,1`` and wait for the modem to come back → USB reset → alarm, then look for it every
``modem.probe_slow_s``. A reset may bring the modem back under another tty name: discovery runs
again whenever the known device path is gone.

SIM PIN: a PIN is sent only while the SIM asks for it, and a refused PIN is never sent again —
not by this supervisor, and not after a restart of the core (a marker file next to the database
remembers the refused PIN's hash): three wrong tries lock the SIM behind its PUK.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import serial
from gsmmodem.exceptions import CmeError, CommandError, TimeoutException

from ..alarms import raise_alarm
from ..errors import StoreError
from ..messages import Msg, msg
from ..store import inbox as store_inbox
from ..store.db import open_db
from . import discovery
from .modem import (
    CALL_RESULTS,
    VOICE_ON,
    Modem,
    ModemError,
    ModemHung,
    ModemSmsSender,
    ModemUnavailable,
    PinProblem,
    decode_pdu,
    parse_clip,
)
from .outbox import Outbox, delivery_from_tp_status, flush_incomplete, record_status_report, store_incoming

log = logging.getLogger("centralka.gsm.supervisor")

STATES = ("absent", "connecting", "up", "degraded", "down", "pin_error")

# [modem] settings and their defaults (documented in appliance/data/default.toml). Read
# defensively: the supervisor works with a Settings that has no [modem] section at all.
DEFAULTS = {
    "device": "",
    "pin": "",
    "number": "",
    "poll_s": 30.0,
    "ping_timeout_s": 3.0,
    "drain_s": 0.3,
    "clip_wait_s": 0.5,
    "call_poll_s": 1.0,
    "probe_s": 5.0,
    "probe_slow_s": 60.0,
    "reset_grace_s": 5.0,
    "reset_wait_s": 45.0,
    "sim_busy_reset_s": 120.0,
    "no_network_reset_s": 900.0,
    "weak_signal": 5,
    "flush_incomplete_s": 600.0,
}


@dataclass(frozen=True)
class ModemSettings:
    device: str
    pin: str
    number: str
    poll_s: float
    ping_timeout_s: float
    drain_s: float
    clip_wait_s: float
    call_poll_s: float
    probe_s: float
    probe_slow_s: float
    reset_grace_s: float
    reset_wait_s: float
    sim_busy_reset_s: float
    no_network_reset_s: float
    weak_signal: int
    flush_incomplete_s: float

    @classmethod
    def from_settings(cls, settings) -> "ModemSettings":
        values = dict(DEFAULTS)
        section = None
        if settings is not None and hasattr(settings, "sections"):
            section = settings.sections.get("modem")
        elif isinstance(settings, dict):
            section = settings.get("modem", settings)
        for key, default in DEFAULTS.items():
            if section and key in section:
                try:
                    values[key] = type(default)(section[key])
                except (TypeError, ValueError):
                    log.warning(
                        "modem.%s: %r is not a %s; using %r", key, section[key], type(default).__name__, default
                    )
        return cls(**values)


def _country(settings) -> str:
    try:
        return str(settings.box.country or "PL")
    except AttributeError:
        return "PL"


@dataclass
class _Call:
    direction: str  # "in" | "out"
    state: str  # "ringing" | "dialing" | "active"
    seq: int = field(default_factory=lambda: next(_CALL_SEQ))  # the events' ``call``
    caller: str | None = None
    ton: int | None = None
    announced: bool = False
    number: str = ""


_CALL_SEQ = itertools.count(1)


class ModemSupervisor:
    def __init__(
        self,
        *,
        device: str | None,
        voice_device: str | None,
        db_path,
        settings,
        pin: str | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        usb_reset: Callable[[], None] | None = None,
        clock=time.monotonic,
        wall=time.time,
        discover: Callable[[], "discovery.ModemPorts | None"] | None = None,
    ):
        self.settings = settings
        self.cfg = ModemSettings.from_settings(settings)
        self.db_path = db_path
        self.pin = pin if pin is not None else (self.cfg.pin or None)
        self.on_event = on_event
        self.clock = clock  # monotonic: the recovery ladder's and the poll's schedule
        self.wall = wall  # wall time: health "since", the outbox's stored times
        self._configured = (device, voice_device)
        self._usb_reset = usb_reset
        self._discover = discover or (lambda: discovery.find_modem(None))
        self._country = _country(settings)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inbox: queue.Queue = queue.Queue()
        now = self.wall()
        self._health = {
            "state": "absent",
            "reason": str(msg("modem.not_started")),
            "message": msg("modem.not_started").to_json(),
            "signal": None,
            "registered": False,
            "operator": None,
            "sim": None,
            "model": None,
            "profile": None,
            "device": device,
            "voice_device": voice_device,
            "since": now,
            "last_ok": None,
        }
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._device, self._voice_device = self._configured
        self._modem: Modem | None = None
        self._gen = 0
        self._db = None
        self._outbox: Outbox | None = None
        self._sender = ModemSmsSender(None)
        self._ever_connected = False
        self._step = "connect"  # where the next connection attempt stands on the ladder
        self._step_deadline = 0.0
        self._next_attempt = 0.0
        self._gone_alarmed = False
        self._pin_blocked = False
        self._usb_dev: str | None = None
        self._call: _Call | None = None
        self._ring_deadline: float | None = None
        self._next_call_poll = 0.0
        self._next_poll = 0.0
        self._last_poll = -1e9
        self._next_flush = 0.0
        self._sim_busy_since: float | None = None
        self._unregistered_since: float | None = None
        self._network_reset_done = False
        self._last_emitted: dict | None = None

    # ------------------------------------------------------------------ public API (any thread)
    def start(self, *, pin: str | None = None) -> None:
        """Start the modem thread. Never raises because of the modem: a missing one is "absent"."""
        if self._thread is not None and self._thread.is_alive():
            return
        if pin is not None:
            self.pin = pin
        self._stop.clear()
        self._inbox = queue.Queue()
        self._reset_run_state()
        self._set(
            state="connecting" if self._device else "absent",
            reason=msg("modem.starting") if self._device else msg("modem.none_configured"),
        )
        self._thread = threading.Thread(target=self._run, name="modem-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        self._inbox.put(("stop",))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the modem thread did not stop within %.0f s", timeout)

    def health(self) -> dict:
        with self._lock:
            return dict(self._health)

    def answer(self) -> Future:
        return self._submit(self._job_answer)

    def hangup(self) -> Future:
        return self._submit(self._job_hangup)

    def dial(self, number: str) -> Future:
        return self._submit(self._job_dial, number)

    def send_dtmf(self, digits: str) -> Future:
        return self._submit(self._job_dtmf, digits)

    def probe(self) -> Future:
        """A technician's check (`centralka hw-test`): one ``AT`` on the modem's own thread; the
        future gives the seconds the answer took, or the error."""
        return self._submit(self._job_probe)

    def wake(self) -> None:
        """An SMS was queued: send it now instead of at the next poll."""
        self._inbox.put(("wake",))

    def _submit(self, fn, *args) -> Future:
        future: Future = Future()
        if self._thread is None or not self._thread.is_alive():
            future.set_exception(ModemUnavailable("the modem supervisor is not running"))
        else:
            self._inbox.put(("job", fn, args, future))
        return future

    # ------------------------------------------------------------------ health and events
    def _set(self, **changes) -> None:
        if "reason" in changes:
            # A person reads the reason in the box's language: carried as a message id, with the
            # English text beside it for the log and ``centralka status``.
            m = changes["reason"]
            m = m if isinstance(m, Msg) else msg("modem.detail", detail=str(m))
            changes["reason"], changes["message"] = str(m), m.to_json()
        with self._lock:
            if "state" in changes and changes["state"] != self._health["state"]:
                changes["since"] = self.wall()
            self._health.update(changes)
            snapshot = dict(self._health)
        key = {k: v for k, v in snapshot.items() if k != "last_ok"}
        if key != self._last_emitted:
            self._last_emitted = key
            self._emit("health", snapshot)

    def _emit(self, name: str, data: dict) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, data)
        except Exception:  # the listener's trouble must not stop the modem
            log.exception("modem event %s: listener failed", name)

    def _alarm(self, kind: str, text: Msg, *, severity: str = "warning", source: str = "gsm") -> None:
        box = getattr(self.settings, "sections", {}).get("box") or {}
        if self._db is not None:
            try:
                raise_alarm(self._db, kind, source, text, severity=severity, lang=box.get("language", "pl"))
            except Exception:
                log.exception("could not store the alarm %s", kind)
        self._emit("alarm", {"kind": kind, "text": str(text)})

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self._db = open_db(self.db_path)
            self._outbox = Outbox(
                self._db,
                self._sender,
                self.settings,
                on_alarm=lambda sms_id, text: self._alarm("sms_uncertain", text, source=f"sms #{sms_id}"),
                clock=self.wall,
            )
        except Exception as exc:
            # Calls and health still work; SMS wait in the database for a later start.
            log.exception("modem supervisor: SMS outbox unavailable")
            self._outbox = None
            self._alarm("sms_outbox", msg("sms.outbox_broken", error=str(exc)), severity="critical")
        try:
            while not self._stop.is_set():
                try:
                    self._tick()
                except Exception as exc:  # a bug here must not end the thread that owns the modem
                    log.exception("modem supervisor step failed")
                    self._lost(msg("modem.internal_error", error=str(exc)), hung=False)
                    self._stop.wait(1.0)  # and must not spin if it repeats
                self._wait(self._sleep_time())
        finally:
            if self._call is not None and self._modem is not None:
                # A box shutting down must not leave a patient on a silent line (or the modem
                # in a call the next start knows nothing of).
                try:
                    self._modem.write("ATH", timeout=min(2.0, self.cfg.ping_timeout_s))
                except Exception as exc:  # the modem may be the reason we stop
                    log.warning("could not hang up the GSM call while stopping: %s", exc)
            self._close_modem("stopped")
            self._fail_jobs()
            if self._db is not None:
                try:
                    self._db.close()
                except Exception:
                    pass
            self._set(state="absent" if not self._device else "down", reason=msg("modem.stopped"))

    def _wait(self, timeout: float) -> None:
        try:
            item = self._inbox.get(timeout=max(0.0, min(timeout, 5.0)))
        except queue.Empty:
            return
        for _ in range(200):
            self._handle(item)
            if self._stop.is_set():
                return
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item) -> None:
        kind = item[0]
        try:
            if kind == "urc":
                if item[1] == self._gen and self._modem is not None:
                    self._on_urc(item[2])
            elif kind == "fatal":
                if item[1] == self._gen and self._modem is not None:
                    self._lost(msg("modem.port_failed", error=str(item[2])), hung=False)
            elif kind == "job":
                self._run_job(*item[1:])
        except (TimeoutException, ModemHung, serial.SerialException, OSError) as exc:
            self._lost(msg("modem.no_answer", error=type(exc).__name__), hung=isinstance(exc, TimeoutException))
        except Exception:
            log.exception("modem: handling %s failed", kind)

    def _sleep_time(self) -> float:
        now = self.clock()
        times = []
        if self._modem is None:
            if not self._pin_blocked:
                times.append(self._next_attempt)
        else:
            times += [self._next_poll, self._next_flush]
            if self._ring_deadline is not None:
                times.append(self._ring_deadline)
            if self._call is not None:
                times.append(self._next_call_poll)
            due = self._sms_due_in()
            if due is not None:
                times.append(now + due)
        return max(0.0, min(times, default=now + 5.0) - now)

    def _tick(self) -> None:
        now = self.clock()
        try:
            if self._modem is None:
                if not self._pin_blocked and now >= self._next_attempt:
                    self._attempt()
                return
            if self._ring_deadline is not None and now >= self._ring_deadline:
                self._announce_ring(lookup=True)
            if self._call is not None and now >= self._next_call_poll:
                self._poll_call()
            if self._modem is not None and now >= self._next_poll:
                self._poll()
            if self._modem is not None:
                self._send_sms()
            if self._modem is not None and now >= self._next_flush:
                self._next_flush = now + self.cfg.flush_incomplete_s
                self._flush_incomplete()
        except PinProblem as exc:
            self._pin_stop(str(exc))
        except ModemHung:
            self._lost(msg("modem.stopped_answering"), hung=False)  # its resync failed already
        except TimeoutException:
            self._lost(msg("modem.command_timed_out"), hung=True)
        except (serial.SerialException, OSError) as exc:
            self._lost(msg("modem.port_failed", error=str(exc)), hung=False)

    # ------------------------------------------------------------------ connecting and the ladder
    def _locate(self) -> discovery.ModemPorts | None:
        if self._device and os.path.exists(self._device):
            return discovery.ModemPorts(self._device, self._voice_device, None)
        try:
            found = self._discover()
        except Exception:
            log.exception("modem discovery failed")
            found = None
        if found is not None:
            if found.at != self._device:
                log.info("modem found at %s (voice %s)", found.at, found.voice)
            self._device, self._voice_device = found.at, found.voice
        return found

    def _attempt(self) -> None:
        ports = self._locate()
        if ports is not None and self._connect(ports):
            return
        if self._pin_blocked:
            return
        self._attempt_failed(found=ports is not None)

    def _attempt_failed(self, *, found: bool) -> None:
        now = self.clock()
        step = self._step
        if step == "connect":
            if not (found or self._ever_connected):
                # Never seen: nothing to reset, just keep looking.
                self._next_attempt = now + self.cfg.probe_s
                self._set(
                    state="absent",
                    reason=msg("modem.not_found_at", device=self._device) if self._device else msg("modem.not_found"),
                    device=self._device,
                    voice_device=self._voice_device,
                    registered=False,
                    signal=None,
                )
                return
            # A modem still booting may not answer yet: give it reset_wait_s before resetting it.
            self._step_deadline = self._step_deadline or now + self.cfg.reset_wait_s
            if now < self._step_deadline:
                self._next_attempt = now + self.cfg.probe_s
                return
            self._advance("cfun")
        elif step == "reopen":
            self._advance("cfun")
        elif step in ("cfun", "usb_reset"):
            if now < self._step_deadline:
                self._next_attempt = now + self.cfg.probe_s
            else:
                self._advance("usb_reset" if step == "cfun" else "gone")
        else:  # gone: look for it now and then
            self._next_attempt = now + self.cfg.probe_slow_s

    def _advance(self, step: str) -> None:
        now = self.clock()
        if step == "cfun":
            if self._device and os.path.exists(self._device) and self._send_reset_command():
                self._enter_step("cfun", msg("modem.resetting_cfun"))
                return
            step = "usb_reset"
        if step == "usb_reset":
            reset = self._usb_reset or self._default_usb_reset()
            if reset is not None:
                self._enter_step("usb_reset", msg("modem.resetting_usb"))
                try:
                    reset()
                except Exception as exc:
                    log.warning("USB reset of the modem failed: %s", exc)
                return
        self._step = "gone"
        self._next_attempt = now + self.cfg.probe_slow_s
        reason = msg("modem.gone_looking", seconds=self.cfg.probe_slow_s)
        self._set(
            state="absent" if not (self._device and os.path.exists(self._device)) else "down",
            reason=reason,
            registered=False,
            signal=None,
        )
        if not self._gone_alarmed:
            self._gone_alarmed = True
            self._alarm("modem_gone", msg("modem.gone"), severity="critical")

    def _enter_step(self, step: str, reason: Msg) -> None:
        now = self.clock()
        self._step = step
        self._step_deadline = now + self.cfg.reset_wait_s
        self._next_attempt = now + self.cfg.reset_grace_s
        self._set(state="down", reason=reason, registered=False, signal=None)

    def _send_reset_command(self) -> bool:
        """AT+CFUN=1,1 on a port nobody else has open. The reply does not matter: a hung modem
        may still act on it, and a modem that answers drops off the bus right after its OK."""
        try:
            with serial.Serial(
                self._device, 115200, timeout=self.cfg.ping_timeout_s, write_timeout=self.cfg.ping_timeout_s
            ) as port:
                port.reset_input_buffer()
                port.write(b"AT+CFUN=1,1\r")
                port.read_until(b"OK\r\n")
            return True
        except (serial.SerialException, OSError) as exc:
            log.info("could not send AT+CFUN=1,1: %s", exc)
            return False

    def _default_usb_reset(self):
        if self._usb_dev is None:
            return None
        usb_dev = self._usb_dev
        return lambda: discovery.reset_usb_device(usb_dev)

    def _connect(self, ports: discovery.ModemPorts) -> bool:
        self._gen += 1
        gen = self._gen
        self._set(
            state="connecting", reason=msg("modem.opening", device=ports.at), device=ports.at, voice_device=ports.voice
        )
        modem = Modem(
            ports.at,
            on_urc=lambda lines, g=gen: self._inbox.put(("urc", g, lines)),
            on_fatal=lambda exc, g=gen: self._inbox.put(("fatal", g, exc)),
            ping_timeout=self.cfg.ping_timeout_s,
            drain_s=self.cfg.drain_s,
        )
        try:
            modem.start(self._unlock_sim)
        except PinProblem as exc:
            modem.close()
            self._pin_stop(str(exc))
            return False
        except (ModemError, TimeoutException, CommandError, serial.SerialException, OSError, ValueError) as exc:
            modem.close()
            log.info("modem at %s: %s", ports.at, exc or type(exc).__name__)
            self._set(reason=msg("modem.no_answer_at", device=ports.at, error=str(exc) or type(exc).__name__))
            return False
        self._modem = modem
        self._sender.modem = modem
        self._usb_dev = discovery.usb_device_of(ports.at) or self._usb_dev
        if self._gone_alarmed:
            self._alarm("modem_back", msg("modem.back"), severity="info")
        self._ever_connected = True
        self._step, self._gone_alarmed = "reopen", False
        self._sim_busy_since = self._unregistered_since = None
        self._network_reset_done = False
        log.info("modem up: %s %s (%s) at %s", modem.manufacturer_name, modem.model_name, modem.profile, ports.at)
        self._set(model=modem.model_name, profile=modem.profile, device=ports.at, voice_device=ports.voice)
        self._poll()
        self._drain_stored_sms()
        return True

    def _close_modem(self, reason: str) -> None:
        modem, self._modem = self._modem, None
        self._sender.modem = None
        self._gen += 1  # whatever its reader thread still reports is stale
        if modem is not None:
            modem.close()
        if self._call is not None:
            call, self._call = self._call, None
            self._ring_deadline = None
            self._emit("call_ended", {"call": call.seq, "reason": f"modem lost: {reason}", "direction": call.direction})

    def _lost(self, reason: Msg, *, hung: bool) -> None:
        """The modem failed a command or its port died: first rung of the ladder."""
        modem = self._modem
        if modem is None:
            return
        if hung and modem.alive:
            try:
                modem.resync()
                log.info("modem answered again after a resync (%s)", reason)
                self._next_poll = self.clock()
                return
            except (ModemHung, TimeoutException, serial.SerialException, OSError):
                pass
        log.warning("modem lost: %s", reason)
        self._close_modem(reason)
        self._step = "reopen"
        self._next_attempt = self.clock()
        self._set(state="down", reason=msg("modem.reconnecting", reason=reason), registered=False, signal=None)

    def _reset_modem(self, reason: Msg) -> None:
        """The modem answers but is stuck (SIM busy for ever, no network for too long)."""
        log.warning("resetting the modem: %s", reason)
        modem = self._modem
        try:
            if modem is not None:
                modem.write("AT+CFUN=1,1", timeout=self.cfg.ping_timeout_s, parseError=False)
        except (TimeoutException, ModemHung, serial.SerialException, OSError):
            pass
        self._close_modem(reason)
        self._enter_step("cfun", msg("modem.reset_because", reason=reason))

    # ------------------------------------------------------------------ SIM PIN
    def _pin_marker(self) -> Path | None:
        if not self.db_path:
            return None
        return Path(self.db_path).with_name("modem-pin-refused")

    @staticmethod
    def _pin_hash(pin: str) -> str:
        return hashlib.sha256(("centralka-sim-pin:" + pin).encode()).hexdigest()

    def _unlock_sim(self, modem: Modem, state: str) -> None:
        if state == "SIM PIN":
            if not self.pin:
                raise self._pin_alarm(msg("sim.pin_missing"))
            marker = self._pin_marker()
            if marker is not None and marker.exists() and marker.read_text().strip() == self._pin_hash(self.pin):
                raise self._pin_alarm(msg("sim.pin_refused_before"))
            try:
                modem.write(f'AT+CPIN="{self.pin}"', timeout=max(10.0, self.cfg.ping_timeout_s))
            except CmeError as exc:
                if marker is not None:
                    try:
                        marker.write_text(self._pin_hash(self.pin) + "\n")
                    except OSError:
                        log.exception("cannot remember the refused PIN")
                raise self._pin_alarm(msg("sim.pin_refused", code=exc.code)) from exc
            if marker is not None and marker.exists():
                marker.unlink(missing_ok=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not self._stop.is_set():
                if modem.sim_state() == "READY":
                    log.info("SIM unlocked with its PIN")
                    return
                time.sleep(0.2)
            raise ModemError("the SIM took the PIN but did not become ready")
        if state == "SIM PUK":
            raise self._pin_alarm(msg("sim.puk"))
        if state in ("SIM BUSY", "UNKNOWN") or state.startswith("CME"):
            raise ModemError(f"SIM not ready ({state})")
        if state in ("NO SIM", "SIM FAILURE"):
            raise ModemError("no SIM card" if state == "NO SIM" else "the SIM card failed")
        raise self._pin_alarm(msg("sim.other_code", code=state))

    def _pin_alarm(self, text: Msg) -> PinProblem:
        self._pin_blocked = True
        self._set(state="pin_error", reason=text, registered=False, signal=None)
        self._alarm("modem_pin", text, severity="critical")
        return PinProblem(str(text))

    def _pin_stop(self, reason: str) -> None:
        self._pin_blocked = True
        self._close_modem("SIM PIN problem")
        self._set(state="pin_error", reason=reason, registered=False, signal=None)

    # ------------------------------------------------------------------ health poll
    def _poll(self) -> None:
        modem = self._modem
        now = self.clock()
        self._next_poll = now + self.cfg.poll_s
        sim = modem.sim_state()
        if sim in ("SIM PIN", "SIM PUK", "PH-SIM PIN", "SIM PIN2", "SIM PUK2"):
            self._unlock_sim(modem, sim)  # once; PinProblem ends in pin_error
            sim = modem.sim_state()
        if sim == "SIM BUSY":
            self._sim_busy_since = self._sim_busy_since or now
            if now - self._sim_busy_since >= self.cfg.sim_busy_reset_s:
                self._reset_modem(msg("modem.sim_busy_for", seconds=round(now - self._sim_busy_since)))
                return
        else:
            self._sim_busy_since = None
        signal = modem.signal()
        registered = modem.registered()
        operator = modem.operator() if registered else None
        self._last_poll = now
        if registered:
            self._unregistered_since, self._network_reset_done = None, False
        else:
            self._unregistered_since = self._unregistered_since or now
            lost_for = now - self._unregistered_since
            if (
                self.cfg.no_network_reset_s > 0
                and lost_for >= self.cfg.no_network_reset_s
                and not self._network_reset_done
            ):
                self._network_reset_done = True
                self._reset_modem(msg("modem.no_network_for", seconds=round(lost_for)))
                return
        if sim == "SIM BUSY":
            state, reason = "degraded", msg("modem.sim_busy")
        elif sim != "READY":
            state, reason = "down", msg("modem.sim_state", state=sim)
        elif not registered:
            state, reason = "down", msg("modem.no_coverage")
        elif signal is not None and signal < self.cfg.weak_signal:
            state, reason = "degraded", msg("modem.weak_signal", signal=signal)
        else:
            state, reason = "up", msg("modem.registered_on", operator=operator) if operator else msg("modem.registered")
        self._set(
            state=state,
            reason=reason,
            signal=signal,
            registered=registered,
            operator=operator,
            sim=sim,
            last_ok=self.wall(),
        )

    def _ready_for_sms(self) -> bool:
        h = self.health()
        return h["registered"] and h["sim"] == "READY" and h["state"] in ("up", "degraded")

    # ------------------------------------------------------------------ SMS out
    def _sms_due_in(self) -> float | None:
        if self._outbox is None or self._modem is None or not self._ready_for_sms():
            return None
        try:
            return self._outbox.next_due_in()
        except Exception:
            log.exception("outbox: next_due_in failed")
            return None

    def _send_sms(self) -> None:
        due = self._sms_due_in()
        if due is None or due > 0:
            return
        # Look before handing a message over: a hung modem, a SIM asking for its PIN or a lost
        # network is found here, not by an SMS attempt (which would cost the message a try).
        if self.clock() - self._last_poll > self.cfg.poll_s / 2:
            self._poll()
        else:
            sim, registered = self._modem.sim_state(), self._modem.registered()
            if sim != "READY" or not registered:
                self._poll()
        if self._modem is None or not self._ready_for_sms():
            return
        try:
            self._outbox.send_due(limit=1)
        except (StoreError, sqlite3.Error) as exc:  # the database, not the modem: try again later
            log.error("SMS outbox: %s", exc)
            self._next_poll = self.clock() + self.cfg.poll_s
            self._stop.wait(1.0)
        if self._modem is not None and self._modem.dirty:
            self._next_poll = self.clock()  # something timed out while sending: look at once

    # ------------------------------------------------------------------ SMS in, delivery reports
    def _drain_stored_sms(self) -> None:
        """SMS and reports that reached the modem while nobody listened: the read memory, then
        the status-report memory ("SR", where +CNMI ds=2 keeps delivery reports while the core
        is down — the evidence that resolves an SMS left uncertain by a crash)."""
        try:
            stored = self._modem.list_stored()
        except CommandError as exc:
            log.info("cannot list stored SMS: %s", exc)
            stored = []
        for index, pdu in stored:
            self._incoming_pdu(pdu, index=index)
        if self._modem is None:
            return
        # (the library keeps the memory name it chose at connect with its quotes: '"ME"')
        usual = (self._modem._smsMemReadDelete or "").strip('"')
        try:
            self._modem._setSmsMemory(readDelete="SR")
            reports = self._modem.list_stored()
        except CommandError as exc:
            log.info("no status-report memory to read: %s", exc)
            reports = []
        for index, pdu in reports:
            self._incoming_pdu(pdu, index=index, memory="SR")
        if self._modem is not None and usual and self._modem._smsMemReadDelete != usual:
            try:
                self._modem._setSmsMemory(readDelete=usual)
            except CommandError as exc:
                log.warning("cannot switch back to SMS memory %s: %s", usual, exc)

    def _incoming_pdu(self, pdu: str, *, index: int | None = None, memory: str | None = None) -> None:
        try:
            data = decode_pdu(pdu)
        except Exception as exc:
            log.warning("an SMS PDU could not be decoded (%s); left on the modem: %s", exc, pdu)
            return
        kind = data.get("type")
        if kind == "SMS-STATUS-REPORT":
            self._report(data)
        elif kind == "SMS-DELIVER":
            result = store_incoming(
                self._db,
                data.get("number") or "",
                data.get("text") or "",
                data.get("udh"),
                sent_at=data.get("time"),
                country=self._country,
            )
            if result.status == "complete":
                self._announce_sms(result.message_id)
        else:
            log.info("ignoring a stored %s", kind)
        if index is not None:
            self._modem.delete_stored(index, memory)

    def _announce_sms(self, message_id: int) -> None:
        row = store_inbox.get_message(self._db, message_id)
        if row:
            self._emit("sms_in", {"message_id": message_id, "number": row["number"], "text": row["text"]})

    def _report(self, data: dict) -> None:
        sms_id = record_status_report(
            self._db,
            data["reference"],
            delivery_from_tp_status(int(data["status"])),
            at=data.get("discharge"),
            number=data.get("number"),
        )
        log.info("delivery report MR %s (status %s) -> sms #%s", data["reference"], data["status"], sms_id)

    def _flush_incomplete(self) -> None:
        if self._db is None:
            return
        for message_id in flush_incomplete(self._db, country=self._country):
            self._announce_sms(message_id)

    # ------------------------------------------------------------------ unsolicited lines
    def _on_urc(self, lines: tuple) -> None:
        head = lines[0].strip()
        if head == "RING" or head.startswith("+CRING"):
            self._on_ring()
        elif head.startswith("+CLIP:"):
            self._on_clip(head)
        elif head in CALL_RESULTS or head.startswith(("VOICE CALL: END", "^CEND:")):
            self._call_gone(head)
        elif head.startswith(("VOICE CALL: BEGIN", "^CONN:")):
            self._call_up()
        elif head.startswith("+CMTI:"):
            memory, index = _stored_at(head)
            pdu = self._modem.read_stored(index, memory)
            if pdu is not None:
                self._incoming_pdu(pdu, index=index, memory=memory)
        elif head.startswith(("+CMT:", "+CDS:")) and len(lines) > 1:
            self._incoming_pdu(lines[1].strip())
        elif head.startswith("+CDSI:"):
            memory, index = _stored_at(head)
            pdu = self._modem.read_stored(index, memory)
            if pdu is not None:
                self._incoming_pdu(pdu, index=index, memory=memory)
        elif head.startswith("+CREG:"):
            fields = [f.strip() for f in head.split(":", 1)[1].split(",")]
            registered = fields[0] in ("1", "5")
            if registered != self.health()["registered"]:
                self._next_poll = self.clock()  # look properly (operator, signal) right away
        elif head.startswith("+CPIN:"):
            self._next_poll = self.clock()
        else:
            log.debug("unsolicited: %s", lines)

    # ------------------------------------------------------------------ calls
    def _on_ring(self) -> None:
        if self._call is None:
            self._call = _Call("in", "ringing")
            self._next_call_poll = self.clock() + self.cfg.call_poll_s
        call = self._call
        if call.direction == "in" and call.state == "ringing" and not call.announced and self._ring_deadline is None:
            # +CLIP may come in a read of its own, a little after RING: wait for it briefly.
            self._ring_deadline = self.clock() + self.cfg.clip_wait_s

    def _on_clip(self, line: str) -> None:
        parsed = parse_clip(line, ucs2=bool(self._modem and self._modem._smsEncoding == "UCS2"))
        if parsed is None:
            return
        if self._call is None:
            self._call = _Call("in", "ringing")
            self._next_call_poll = self.clock() + self.cfg.call_poll_s
        call = self._call
        if call.direction != "in":
            return
        call.caller, call.ton = parsed
        if call.state == "ringing" and not call.announced:
            self._announce_ring()

    def _announce_ring(self, *, lookup: bool = False) -> None:
        call = self._call
        self._ring_deadline = None
        if call is None or call.announced:
            return
        if lookup and call.caller is None and self._modem is not None:
            # No +CLIP at all: the call list has the number on most modems.
            for entry in self._clcc():
                if entry["dir"] == 1 and entry["stat"] in (4, 5):
                    call.caller, call.ton = parse_clip(f'+CLIP: "{entry["number"]}",{entry["ton"]}') or ("", None)
                    break
        call.announced = True
        self._emit("ring", {"call": call.seq, "caller": call.caller or "", "ton": call.ton})

    def _call_gone(self, why: str) -> None:
        call = self._call
        if call is None:
            return
        if call.direction == "in" and call.state == "ringing":
            if not call.announced:
                self._announce_ring()
            reason = "caller hung up before answer"
        elif why == "BUSY":
            reason = "busy"
        elif why == "NO ANSWER":
            reason = "no answer"
        elif why == "local":
            reason = "local hangup"
        elif call.state != "active":
            reason = "not answered"
        else:
            reason = "remote hangup"
        self._call, self._ring_deadline = None, None
        self._emit("call_ended", {"call": call.seq, "reason": reason, "direction": call.direction})

    def _call_up(self) -> None:
        call = self._call
        if call is None or call.state == "active":
            return
        call.state = "active"
        self._voice_on()
        self._emit("call_connected", {"call": call.seq, "direction": call.direction})

    def _voice_on(self) -> None:
        modem = self._modem
        command = VOICE_ON.get(modem.profile or "") if modem else None
        if command and modem.profile == "quectel" and (self._voice_device or "").startswith("alsa:"):
            command = "AT+QPCMV=1,2"  # the call's audio on the module's USB sound card (UAC)
        if command:
            try:
                modem.write(command, timeout=self.cfg.ping_timeout_s)
            except CommandError as exc:
                log.warning("voice channel not switched on (%s): %s", command, exc)

    def _clcc(self) -> list[dict]:
        out = []
        for line in self._modem.write("AT+CLCC", timeout=self.cfg.ping_timeout_s):
            if not line.startswith("+CLCC:"):
                continue
            fields = [f.strip() for f in line.split(":", 1)[1].split(",")]
            try:
                out.append(
                    {
                        "id": int(fields[0]),
                        "dir": int(fields[1]),
                        "stat": int(fields[2]),
                        "number": fields[5].strip('"') if len(fields) > 5 else "",
                        "ton": int(fields[6]) if len(fields) > 6 and fields[6].isdigit() else None,
                    }
                )
            except (ValueError, IndexError):
                continue
        return out

    def _poll_call(self) -> None:
        """Call state from AT+CLCC: Quectel reports nothing when a dialled call is answered, and a
        caller who gives up may leave only a NO CARRIER that was lost."""
        self._next_call_poll = self.clock() + self.cfg.call_poll_s
        call = self._call
        entries = self._clcc()
        if self._call is not call or call is None:
            return
        if not entries:
            self._call_gone("gone")
        elif (
            call.direction == "out"
            and call.state != "active"
            and any(e["dir"] == 0 and e["stat"] == 0 for e in entries)
        ):
            self._call_up()

    def _run_job(self, fn, args, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        if self._modem is None:
            h = self.health()
            future.set_exception(ModemUnavailable(f"the GSM modem is {h['state']}: {h['reason']}"))
            return
        try:
            result = fn(*args)
        except BaseException as exc:
            future.set_exception(exc)
            if isinstance(exc, (TimeoutException, ModemHung, serial.SerialException, OSError)):
                raise
            return
        future.set_result(result)

    def _fail_jobs(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "job" and item[3].set_running_or_notify_cancel():
                item[3].set_exception(ModemUnavailable("the modem supervisor stopped"))

    def _job_answer(self) -> None:
        call = self._call
        if call is None or call.direction != "in" or call.state != "ringing":
            raise ModemError("no call is ringing")
        if not call.announced:
            self._announce_ring()
        try:
            self._modem.write("ATA", timeout=15)
        except CommandError as exc:
            if "NO CARRIER" in str(exc):
                self._call_gone("NO CARRIER")
                raise ModemError("the caller hung up before the call was answered") from exc
            raise
        self._call_up()

    def _job_hangup(self) -> None:
        if self._call is None:
            return
        try:
            self._modem.write("ATH", timeout=10)
        except CommandError as exc:
            log.info("ATH: %s", exc)
        self._call_gone("local")

    def _job_dial(self, number: str) -> dict:
        if self._call is not None:
            raise ModemError("the modem is already on a call")
        if not self.health()["registered"]:
            raise ModemUnavailable("the modem is not registered on the network")
        if not number or any(c not in "+0123456789*#" for c in number):
            raise ValueError(f"cannot dial {number!r}")
        self._modem.write(f"ATD{number};", timeout=15)
        self._call = call = _Call("out", "dialing", number=number)
        self._next_call_poll = self.clock() + min(0.5, self.cfg.call_poll_s)
        # Before the Future: the glue knows the call's number before any event of it arrives.
        self._emit("dialled", {"call": call.seq, "number": number})
        return {"number": number, "call": call.seq}

    def _job_probe(self) -> float:
        modem = self._modem
        if modem is None:
            raise ModemUnavailable(str(self.health().get("reason") or "no modem is connected"))
        started = time.monotonic()
        modem.write("AT", timeout=self.cfg.ping_timeout_s)
        return time.monotonic() - started

    def _job_dtmf(self, digits: str) -> None:
        call = self._call
        if call is None or call.state != "active":
            raise ModemError("no call is connected")
        modem = self._modem
        call_id = next((e["id"] for e in self._clcc() if e["stat"] == 0), 1)
        for digit in digits:
            if digit not in "0123456789*#ABCD":
                raise ValueError(f"not a DTMF digit: {digit!r}")
            if modem.profile == "huawei":
                modem.write(f"AT^DTMF={call_id},{digit}", timeout=self.cfg.ping_timeout_s + 2)
            else:
                modem.write(f"AT+VTS={digit}", timeout=self.cfg.ping_timeout_s + 2)


def _stored_at(line: str) -> tuple[str | None, int]:
    """(memory, index) from +CMTI: "ME",3 or +CDSI: "SR",0."""
    body = line.split(":", 1)[1]
    parts = [p.strip().strip('"') for p in body.split(",")]
    return (parts[0] or None, int(parts[-1]))
