"""The core process: owns the SIP stack, the database, the prompts and every call session.

Runs one asyncio loop. pjsua2 callbacks, flow sessions, timers and the control socket all run on
it, so there are no locks. The control socket (a unix socket speaking one JSON object per line)
is how the command line and the web UI ask for live state and actions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import jsonline, systemd
from .errors import CentralkaError, ConfigError, FlowError, SipError
from .flow.checked import load_checked
from .flow.engine import CallSession
from .flow.queue import QueueManager
from .flow.staff import load_staff_text, stored_staff_text
from .lines import CalleeRefused, LineFailed, Lines, NoLineAvailable
from .media.prompts import PromptLibrary, wav_duration
from .numbers import normalise_caller, user_part
from .sip.kamailio import Kamailio
from .sip.screen import FloodGate, sip_hosts
from .sip.stack import SipStack
from .store import calls as store_calls
from .store import flows as store_flows
from .store.db import open_db, utcnow
from .store.phones import list_phones
from .tollguard import DestinationRefused

log = logging.getLogger("centralka.core")

NOTIFY_EVERY_S = 5.0  # how often pending alarms / incoming SMS are looked at for e-mail and SMS
ALARM_SMS_LOOKBACK_S = 3600  # after a restart, alarms this recent are (re)considered for SMS
# Final answers that come from the callee's side, not from a broken line: no failover for these.
CALLEE_SAID_NO = {404, 410, 480, 484, 486, 600, 603, 604}


class Core:
    def __init__(self, settings, *, rtp_port: int = 0):
        self.settings = settings
        self.db = None
        self.flow = None
        self.flow_name = None
        self.stack: SipStack | None = None
        self.kamailio: Kamailio | None = None
        self.queues: QueueManager | None = None
        self.hold_music = None
        self.lines: Lines | None = None
        self.gsm = None  # GsmLine once started
        self.sessions: dict[int, CallSession] = {}
        self.tasks: set[asyncio.Task] = set()
        self.rtp_port = rtp_port
        self.started_at = None
        self.prompts = PromptLibrary(
            settings.prompt_dir,
            rate=settings.sip.clock_rate,
            voice=settings.prompts.voice,
            speed=settings.prompts.speed,
            language=settings.box.language,
        )
        self._durations: dict[str, float] = {}
        self._prompt_paths: dict[tuple[str, int], Path] = {}
        self._server = None
        self.stopping = asyncio.Event()

    # --- prompts ---------------------------------------------------------------------------
    def prompt_path(self, name: str, flow) -> Path:
        key = (name, id(flow))
        path = self._prompt_paths.get(key)
        if path is None or not path.exists():
            path = self.prompts.path(name, flow.prompts)
            self._prompt_paths[key] = path
        return path

    def prompt_duration(self, path: Path) -> float:
        d = self._durations.get(str(path))
        if d is None:
            d = self._durations[str(path)] = wav_duration(path)
        return d

    # --- flow ------------------------------------------------------------------------------
    def load_active_flow(self):
        row = store_flows.active_flow(self.db)
        if row is None:
            raise FlowError("no call flow in the database: import one with `centralka flow import FILE`")
        flow, warnings = load_checked(
            row["text"], self.prompts, source=f"flow {row['name']!r}", lang=self.settings.box.language
        )
        for w in warnings:
            log.warning("flow %s: %s", row["name"], w.message)
        # Render every prompt now, so the first caller does not wait for speech synthesis (R1).
        self._prompt_paths.clear()
        for node in flow.nodes.values():
            if node.params.get("prompt"):
                self.prompt_path(node.params["prompt"], flow)
        for name in ("still_connecting", "invalid_choice", "to_operator", "all_lines_busy", "connecting"):
            self.prompt_path(name, flow)
        self.flow, self.flow_name = flow, row["name"]
        log.info("call flow %r loaded (%d nodes)", row["name"], len(flow.nodes))
        if self.started_at is not None:
            self._check_queues_exist()

    def load_staff(self):
        """Agents and queues from the database (``centralka staff import``)."""
        text = stored_staff_text(self.db)
        if text is None:
            return
        staff = load_staff_text(text, source="staff (database)")
        if self.queues is None:
            self.queues = QueueManager(self, staff)
        else:
            self.queues.apply(staff)
        log.info("staff: %d agents, %d queues", len(staff.agents), len(staff.queues))
        self._check_queues_exist()

    def _check_queues_exist(self):
        """A queue node naming a queue nobody configured would send every caller to the operator."""
        if self.flow is None:
            return
        known = self.queues.queues if self.queues else {}
        for node in self.flow.nodes.values():
            if node.type == "queue" and node.params["queue"] not in known:
                log.error(
                    "flow node %r uses queue %r, which is not configured (centralka staff import); "
                    "its callers will go to the operator",
                    node.id,
                    node.params["queue"],
                )

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self):
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = open_db(s.db_path)
        self.lines = Lines(self.db, s, lang=s.box.language)
        self.load_active_flow()
        self.stack = SipStack(
            address=s.sip.address,
            port=s.sip.port,
            transports=s.sip.transports,
            max_calls=s.sip.max_calls,
            reserve_transfer_leg=s.sip.reserve_transfer_leg,
            clock_rate=s.sip.clock_rate,
            codecs=s.sip.codecs,
            rtp_port=self.rtp_port,
            log_path=s.data_dir / "pjsip.log",
            on_incoming=self.on_incoming,
            on_trunk_state=self.on_trunk_state,
            on_limit=self.on_limit,
            gate=self._flood_gate(),
            max_message_bytes=s.sip.max_message_bytes,
            unconfirmed_per_source=s.sip.unconfirmed_per_source,
        )
        await self.stack.start()
        if s.trunk.enabled:
            self.stack.add_trunk(
                registrar=s.trunk.registrar,
                username=s.trunk.username,
                password=s.trunk.password,
                realm=s.trunk.realm,
                proxy=s.trunk.proxy,
                expires=s.trunk.register_expires_s,
                retry_min=s.trunk.retry_min_s,
                retry_max=s.trunk.retry_max_s,
            )
            self.lines.set_dialer("trunk", self._dial_trunk)
        if s.kamailio.enabled:
            self.kamailio = Kamailio(
                s.data_dir / "kamailio",
                address=s.kamailio.address,
                port=s.kamailio.port,
                core_address=s.sip.address,
                core_port=s.sip.port,
                ban_seconds=s.kamailio.ban_seconds,
                pike_window_s=s.kamailio.pike_window_s,
                pike_max_requests=s.kamailio.pike_max_requests,
            )
            try:
                self.kamailio.start(list_phones(self.db))
            except SipError as exc:
                # Desk phones are out, but trunk and direct calls must keep working (STYLE 5).
                log.error("desk phones unavailable: %s", exc)
                self.kamailio = None
        self.load_staff()
        if self.queues is None:
            self._check_queues_exist()
        self._start_gsm()
        self._start_notifier()
        try:
            from .media.holdmusic import ensure_hold_music

            # Building it the first time takes seconds: not on the event loop.
            music = await asyncio.to_thread(ensure_hold_music, s.data_dir, s.sip.clock_rate)
            self.hold_music = self.stack.shared_player(music)
            log.info("hold music: %s", music)
        except Exception as exc:  # noqa: BLE001 — no music is bad, no calls would be worse
            log.error("no hold music: %s", exc)
        await self._start_control()
        self.started_at = time.time()
        interval = systemd.watchdog_interval()
        if interval:
            # Pinged from the event loop itself: a loop stuck in a callback stops the pings and
            # systemd restarts the core.
            self.tasks.add(asyncio.get_running_loop().create_task(self._watchdog(interval)))

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

    def _start_gsm(self):
        modem = self.settings.sections.get("modem") or {}
        if not modem.get("enabled", True):
            log.info("GSM modem disabled ([modem] enabled = false)")
            return
        from .gsmline import GsmLine

        try:
            self.gsm = GsmLine(self)
            self.gsm.start()
        except Exception:  # noqa: BLE001 — a broken modem must never stop SIP calls
            log.exception("the GSM line could not start; SIP calls go on without it")
            self.gsm = None

    def _start_notifier(self):
        """E-mail for alarms and incoming SMS ([mail]) and alarm SMS ([alarms]); its own thread
        and database connection, because an SMTP server can take seconds to answer."""
        self._notify_stop = threading.Event()
        # Recent alarms are looked at again after a restart (a crash may have come before they
        # were texted); the dedupe key of each alarm SMS makes that safe.
        since = (datetime.now(timezone.utc) - timedelta(seconds=ALARM_SMS_LOOKBACK_S)).isoformat(
            timespec="milliseconds"
        )
        row = self.db.execute("SELECT max(id) FROM alarms WHERE at < ?", [since]).fetchone()
        self._alarm_sms_since = row[0] or 0
        self._notify_thread = threading.Thread(target=self._notify_loop, name="notifier", daemon=True)
        self._notify_thread.start()

    def _notify_loop(self):
        from .notify.mail import Notifier

        db = open_db(self.settings.db_path)
        try:
            notifier = Notifier(db, self.settings)
        except CentralkaError as exc:
            # Mail is broken, but alarm SMS must still go out.
            log.error("e-mail notifications unavailable: %s", exc)
            notifier = None
        while not self._notify_stop.wait(NOTIFY_EVERY_S):
            for job in ((lambda: notifier.run_once()) if notifier else None, lambda: self._sms_alarms(db)):
                if job is None:
                    continue
                try:
                    job()  # the notifier keeps its own backoff after a mail failure
                except Exception:  # noqa: BLE001 — the notifier must outlive any one failure
                    log.exception("notifier round failed")

    def _sms_alarms(self, db):
        """Alarms of the configured severities also go by SMS to the admin's mobiles ([alarms])."""
        from .gsm.outbox import SmsRefused, queue_sms

        cfg = self.settings.sections.get("alarms") or {}
        numbers = cfg.get("sms_to") or []
        if not numbers:
            return
        severities = cfg.get("sms_severities") or ["critical"]
        since = self._alarm_sms_since
        rows = list(
            db.query(
                f"SELECT id, text FROM alarms WHERE id > ? AND severity IN "
                f"({','.join('?' * len(severities))}) ORDER BY id",
                [since, *severities],
            )
        )
        for row in rows:
            text = f"Centralka: {row['text']}"
            for number in numbers:
                try:
                    # The key makes this idempotent: a restart never texts the same alarm twice.
                    queue_sms(
                        db,
                        number,
                        text[:300],
                        kind="alarm",
                        settings=self.settings,
                        dedupe_key=f"alarm:{row['id']}:{number}",
                    )
                except SmsRefused as exc:
                    log.warning("alarm #%s not sent by SMS to %s: %s", row["id"], number, exc)
            self._alarm_sms_since = row["id"]
        if rows and self.gsm is not None:
            self.gsm.wake()

    async def _watchdog(self, interval: float):
        while True:
            systemd.watchdog_ping()
            await asyncio.sleep(interval)

    async def stop(self):
        self.stopping.set()
        if self._server is not None:
            self._server.close()
        if self.queues is not None:
            await self.queues.stop()
        if getattr(self, "_notify_stop", None) is not None:
            self._notify_stop.set()
        if self.gsm is not None:
            await self.gsm.stop()
        if self.stack is not None:
            await self.stack.hangup_all()
        # Sessions end once their calls are gone; none may outlive the SIP library.
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.hold_music = None
        if self.stack is not None:
            await self.stack.stop()
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

    # --- calls -----------------------------------------------------------------------------
    def resolve_target(self, target: str) -> str:
        """A flow target as a dialable SIP URI: ``ext:201`` is the desk phone registered as 201."""
        if target.startswith("ext:"):
            if self.kamailio is None:
                raise SipError(f"{target}: desk phones need the registrar ([kamailio] enabled = true)")
            return f"sip:{target[4:]}@{self.kamailio.uri_host}"
        return target

    def on_incoming(self, leg, account_name: str):
        caller, kind = normalise_caller(leg.remote_user, self.settings.box.country)
        line = account_name if account_name in ("trunk", "gsm") else "sip"
        call_id = store_calls.start_call(
            self.db,
            direction="in",
            line=line,
            caller_raw=leg.remote_uri,
            caller=caller,
            caller_kind=kind,
            dialled=leg.local_user,
            sip_call_id=leg.sip_call_id,
            flow=self.flow_name or "",
        )
        session = CallSession(self, leg, self.flow, call_id)
        self.sessions[call_id] = session
        log.info("call %d from %s (%s) to %s", call_id, caller, kind, leg.local_user)
        task = asyncio.get_running_loop().create_task(session.run(), name=f"call-{call_id}")
        self.tasks.add(task)
        task.add_done_callback(lambda t, cid=call_id: self._session_done(t, cid))

    def _session_done(self, task, call_id):
        self.tasks.discard(task)
        self.sessions.pop(call_id, None)

    def on_limit(self, remote_uri: str, local_uri: str, sip_call_id: str):
        """A caller turned away at the call limit is a missed call: store it like any other."""
        caller, kind = normalise_caller(user_part(remote_uri), self.settings.box.country)
        call_id = store_calls.start_call(
            self.db,
            direction="in",
            line="sip",
            caller_raw=remote_uri,
            caller=caller,
            caller_kind=kind,
            dialled=user_part(local_uri),
            sip_call_id=sip_call_id,
            flow=self.flow_name or "",
        )
        store_calls.add_step(
            self.db, call_id, "rejected", None, {"code": 486, "reason": "call limit", "limit": self.stack.max_calls}
        )
        store_calls.update_call(self.db, call_id, ended_at=utcnow(), ended_by="box", outcome="rejected")

    def on_trunk_state(self, state):
        detail = f"{state.code} {state.reason}".strip()
        self.db["line_events"].insert({"at": utcnow(), "line": "trunk", "state": state.state, "detail": detail})
        log.info("trunk: %s (%s)", state.state, detail)
        if self.lines is None:
            return
        if state.state == "registered":
            self.lines.update("trunk", "up", f"registered ({detail})")
        elif state.state == "failed":
            self.lines.update("trunk", "down", f"registration failed: {detail}")
        elif state.state == "disabled":
            self.lines.update("trunk", "absent", "not configured" if not self.settings.trunk.enabled else detail)
        elif self.lines.health["trunk"].state == "absent":
            self.lines.update("trunk", "degraded", "registering")

    # --- outbound calls --------------------------------------------------------------------
    async def _dial_trunk(self, e164: str):
        """One outbound attempt over the SIP trunk; returns the leg once the far end rings.

        Fails fast (LineFailed) on a refusal or when nothing rings within ``outbound.fail_fast_s``
        so the caller of :meth:`Lines.dial` can go on to the GSM line within seconds.
        """
        t = self.settings.trunk
        scheme, _, rest = t.registrar.partition(":")
        host, _, params = (t.get("domain") or rest).partition(";")
        # The registrar's transport (;transport=tcp/tls) applies to calls too; sips stays sips.
        params = ";".join(p for p in params.split(";") if p.lower().startswith("transport="))
        fmt = t.get("dial_format", "e164")
        user = e164 if fmt == "e164" else "00" + e164[1:] if fmt == "00" else _national(e164)
        uri = f"{'sips' if scheme.lower() == 'sips' else 'sip'}:{user}@{host}" + (f";{params}" if params else "")
        leg = self.stack.dial(uri, account="trunk")
        fail_fast = float(self.settings.sections.get("outbound", {}).get("fail_fast_s", 10))
        waits = [
            asyncio.ensure_future(leg.ringing.wait()),
            asyncio.ensure_future(asyncio.shield(leg.confirmed)),
            asyncio.ensure_future(asyncio.shield(leg.disconnected)),
        ]
        try:
            await asyncio.wait(waits, timeout=fail_fast, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if leg.disconnected.done():
            d = leg.disconnected.result()
            if d.code in CALLEE_SAID_NO:
                # The patient's side answered (busy, declined, no such number): not a line fault.
                raise CalleeRefused(f"{d.code} {d.reason}".strip(), "busy" if d.code in (486, 600) else "refused")
            raise LineFailed(f"the trunk refused the call: {d.code} {d.reason}".strip())
        if not (leg.ringing.is_set() or leg.confirmed.done()):
            leg.hangup()
            raise LineFailed(f"nothing rang within {fail_fast:g} s")
        return leg

    async def test_call(self, number: str) -> dict:
        """A technician's test call: over the best line, plays ``test_call`` and hangs up."""
        leg, line, e164 = await self.lines.dial(number, "test")
        call_id = store_calls.start_call(
            self.db,
            direction="out",
            line=line,
            caller_raw="",
            caller=e164,
            caller_kind="e164",
            dialled=e164,
            sip_call_id=leg.sip_call_id,
            flow="",
        )
        store_calls.add_step(self.db, call_id, "dialled", None, {"line": line, "purpose": "test"})
        task = asyncio.get_running_loop().create_task(self._run_test_call(leg, call_id), name=f"test-{call_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return {"line": line, "number": e164, "call_id": call_id}

    async def _run_test_call(self, leg, call_id: int, ring_timeout: float = 45):
        outcome = "no_answer"
        try:
            try:
                answered = await asyncio.wait_for(asyncio.shield(leg.confirmed), ring_timeout)
            except asyncio.TimeoutError:
                answered = False
            if answered:
                outcome = "answered"
                store_calls.update_call(self.db, call_id, answered_at=utcnow())
                await asyncio.wait_for(leg.media_active.wait(), 5)
                path = self.prompt_path("test_call", self.flow)
                player = leg.play(path)
                done = asyncio.ensure_future(asyncio.shield(leg.disconnected))
                await asyncio.wait([done], timeout=self.prompt_duration(path) + 0.5)
                done.cancel()
                leg.stop(player)
            elif leg.disconnected.done():
                d = leg.disconnected.result()
                outcome = "busy" if d.code in (486, 600) else "refused"
        except (asyncio.TimeoutError, CentralkaError) as exc:
            log.warning("test call %d: %s", call_id, exc)
            outcome = "error"
        finally:
            by = "remote" if leg.disconnected.done() and leg.disconnected.result().by == "remote" else "box"
            leg.hangup()
            self.lines.finished(leg, outcome)
            store_calls.add_step(self.db, call_id, "test_call", None, {"outcome": outcome})
            store_calls.update_call(
                self.db, call_id, ended_at=utcnow(), ended_by="agent" if by == "remote" else "box", outcome=outcome
            )

    # --- live state ------------------------------------------------------------------------
    def status(self) -> dict:
        st = self.stack
        return {
            "sip": {"address": st.address, "port": st.port, "transports": list(st.transports)},
            "calls_active": len(self.sessions),
            "legs_in_use": st.legs_in_use(),
            "legs": st.legs_status(),
            "pjsua_calls": st.pjsua_calls(),
            "sip_guard": st.guard.status() if st.guard else None,
            "call_limit": st.max_calls,
            "build_call_limit": st.build_limit,
            "limit_hits": st.limit_hits,
            "lines": self.lines.snapshot() if self.lines else None,
            "gsm": self.gsm.health() if self.gsm else None,
            "trunk": {
                "state": st.trunk.state,
                "code": st.trunk.code,
                "reason": st.trunk.reason,
                "failures": st.trunk.failures,
                "next_retry_at": st.trunk.next_retry_at,
            },
            "flow": self.flow_name,
            "desk_phones": (
                {"registrar": self.kamailio.uri_host, "running": self.kamailio.proc.poll() is None}
                if self.kamailio
                else None
            ),
            "queues": self.queues.status() if self.queues else None,
            "uptime_s": round(time.time() - (self.started_at or time.time()), 1),
            "pid": os.getpid(),
        }

    async def _start_control(self):
        self._server = await jsonline.serve(self.settings.control.socket, self.control)

    async def control(self, cmd: str, req: dict) -> dict:
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "reload":
            try:
                self.load_active_flow()
                self.load_staff()
            except FlowError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "flow": self.flow_name}
        if cmd in ("pause", "unpause"):
            if self.queues is None or not self.queues.set_paused(str(req.get("agent")), cmd == "pause"):
                return {"ok": False, "error": f"no agent {req.get('agent')!r}"}
            return {"ok": True}
        if cmd == "reload-phones":
            if self.kamailio is None:
                return {"ok": False, "error": "the desk phone registrar is not enabled"}
            self.kamailio.update_phones(list_phones(self.db))
            return {"ok": True}
        if cmd == "sms-wake":
            if self.gsm is not None:
                self.gsm.wake()
            return {"ok": True}
        if cmd == "test-call":
            try:
                return {"ok": True, **await self.test_call(str(req.get("number", "")))}
            except CalleeRefused as exc:
                return {"ok": False, "error": f"the number answered: {exc} (not tried on another line)"}
            except (DestinationRefused, NoLineAvailable) as exc:
                return {"ok": False, "error": str(exc)}
        if cmd == "stop":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def _national(e164: str) -> str:
    """+48600123456 -> 600123456 (what most Polish trunks expect as a dialled number)."""
    import phonenumbers

    return str(phonenumbers.parse(e164).national_number)
