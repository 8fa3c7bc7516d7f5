"""The self-test call (R21: "call your own number a few times a day; many owners don't for months").

The box dials the clinic's public number over its *other* line — the SIM's number over the SIP
trunk, or the trunk's number over the GSM modem — and both ends of that call are the box:

- the **answering side** is the call desk as for any caller (``flow.desk``): it knows the call
  by its caller ID (the calling line's own public number, while a self-test is dialling it) and
  walks the flow as for a patient — greeting, menu, the key — up to the first node that would
  ring, queue or book for a person. There it plays ``selftest_ok`` and hangs up: no receptionist
  rings and the call is not a missed call (``calls.purpose = 'selftest'``);
- the **calling side** (:class:`SelfTestCalls`) records what it hears and judges: answered
  within ``answer_within_s``; the call reached the box's answering side (not a network
  announcement or an old forwarding); the greeting heard is the configured greeting
  (``media.fingerprint``: a spectral match that survives GSM coding); the menu key pressed led
  on and the confirmation was heard.

Each run is a row in ``selftest_calls`` with its checks and the recording. ``alarm_after``
failures in a row raise one critical alarm (e-mail, SMS to ``[alarms] sms_to``); the next pass
says it works again. Runs come from the schedule (``[selftest] times``/``days``, waiting while
calls are up), from ``centralka selftest call`` and later from the web UI and the button.
Everything here runs on the core's event loop; the audio analysis runs in an executor.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ..alarms import raise_alarm
from ..errors import CentralkaError, SipError
from ..lines import CalleeRefused, NoLineAvailable
from ..media.fingerprint import match
from ..media.prompts import read_wav
from ..media.voicemail import wait_closed
from ..messages import Msg, msg
from ..numbers import for_people, normalise_caller
from ..store import alarms as store_alarms
from ..store import selftest as store_selftest
from ..tollguard import DestinationRefused

log = logging.getLogger("centralka.selftest")

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
OTHER_LINE = {"gsm": "trunk", "trunk": "gsm"}  # the public number's line -> the line that calls it
MENU_WAIT_S = 25.0  # from answering to the menu: a greeting is at most 10 s (R2), plus a closed message
KEY_AFTER_S = 1.0  # into the menu prompt before the key: the greeting is then surely all heard
REACH_WAIT_S = 15.0
LATEST_S = 3600.0  # a scheduled test that could not run within an hour of its time is dropped


@dataclass
class Probe:
    """One self-test call in flight: what the answering side saw, for the calling side."""

    target: str  # the line whose public number is called
    line_in: str  # where the call should arrive (= target)
    caller: str  # the caller ID it should arrive with: the calling line's public number (E.164)
    in_call_id: int | None = None
    menu_node: str | None = None
    options: dict = field(default_factory=dict)
    choice: tuple[str, str] | None = None  # (key, next node)
    reached_node: tuple[str, str] | None = None  # (node id, type)
    outcome: str | None = None
    recognised: asyncio.Event = field(default_factory=asyncio.Event)
    menu_entered: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # at a person's node, or ended

    # --- told by the answering side (flow engine, on the loop) ----------------------------------
    def menu(self, node_id: str, options: dict) -> None:
        if self.menu_node is None:
            self.menu_node, self.options = node_id, dict(options)
            self.menu_entered.set()

    def chose(self, node_id: str, key: str, to: str) -> None:
        self.choice = (key, to)

    def reached(self, node_id: str, node_type: str) -> None:
        self.reached_node = (node_id, node_type)
        self.arrived.set()
        self.menu_entered.set()

    def session_ended(self, outcome: str | None) -> None:
        self.outcome = outcome
        self.arrived.set()
        self.menu_entered.set()


@dataclass
class Verdict:
    checks: list[dict]
    reason: Msg
    result: str  # PASS | FAIL | SKIP


class SelfTestCalls:
    __test__ = False  # (not a pytest class)

    def __init__(self, services):
        self.services = services
        self.probe: Probe | None = None
        self.running: asyncio.Task | None = None
        self._schedule_task: asyncio.Task | None = None
        self._turn = 0
        self.next_at: float | None = None  # wall clock of the next scheduled run

    @property
    def cfg(self):
        return self.services.settings.selftest

    # --- numbers ----------------------------------------------------------------------------
    def public_number(self, line: str) -> str:
        """The line's public number as E.164, or "" when not configured (or not a number)."""
        s = self.services.settings
        raw = (s.trunk.get("number") if line == "trunk" else s.modem.get("number")) or ""
        number, kind = normalise_caller(raw, s.box.country)
        return number if kind == "e164" else ""

    def targets(self) -> list[str]:
        """The public numbers that can be tested now: configured, with the other line there."""
        lines = self.services.lines
        out = []
        for target in self.cfg.targets:
            if target in OTHER_LINE and self.public_number(target) and lines and OTHER_LINE[target] in lines.dialers:
                out.append(target)
        return out

    # --- the answering side -------------------------------------------------------------------
    def recognise(self, line: str, caller: str, call_id: int) -> Probe | None:
        """The call desk asks about every inbound call: is it ours?"""
        p = self.probe
        if p is None or p.in_call_id is not None or line != p.line_in or caller != p.caller:
            return None
        p.in_call_id = call_id
        p.recognised.set()
        return p

    # --- one run ------------------------------------------------------------------------------
    def start(self, target: str | None = None, trigger: str = "manual") -> asyncio.Task:
        """Start a run (returns its task; its result is the stored row). Refuses a second one."""
        if self.running is not None and not self.running.done():
            raise CentralkaError(msg("selftest.busy").text("en"))
        self.running = asyncio.get_running_loop().create_task(self.run(target, trigger), name="selftest-call")
        return self.running

    async def run(self, target: str | None = None, trigger: str = "manual") -> dict:
        svc = self.services
        lang = svc.settings.box.language
        if target is None:
            possible = self.targets()
            target = possible[self._turn % len(possible)] if possible else (self.cfg.targets or ["gsm"])[0]
            self._turn += 1
        number = self.public_number(target)
        line = OTHER_LINE.get(target, "")
        row = store_selftest.start(
            svc.db, trigger=trigger, target=target, line=line, number=number, at=svc.clock.stamp()
        )
        if not number:
            return self._store(row, Verdict([], msg("selftest.no_number"), "SKIP"), None, None, lang, number)
        if svc.lines is None or line not in svc.lines.dialers:
            reason = msg("selftest.no_other_line", number=for_people(number), line=msg(f"line.{line}"))
            return self._store(row, Verdict([], reason, "SKIP"), None, None, lang, number)
        caller = self.public_number(line)
        self.probe = probe = Probe(target=target, line_in=target, caller=caller)
        try:
            verdict, recording, answered_s = await self._call(probe, number, line)
        except Exception as exc:  # noqa: BLE001 — a defect of ours is a result too, never a row left "running"
            log.exception("self-test call %d failed inside the box", row)
            reason = msg("selftest.error", detail=f"{type(exc).__name__}: {exc}")
            verdict, recording, answered_s = Verdict([_check("answered", "FAIL", reason)], reason, "FAIL"), None, None
        finally:
            self.probe = None
        return self._store(row, verdict, recording, answered_s, lang, number, in_call_id=probe.in_call_id)

    async def _call(self, probe: Probe, number: str, line: str):
        """Dial, listen, press, judge: (Verdict, recording path or None, seconds to answer)."""
        svc = self.services
        checks: list[dict] = []
        who = for_people(number)
        try:
            leg, _, _ = await svc.lines.dial(number, "selftest", only=line)
        except CalleeRefused as exc:
            reason = msg("selftest.refused", detail=str(exc))
            return Verdict([_check("answered", "FAIL", reason)], reason, "FAIL"), None, None
        except (NoLineAvailable, DestinationRefused, CentralkaError) as exc:
            reason = msg("selftest.dial_failed", detail=str(exc))
            return Verdict([_check("answered", "FAIL", reason)], reason, "FAIL"), None, None
        started = svc.clock.monotonic()
        recording: Path | None = None
        key = key_at = None
        try:
            limit = float(self.cfg.answer_within_s)
            answered = await _wait(leg.confirmed, limit)
            if not answered:
                if leg.disconnected.done():
                    d = leg.disconnected.result()
                    reason = msg("selftest.refused", detail=f"{d.code} {d.reason}".strip())
                else:
                    reason = msg("selftest.not_answered", number=who, seconds=f"{limit:g}")
                return Verdict([_check("answered", "FAIL", reason)], reason, "FAIL"), None, None
            answered_s = round(svc.clock.monotonic() - started, 1)
            checks.append(_check("answered", "PASS", msg("selftest.answered", number=who, seconds=answered_s)))
            await _wait_event(leg.media_active, 5)
            recording = self._recording_path()
            heard_from = svc.clock.monotonic()
            try:
                leg.record(recording)
            except SipError as exc:  # no audio on the call: nothing to judge
                log.warning("self-test call: nothing to record: %s", exc)
                reason = msg("selftest.no_audio")
                return Verdict(checks + [_check("greeting", "FAIL", reason)], reason, "FAIL"), None, answered_s
            # The answering side tells when its menu starts (the greeting is over by then).
            await _any(probe.menu_entered, leg, MENU_WAIT_S)
            if probe.menu_node is not None and probe.reached_node is None and leg.alive:
                await _any(None, leg, self._key_after(probe))
                key = self.cfg.key or next(iter(probe.options), "")
                if key and leg.alive:
                    key_at = svc.clock.monotonic() - heard_from
                    leg.send_dtmf(key)
                    await _any(probe.arrived, leg, REACH_WAIT_S)
            if probe.reached_node is not None and leg.alive:
                # The confirmation plays, then the answering side hangs up.
                ok = svc.prompts.duration(svc.prompts.path("selftest_ok", svc.flow))
                await _wait(leg.disconnected, ok + 4.0)
        finally:
            if leg.alive:
                leg.hangup()
            svc.lines.finished(leg, "answered" if leg.confirmed.done() and leg.confirmed.result() else "no_answer")
        verdict = await asyncio.get_running_loop().run_in_executor(
            None, self._judge, probe, recording, key, key_at, checks
        )
        return verdict, recording, answered_s

    def _key_after(self, probe: Probe) -> float:
        """Seconds into the menu before the key: at once, unless the menu's prompt is the
        greeting itself (a flow that starts with its menu) — then all of it is heard first."""
        svc = self.services
        prompt = svc.flow.nodes[probe.menu_node].params.get("prompt")
        if prompt and prompt == greeting_prompt(svc.flow):
            return svc.prompts.duration(svc.prompts.path(prompt, svc.flow)) + 0.5
        return KEY_AFTER_S

    def _judge(self, probe: Probe, recording: Path | None, key, key_at, checks: list[dict]) -> Verdict:
        """(Executor.) The checks from what was heard and what the answering side saw."""
        svc = self.services
        cfg = self.cfg
        flow = svc.flow
        if recording is None or not wait_closed(recording):
            reason = msg("selftest.no_audio")
            return Verdict(checks + [_check("greeting", "FAIL", reason)], reason, "FAIL")
        samples, rate = read_wav(recording)
        if probe.in_call_id is None:
            checks.append(_check("reached_box", "FAIL", msg("selftest.not_received")))
        else:
            checks.append(_check("reached_box", "PASS", f"call {probe.in_call_id}"))
        name = greeting_prompt(flow)
        if name is None:
            checks.append(_check("greeting", "SKIP", "the flow starts without a prompt"))
        else:
            ref, ref_rate = read_wav(svc.prompts.path(name, flow))
            heard = match(samples, ref, rate=rate, ref_rate=ref_rate)
            if heard.heard(float(cfg.greeting_score), float(cfg.greeting_heard)):
                checks.append(_check("greeting", "PASS", f"score {heard.score:.2f}", heard.to_json()))
            else:
                reason = msg("selftest.wrong_greeting", score=f"{heard.score:.2f}", heard=round(100 * heard.coverage))
                checks.append(_check("greeting", "FAIL", reason, heard.to_json()))
        if probe.in_call_id is not None:
            checks.append(self._key_check(probe, samples, rate, key, key_at))
        failed = [c for c in checks if c["result"] == "FAIL"]
        if failed:
            first = failed[0]["msg"]
            return Verdict(checks, first, "FAIL")
        answered = checks[0]["msg"].params
        key_passed = any(c["name"] == "key" and c["result"] == "PASS" for c in checks)
        worked = msg("selftest.key_worked", key=key) if key_passed else ""
        reason = msg("selftest.passed", number=answered["number"], seconds=answered["seconds"], key=worked)
        return Verdict(checks, reason, "PASS")

    def _key_check(self, probe: Probe, samples, rate, key, key_at) -> dict:
        svc = self.services
        if probe.menu_node is None:
            return _check("key", "SKIP", "no menu before a person in the flow (or the clinic is closed)")
        failed = msg("selftest.key_failed", key=key or "?", node=probe.menu_node)
        if not key or probe.choice is None or probe.choice[0] != key or probe.reached_node is None:
            return _check("key", "FAIL", failed)
        ref, ref_rate = read_wav(svc.prompts.path("selftest_ok", svc.flow))
        after = samples[int((key_at or 0) * rate) :]
        heard = match(after, ref, rate=rate, ref_rate=ref_rate)
        if not heard.heard(float(self.cfg.greeting_score), float(self.cfg.greeting_heard)):
            return _check("key", "FAIL", failed, heard.to_json())
        return _check("key", "PASS", f"{key} -> {probe.choice[1]} ({probe.reached_node[1]})", heard.to_json())

    def _recording_path(self) -> Path:
        svc = self.services
        folder = svc.settings.data_dir / "selftest"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"selftest-{svc.clock.now().strftime('%Y%m%d-%H%M%S-%f')}.wav"

    # --- results and alarms -------------------------------------------------------------------
    def _store(
        self, row: int, verdict: Verdict, recording, answered_s, lang: str, number: str, in_call_id=None
    ) -> dict:
        svc = self.services
        db = svc.db
        checks = [
            {k: (v.text(lang) if isinstance(v, Msg) else v) for k, v in c.items() if k != "msg"} for c in verdict.checks
        ]
        store_selftest.finish(
            db,
            row,
            result=verdict.result,
            reason=verdict.reason.text(lang),
            message=verdict.reason.to_json(),
            checks=checks,
            recording=str(recording) if recording else None,
            answered_s=answered_s,
            in_call_id=in_call_id,
            at=svc.clock.stamp(),
        )
        log.log(
            logging.INFO if verdict.result != "FAIL" else logging.WARNING,
            "self-test call %d: %s: %s",
            row,
            verdict.result,
            verdict.reason,
        )
        self._alarm(verdict, lang, for_people(number))
        self._prune()
        result = {"id": row, "result": verdict.result, "reason": verdict.reason.text(lang), "checks": checks}
        if recording:
            result["recording"] = str(recording)
        return result

    def _alarm(self, verdict: Verdict, lang: str, number: str) -> None:
        svc = self.services
        db = svc.db
        last = self._last_alarm()
        open_alarm = last is not None and last["kind"] == "selftest_failed"
        if verdict.result == "FAIL":
            count = store_selftest.failures_in_a_row(db)
            if count >= int(self.cfg.alarm_after) and not open_alarm:
                raise_alarm(
                    db,
                    "selftest_failed",
                    "selftest",
                    msg("selftest.alarm", number=number, count=count, reason=verdict.reason),
                    severity="critical",
                    lang=lang,
                    at=svc.clock.stamp(),
                )
        elif verdict.result == "PASS" and open_alarm:
            store_alarms.ack(db, last["id"], "selftest", at=svc.clock.stamp())
            raise_alarm(
                db,
                "selftest_ok",
                "selftest",
                msg("selftest.recovered", number=number, reason=verdict.reason),
                severity="info",
                lang=lang,
                at=svc.clock.stamp(),
            )

    def _prune(self) -> None:
        db = self.services.db
        for row_id, path in store_selftest.recordings_beyond(db, int(self.cfg.keep_recordings)):
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove old self-test recording %s: %s", path, exc)
                continue
            store_selftest.forget_recording(db, row_id)

    # --- the schedule -------------------------------------------------------------------------
    def start_schedule(self) -> None:
        self.recover()
        if self.cfg.enabled and self.cfg.times:
            self._schedule_task = asyncio.get_running_loop().create_task(self._schedule(), name="selftest-schedule")

    def recover(self) -> None:
        """At start: a run the last core did not finish is closed as interrupted, and a recording
        it left half-written (no row names it) is removed."""
        svc = self.services
        store_selftest.interrupted(svc.db, at=svc.clock.stamp())
        folder = svc.settings.data_dir / "selftest"
        if not folder.is_dir():
            return
        kept = store_selftest.recording_paths(svc.db)
        for path in folder.glob("*.wav"):
            if str(path) not in kept:
                path.unlink(missing_ok=True)
                log.info("removed %s: a self-test recording cut short", path.name)

    async def stop(self) -> None:
        for task in (self._schedule_task, self.running):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 — stopping anyway
                    pass

    def next_due(self, after: float) -> float | None:
        """The wall-clock time of the next scheduled test after ``after`` (None: none scheduled)."""
        tz = self.services.settings.tz
        days = {d for d in self.cfg.days if d in DAYS}
        times = sorted(t for t in (_hhmm(x) for x in self.cfg.times) if t is not None)
        if not days or not times:
            return None
        base = datetime.fromtimestamp(after, tz)
        for day in range(8):
            date = (base + timedelta(days=day)).date()
            if DAYS[date.weekday()] not in days:
                continue
            for h, m in times:
                at = datetime(date.year, date.month, date.day, h, m, tzinfo=tz).timestamp()
                if at > after:
                    return at
        return None

    async def _schedule(self):
        clock = self.services.clock
        while True:
            due = self.next_due(clock.time())
            self.next_at = due
            if due is None:
                return
            while clock.time() < due:
                await asyncio.sleep(min(60.0, max(0.05, due - clock.time())))
            # Patients first: while any call is up, wait for quiet (at most an hour).
            while self._busy() and clock.time() - due < LATEST_S:
                await asyncio.sleep(float(self.cfg.busy_retry_s))
            if self._busy():
                log.warning("self-test call of %s skipped: calls were up for an hour", _when(due, self))
                continue
            try:
                if self.running is None or self.running.done():
                    await self.start(trigger="schedule")
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — one failed run must not end the schedule
                log.exception("scheduled self-test call failed")

    def _busy(self) -> bool:
        stack = self.services.stack
        return bool(stack is not None and (stack.legs or stack.media_legs))

    def _last_alarm(self) -> dict | None:
        return store_alarms.latest_of(self.services.db, "selftest", ("selftest_failed", "selftest_ok"))

    def failing(self) -> bool:
        """The self-test alarm is raised and not yet cleared by a pass."""
        last = self._last_alarm()
        return last is not None and last["kind"] == "selftest_failed"

    def status(self) -> dict:
        return {
            "failing": self.failing(),
            "running": self.running is not None and not self.running.done(),
            "next_at": _when(self.next_at, self) if self.next_at else None,
            "targets": self.targets(),
        }


