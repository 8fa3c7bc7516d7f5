"""The core process: start, stop and wiring of the box's parts.

``Core`` builds one :class:`appliance.services.Services` (settings, database, clock, prompts, SIP
stack, lines, queues, GSM line, hold music, the active flow) and hands it to the parts that need
them: the call desk (``flow.desk``: one ``CallSession`` per call), the queue manager, the lines
(trunk dialling, test calls), the GSM line (``gsm.line``) and the notifier (``notify.worker``).
Nothing outside this file holds the core. The control socket (a unix socket speaking one JSON
object per line) is how the command line and the web UI ask for live state and actions.

Threads of the process, what each owns and how work crosses between them:

- **main / asyncio loop** ("MainThread"): owns every pjsua2 object and call. The SIP stack's
  event pump (``SipStack._poll``; pjsua2 with no worker threads, ``mainThreadOnly``) blocks in
  pjsip's poll for up to 10 ms at a time and then yields, so pjsua2 callbacks, flow sessions,
  queue dispatchers, timers, the GSM line's glue and the control socket all run here, without
  locks. The self-test call's schedule and runs (``selftest.call``) and the status LED and
  button (``panel``) live here too. The systemd watchdog is pinged from this loop.
- **pjmedia clock** (pjsua2's media clock thread, driven by the null sound device): runs the
  conference bridge 50 times a second; calls frame callbacks (``sip.gsmleg._VoicePort``), which
  only move bytes in and out of a voice channel's buffers — never block, log or raise there.
- **modem supervisor** ("modem-supervisor"): owns the serial port and the unmodified python-gsmmodem-new
  (which starts its own serial reader thread, "Thread-N (_readLoop)"); AT commands, PIN, health,
  the recovery ladder, the SMS outbox loop and delivery reports. The loop asks it for work by
  methods that return ``concurrent.futures.Future``; it reports with ``on_event``, which the GSM
  line forwards with ``loop.call_soon_threadsafe``. Its own database connection.
- **voice reader / writer** ("gsm-voice-reader", "gsm-voice-writer", one pair per GSM call): move PCM
  between the modem's voice port and the voice channel's buffers, and run the in-band DTMF
  detector; digits and loss go to the loop with ``call_soon_threadsafe``.
- **notifier** ("notifier"): e-mail of alarms and incoming SMS, alarm SMS into the outbox; its
  own database connection; wakes the modem thread to send.
- **executors**: ``asyncio.to_thread`` / the default executor for prompt synthesis (espeak-ng,
  sox), building the hold music at start and stopping the modem; results come back as awaitables.
- **resolver** ("resolve-trunk", daemon, short-lived): looks up the trunk's host names for the flood gate.
- **gpiozero** (its own threads): blinks the LED; a button edge is handed to the loop with the
  time it happened (``call_soon_threadsafe``).
- **Kamailio** is a child process (the desk phones' registrar), not a thread; it dies with us
  (PR_SET_PDEATHSIG).

The callback scheduler and the web UI's control client plug in the same way: built here with the
services object, run on the loop, reach the database through ``appliance.store``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from . import jsonline, systemd
from .clock import SYSTEM_CLOCK
from .errors import CentralkaError, ConfigError, FlowError, SipError
from .flow.checked import load_checked
from .flow.desk import CallDesk
from .flow.queue import QueueManager
from .flow.staff import load_staff_text, stored_staff_text
from .lines import CalleeRefused, Lines, NoLineAvailable, TestCalls, trunk_dialer
from .media.prompts import PromptLibrary
from .notify.worker import NotifyWorker
from .services import Prompts, Services
from .sip.kamailio import Kamailio
from .sip.kamailio import from_settings as kamailio_from_settings
from .flow.callbacks import CallbackBook
from .flow.voicemail import recover as recover_voicemails
from .sip.screen import FloodGate, sip_hosts
from .selftest.call import SelfTestCalls
from .sip.stack import SipStack
from .store import flows as store_flows
from .store.db import open_db
from .store.phones import list_phones
from .tollguard import DestinationRefused

log = logging.getLogger("centralka.core")

LINES_POLL_S = 10.0
# Prompts the engine plays whatever the flow says (rendered at load, not at a caller's first need).
ENGINE_PROMPTS = ("still_connecting", "invalid_choice", "to_operator", "all_lines_busy", "connecting", "selftest_ok")


class Core:
    def __init__(self, settings, *, rtp_port: int = 0, clock=SYSTEM_CLOCK, faults=None):
        self.settings = settings
        library = PromptLibrary(
            settings.prompt_dir,
            rate=settings.sip.clock_rate,
            voice=settings.prompts.voice,
            speed=settings.prompts.speed,
            language=settings.box.language,
        )
        self.services = Services(settings=settings, clock=clock, prompts=Prompts(library), faults=faults)
        self.desk = CallDesk(self.services)
        self.services.incoming = self.desk.incoming
        self.test_calls = TestCalls(self.services)
        self.services.selftest = self.selftest = SelfTestCalls(self.services)
        self.kamailio: Kamailio | None = None
        self.panel = None  # appliance.panel.Panel: the status LED and the button
        self.notifier: NotifyWorker | None = None
        self.rtp_port = rtp_port
        self.started_at = None
        self._server = None
        self._watchdog_task: asyncio.Task | None = None
        self._lines_task: asyncio.Task | None = None
        self.stopping = asyncio.Event()

    # --- flow ------------------------------------------------------------------------------
    def load_active_flow(self):
        svc = self.services
        row = store_flows.active_flow(svc.db)
        if row is None:
            raise FlowError("no call flow in the database: import one with `centralka flow import FILE`")
        flow, warnings = load_checked(
            row["text"], svc.prompts.library, source=f"flow {row['name']!r}", lang=self.settings.box.language
        )
        for w in warnings:
            log.warning("flow %s: %s", row["name"], w.message)
        # Render every prompt now, so the first caller does not wait for speech synthesis (R1).
        svc.prompts.forget()
        for node in flow.nodes.values():
            if node.params.get("prompt"):
                svc.prompts.path(node.params["prompt"], flow)
        for name in ENGINE_PROMPTS:
            svc.prompts.path(name, flow)
        svc.flow, svc.flow_name = flow, row["name"]
        log.info("call flow %r loaded (%d nodes)", row["name"], len(flow.nodes))
        if self.started_at is not None:
            self._check_queues_exist()

    def load_staff(self):
        """Agents and queues from the database (``centralka staff import``)."""
        svc = self.services
        text = stored_staff_text(svc.db)
        if text is None:
            return
        staff = load_staff_text(text, source="staff (database)")
        if svc.queues is None:
            svc.queues = QueueManager(svc, staff)
        else:
            svc.queues.apply(staff)
        log.info("staff: %d agents, %d queues", len(staff.agents), len(staff.queues))
        self._check_queues_exist()

    def _check_queues_exist(self):
        """A queue node naming a queue nobody configured would send every caller to the operator."""
        svc = self.services
        if svc.flow is None:
            return
        known = svc.queues.queues if svc.queues else {}
        for node in svc.flow.nodes.values():
            if node.type == "queue" and node.params["queue"] not in known:
                log.error(
                    "flow node %r uses queue %r, which is not configured (centralka staff import); "
                    "its callers will go to the operator",
                    node.id,
                    node.params["queue"],
                )

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self):
        s, svc = self.settings, self.services
        s.data_dir.mkdir(parents=True, exist_ok=True)
        svc.db = open_db(s.db_path)
        svc.callbacks = CallbackBook(svc)
        # A power cut in the middle of a voice message: made whole or removed before any call;
        # then the calls it cut off are closed (a patient who reached nobody: a missed call).
        await asyncio.to_thread(recover_voicemails, svc)
        svc.callbacks.calls_cut_off()
        svc.lines = Lines(svc.db, s, lang=s.box.language, clock=svc.clock)
        self.load_active_flow()
        svc.stack = SipStack(
            address=s.sip.address,
            port=s.sip.port,
            transports=s.sip.transports,
            max_calls=s.sip.max_calls,
            reserve_transfer_leg=s.sip.reserve_transfer_leg,
            clock_rate=s.sip.clock_rate,
            codecs=s.sip.codecs,
            rtp_port=self.rtp_port,
            log_path=s.data_dir / "pjsip.log",
            on_incoming=self.desk.incoming,
            on_trunk_state=lambda state: svc.lines.trunk_state(state, configured=s.trunk.enabled),
            on_limit=self.desk.refused_at_limit,
            gate=self._flood_gate(),
            max_message_bytes=s.sip.max_message_bytes,
            unconfirmed_per_source=s.sip.unconfirmed_per_source,
        )
        await svc.stack.start()
        if s.trunk.enabled:
            svc.stack.add_trunk(
                registrar=s.trunk.registrar,
                username=s.trunk.username,
                password=s.trunk.password,
                realm=s.trunk.realm,
                proxy=s.trunk.proxy,
                expires=s.trunk.register_expires_s,
                retry_min=s.trunk.retry_min_s,
                retry_max=s.trunk.retry_max_s,
            )
            svc.lines.set_dialer("trunk", trunk_dialer(svc))
        if s.kamailio.enabled:
            self._start_kamailio()
        self.load_staff()
        if svc.queues is None:
            self._check_queues_exist()
        self._start_gsm()
        self.notifier = NotifyWorker(s, svc.clock, wake_sms=svc.wake_sms)
        self.notifier.start(svc.db)
        try:
            from .media.holdmusic import ensure_hold_music

            # Building it the first time takes seconds: not on the event loop.
            music = await asyncio.to_thread(ensure_hold_music, s.data_dir, s.sip.clock_rate)
            svc.hold_music = svc.stack.shared_player(music)
            log.info("hold music: %s", music)
        except Exception as exc:  # noqa: BLE001 — no music is bad, no calls would be worse
            log.error("no hold music: %s", exc)
        self._server = await jsonline.serve(s.control.socket, self.control)
        self.started_at = svc.clock.time()
        self._lines_task = asyncio.get_running_loop().create_task(self._poll_lines(), name="lines-poll")
        self.selftest.start_schedule()
        self._start_panel()
        interval = systemd.watchdog_interval()
        if interval:
            # Pinged from the event loop itself: a loop stuck in a callback stops the pings and
            # systemd restarts the core.
            self._watchdog_task = asyncio.get_running_loop().create_task(self._watchdog(interval))

    def _start_kamailio(self):
        s = self.settings
        if s.kamailio.run_by not in ("core", "systemd"):
            raise ConfigError(f"kamailio.run_by: {s.kamailio.run_by!r}: write core or systemd")
        self.kamailio = kamailio_from_settings(s)
        if s.kamailio.run_by == "systemd":
            # Its own unit runs it (`centralka kamailio`): the credentials are kept current here.
            self.kamailio.update_phones(list_phones(self.services.db))
            self.services.registrar_host = self.kamailio.uri_host
            log.info("desk phones: Kamailio at %s is run by systemd", self.kamailio.uri_host)
            return
        try:
            self.kamailio.start(list_phones(self.services.db))
        except SipError as exc:
            # Desk phones are out, but trunk and direct calls must keep working (STYLE 5).
            log.error("desk phones unavailable: %s", exc)
            self.kamailio = None
            return
        self.services.registrar_host = self.kamailio.uri_host

    def _flood_gate(self) -> FloodGate:
        """The limit on the core's own SIP port; the box's Kamailio and the trunk are trusted."""
        s = self.settings
        try:
            gate = FloodGate(
                window_s=s.sip.flood_window_s,
                max_requests=s.sip.flood_max_requests,
                ban_s=s.sip.flood_ban_s,
                trusted=s.sip.trusted_sources,
                allow_from=s.sip.allow_from,
            )
        except ValueError as exc:
            raise ConfigError(f"sip.allow_from / sip.trusted_sources: {exc}") from exc
        if s.kamailio.enabled:
            gate.trust(s.kamailio.address, s.kamailio.port)
        if s.trunk.enabled:
            for uri in (s.trunk.registrar, s.trunk.proxy):
                for host in sip_hosts(uri):
                    gate.trust(host)
        return gate

    def _start_panel(self):
        from .panel import Panel

        try:
            self.panel = Panel(self.services)
            self.panel.start()
        except Exception:  # noqa: BLE001 — no LED or button is no reason to refuse calls
            log.exception("the status LED and button could not start")
            self.panel = None
            return
        self.services.lines.listeners.append(lambda *_: self.panel and self.panel.update())

    def _start_gsm(self):
        modem = self.settings.sections.get("modem") or {}
        if not modem.get("enabled", True):
            log.info("GSM modem disabled ([modem] enabled = false)")
            return
        from .gsm.line import GsmLine

        try:
            gsm = GsmLine(self.services)
            gsm.start()
            self.services.gsm = gsm
        except Exception:  # noqa: BLE001 — a broken modem must never stop SIP calls
            log.exception("the GSM line could not start; SIP calls go on without it")

    async def _poll_lines(self):
        """A line back up long enough is reported stable (Lines' alarm hysteresis)."""
        while True:
            await asyncio.sleep(LINES_POLL_S)
            try:
                self.services.lines.poll()
            except Exception:  # noqa: BLE001 — a failed look must not end the next
                log.exception("line poll failed")

    async def _watchdog(self, interval: float):
        while True:
            systemd.watchdog_ping()
            await asyncio.sleep(interval)

    async def stop(self):
        svc = self.services
        self.stopping.set()
        if self._server is not None:
            self._server.close()
        if svc.queues is not None:
            await svc.queues.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if svc.gsm is not None:
            await svc.gsm.stop()
        if svc.stack is not None:
            await svc.stack.hangup_all()
        # Sessions end once their calls are gone; none may outlive the SIP library.
        await self.selftest.stop()
        if self.panel is not None:
            await self.panel.stop()
        await self.desk.stop()
        await self.test_calls.stop()
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        if self._lines_task is not None:
            self._lines_task.cancel()
        svc.hold_music = None
        if svc.stack is not None:
            await svc.stack.stop()
        if self.kamailio is not None:
            self.kamailio.stop()
        sock = Path(self.settings.control.socket)
        if sock.exists():
            sock.unlink()

    async def run_until_signal(self, ready=None):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        if ready:
            ready(self)
        await self.stopping.wait()
        log.info("stopping")
        await self.stop()

    # --- live state ------------------------------------------------------------------------
    def status(self) -> dict:
        svc = self.services
        st = svc.stack
        return {
            "sip": {"address": st.address, "port": st.port, "transports": list(st.transports)},
            "calls_active": len(self.desk.sessions),
            "legs_in_use": st.legs_in_use(),
            "legs": st.legs_status(),
            "pjsua_calls": st.pjsua_calls(),
            "sip_guard": st.guard.status() if st.guard else None,
            "call_limit": st.max_calls,
            "build_call_limit": st.build_limit,
            "limit_hits": st.limit_hits,
            "pools": st.pools_status(),
            "lines": svc.lines.snapshot() if svc.lines else None,
            "gsm": svc.gsm.health() if svc.gsm else None,
            "trunk": {
                "state": st.trunk.state,
                "code": st.trunk.code,
                "reason": st.trunk.reason,
                "failures": st.trunk.failures,
                "next_retry_at": st.trunk.next_retry_at,
            },
            "flow": svc.flow_name,
            "desk_phones": (
                {"registrar": self.kamailio.uri_host, "running": self.kamailio.running} if self.kamailio else None
            ),
            "queues": svc.queues.status() if svc.queues else None,
            "selftest": self.selftest.status(),
            "panel": self.panel.status() if self.panel else None,
            "uptime_s": round(svc.clock.time() - (self.started_at or svc.clock.time()), 1),
            "pid": os.getpid(),
        }

    async def control(self, cmd: str, req: dict) -> dict:
        svc = self.services
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "reload":
            try:
                self.load_active_flow()
                self.load_staff()
            except FlowError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "flow": svc.flow_name}
        if cmd in ("pause", "unpause"):
            if svc.queues is None or not svc.queues.set_paused(str(req.get("agent")), cmd == "pause"):
                return {"ok": False, "error": f"no agent {req.get('agent')!r}"}
            return {"ok": True}
        if cmd == "reload-phones":
            if self.kamailio is None:
                return {"ok": False, "error": "the desk phone registrar is not enabled"}
            self.kamailio.update_phones(list_phones(svc.db))
            return {"ok": True}
        if cmd == "sms-wake":
            svc.wake_sms()
            return {"ok": True}
        if cmd == "test-call":
            try:
                return {"ok": True, **await self.test_calls.place(str(req.get("number", "")))}
            except CalleeRefused as exc:
                return {"ok": False, "error": f"the number answered: {exc} (not tried on another line)"}
            except (DestinationRefused, NoLineAvailable) as exc:
                return {"ok": False, "error": str(exc)}
        if cmd == "selftest-call":
            target = req.get("target") or None
            if target not in (None, "gsm", "trunk"):
                return {"ok": False, "error": f"target {target!r}: gsm or trunk"}
            try:
                task = self.selftest.start(target, str(req.get("trigger") or "manual"))
            except CentralkaError as exc:
                return {"ok": False, "error": str(exc)}
            if not req.get("wait", True):
                return {"ok": True, "started": True}
            return {"ok": True, **await asyncio.shield(task)}
        if cmd == "panel-test":
            if self.panel is None:
                return {"ok": False, "error": "the status LED and button are not running"}
            return {"ok": True, **self.panel.self_check()}
        if cmd == "modem-probe":
            sup = getattr(svc.gsm, "supervisor", None) if svc.gsm else None
            if sup is None:
                return {"ok": False, "error": "no GSM modem is configured"}
            try:
                seconds = await asyncio.wait_for(asyncio.wrap_future(sup.probe()), 20)
            except (CentralkaError, asyncio.TimeoutError) as exc:
                return {"ok": False, "error": str(exc) or "no answer within 20 s"}
            return {"ok": True, "seconds": round(seconds, 4)}
        if cmd == "callback-call":
            ref = str(req.get("ref", "")).strip().lower()
            if not (ref[:1] == "c" and ref[1:].isdigit()):
                return {"ok": False, "error": f"{ref!r} is not a callback request (c12: see `centralka callbacks`)"}
            if svc.queues is None:
                return {"ok": False, "error": "no queues are configured (centralka staff import)"}
            try:
                return {"ok": True, **svc.queues.call_back_now(int(ref[1:]), str(req.get("agent") or "") or None)}
            except CentralkaError as exc:
                return {"ok": False, "error": str(exc)}
        if cmd == "stop":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}