def greeting_prompt(flow) -> str | None:
    """The first prompt a caller hears: along the start, through plays, open hours and menus."""
    node_id = flow.start
    for _ in range(len(flow.nodes) + 1):
        node = flow.nodes.get(node_id)
        if node is None:
            return None
        if node.params.get("prompt"):
            return node.params["prompt"]
        if node.type == "time":
            node_id = node.params.get("open")
        elif node.type == "play":
            node_id = node.params.get("next")
        else:
            return None
    return None


def _check(name: str, result: str, why, detail: dict | None = None) -> dict:
    out = {"name": name, "result": result, "why": why, "msg": why if isinstance(why, Msg) else None}
    if detail:
        out["detail"] = detail
    return out


def _hhmm(text: str):
    try:
        h, m = (int(x) for x in str(text).split(":"))
    except ValueError:
        return None
    return (h, m) if 0 <= h < 24 and 0 <= m < 60 else None


def _when(ts: float | None, calls: SelfTestCalls) -> str:
    return datetime.fromtimestamp(ts, calls.services.settings.tz).strftime("%Y-%m-%d %H:%M") if ts else ""


async def _wait(future, timeout: float):
    """The future's result within ``timeout``, else None (the future itself is not cancelled)."""
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        return None


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


async def _any(event: asyncio.Event | None, leg, timeout: float) -> None:
    """Until ``event`` is set, the leg ends, or ``timeout`` passes."""
    waits = [asyncio.ensure_future(asyncio.shield(leg.disconnected))]
    if event is not None:
        waits.append(asyncio.ensure_future(event.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
