"""Lines (R20): the SIP trunk and the GSM modem, each with a health state, and outbound calls
that pick a line by preference and fail over per call.

Health is one of ``up``, ``degraded``, ``down`` or ``absent`` (not configured / no device), with
the reason in words. A line going down, coming back or being degraded is an alarm
(``appliance.alarms``: stored, shown, e-mailed by the notifier).

An outbound call (a callback, a forward to a mobile, a technician's test call) goes through
:meth:`Lines.dial`: the toll-fraud guard first (``appliance.tollguard``), then each line in order
— lines that are up or degraded in preference order, then lines believed down (their health may
be stale; trying costs a few seconds) — until one accepts the call. A line "accepts" when the far
end is ringing, or for GSM when the modem took the dial command. Each attempt is a row in
``outbound_calls``: which line, what happened; the hourly caps count those rows.

Also here: the SIP trunk as a dialer (:func:`trunk_dialer`), the trunk's registration state as
line health (:meth:`Lines.trunk_state`) and the technician's test calls (:class:`TestCalls`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable

from .alarms import raise_alarm
from .clock import SYSTEM_CLOCK
from .errors import CallLimitReached, CentralkaError
from .messages import Msg, msg
from .store import calls as store_calls
from .store import lines as store_lines
from .store import missed as store_missed
from .store import outbound as store_outbound
from .tollguard import check_destination

log = logging.getLogger("centralka.lines")

STATES = ("up", "degraded", "down", "absent")
LINE_NAMES = ("trunk", "gsm")  # their names for a person: messages line.trunk, line.gsm


class LineFailed(CentralkaError, RuntimeError):
    "One line could not place a call; the next line is tried."


class CalleeRefused(CentralkaError, RuntimeError):
    "The far end said no (busy, declined, no such number): the call's outcome, not a line fault."

    def __init__(self, message: str, outcome: str = "refused"):
        self.outcome = outcome
        super().__init__(message)


class NoLineAvailable(CentralkaError, RuntimeError):
    "Every line refused or failed an outbound call; ``attempts`` says how each one failed."

    def __init__(self, message: str, attempts: list[dict]):
        self.attempts = attempts
        super().__init__(message)


@dataclass
class LineHealth:
    name: str
    state: str = "absent"
    reason: str = "not configured"  # in English, for the log and ``centralka status``
    since: float = 0.0  # wall clock (epoch seconds) of the last change
    message: dict | None = None  # the reason by message id (appliance.messages), for a person


Dialer = Callable[[str], Awaitable[object]]


class Lines:
    """Health of every line and the outbound dialer. Lives on the core's event loop."""

    def __init__(self, db, settings, *, lang: str = "pl", clock=SYSTEM_CLOCK):
        self.db = db
        self.clock = clock
        self.settings = settings
        self.lang = lang if lang in ("pl", "en") else "pl"
        outbound = settings.sections.get("outbound") or {}
        self.prefer = [n for n in outbound.get("prefer", ["trunk", "gsm"]) if n in LINE_NAMES]
        self.health: dict[str, LineHealth] = {n: LineHealth(n, since=clock.time()) for n in LINE_NAMES}
        self.dialers: dict[str, Dialer] = {}
        self.listeners: list[Callable[[LineHealth, str], None]] = []
        self._alarmed: set[str] = set()
        # Hysteresis: a line that failed is "working again" only after stable_after_s up;
        # meanwhile it may drop and come back without a new alarm (the drops are counted).
        alarms = settings.sections.get("alarms") or {}
        self.stable_after_s = float(alarms.get("stable_after_s", 300))
        self._recovering: dict[str, float] = {}  # line -> when it came up (wall clock)
        self._drops: dict[str, int] = {}
        self._critical: set[str] = set()  # lines whose "nothing works" alarm was raised

    # --- health ------------------------------------------------------------------------------
    def set_dialer(self, name: str, dialer: Dialer | None) -> None:
        if dialer is None:
            self.dialers.pop(name, None)
        else:
            self.dialers[name] = dialer

    def update(self, name: str, state: str, reason: Msg | str = "") -> bool:
        """Record a line's health; returns True when it changed (a state change is an alarm).

        The low-level events (each registration attempt, each modem health poll that changed
        something) are stored by whoever sees them in ``line_events``; this is the summary."""
        if state not in STATES:
            raise ValueError(f"unknown line state {state!r}")
        old = self.health[name]
        words = str(reason)
        if old.state == state and (state == "up" or old.reason == words):
            return False
        message = reason.to_json() if isinstance(reason, Msg) else None
        self.health[name] = LineHealth(name, state, words, since=self.clock.time(), message=message)
        if old.state != state:
            if state == "up" or state == "absent":
                # "Back up" is news only after the admin was told it was down, and only once
                # it holds (poll()); "absent" (unplugged, unconfigured) is said at once.
                if name in self._alarmed:
                    if state == "absent" or self.stable_after_s <= 0:
                        self._settle(name, old.state, state, reason)
                    else:
                        self._recovering[name] = self.clock.time()
            elif not (old.state == "absent" and state == "degraded"):
                # (a line still starting — registering, looking for the modem — is not news)
                if self._recovering.pop(name, None) is not None:
                    self._drops[name] = self._drops.get(name, 0) + 1  # flapping: counted, not alarmed
                all_down = self._all_down_after(name, state)
                if (
                    name not in self._alarmed
                    or (state == "down" and old.state == "degraded" and not self._drops.get(name))  # worse: news
                    or (all_down and name not in self._critical)  # nothing works any more: news once
                ):
                    self._alarmed.add(name)
                    if all_down:
                        self._critical.add(name)
                    self._alarm(name, old.state, state, reason)
        log.log(
            logging.INFO if old.state != state else logging.DEBUG,
            "line %s: %s -> %s (%s)",
            name,
            old.state,
            state,
            words,
        )
        for listener in self.listeners:
            try:
                listener(self.health[name], old.state)
            except Exception:  # noqa: BLE001 — a listener must not stop the health update
                log.exception("line listener failed")
        return True

    def poll(self) -> None:
        """A line back up for ``stable_after_s`` is reported working again (the core calls this
        every few seconds; tests call it after moving their clock)."""
        now = self.clock.time()
        for name, since in list(self._recovering.items()):
            if self.health[name].state == "up" and now - since >= self.stable_after_s:
                del self._recovering[name]
                self._settle(name, "down", "up", "", since=since)

    def _settle(self, name: str, old: str, new: str, reason: Msg | str, since: float | None = None) -> None:
        self._alarmed.discard(name)
        self._critical.discard(name)
        self._recovering.pop(name, None)
        drops = self._drops.pop(name, 0)
        if new != "up" or since is None:
            self._alarm(name, old, new, reason)
            return
        when = datetime.fromtimestamp(since, self.settings.tz).strftime("%H:%M")
        text = (
            msg("line.stable_after_flaps", line=msg(f"line.{name}"), since=when, drops=drops)
            if drops
            else msg("line.stable", line=msg(f"line.{name}"), since=when)
        )
        raise_alarm(
            self.db,
            "line_up",
            name,
            text,
            severity="info",
            detail=f"{old} -> up",
            lang=self.lang,
            at=self.clock.stamp(),
        )

    def _alarm(self, name: str, old: str, new: str, reason: Msg | str) -> None:
        text = msg(f"line.state.{new}", line=msg(f"line.{name}"))
        if reason and new != "up":
            # (a raw detail — a server's or a modem's own words — is shown as it came)
            text = msg("line.because", sentence=text, reason=reason)
        kind = {"up": "line_up", "degraded": "line_degraded"}.get(new, "line_down")
        severity = "info" if new in ("up", "absent") else "critical" if self._all_down_after(name, new) else "warning"
        raise_alarm(
            self.db,
            kind,
            name,
            text,
            severity=severity,
            detail=f"{old} -> {new}",
            lang=self.lang,
            at=self.clock.stamp(),
        )

    def _all_down_after(self, name: str, new: str) -> bool:
        states = {n: h.state for n, h in self.health.items()}
        states[name] = new
        configured = [s for s in states.values() if s != "absent"]
        return bool(configured) and all(s == "down" for s in configured)

    def trunk_state(self, state, *, configured: bool) -> None:
        """The SIP stack's word on the trunk's registration (``sip.stack.TrunkState``)."""
        detail = f"{state.code} {state.reason}".strip()
        store_lines.record_event(self.db, "trunk", state.state, detail, at=self.clock.stamp())
        log.info("trunk: %s (%s)", state.state, detail)
        if state.state == "registered":
            self.update("trunk", "up", msg("trunk.registered", detail=detail))
        elif state.state == "failed":
            self.update("trunk", "down", msg("trunk.registration_failed", detail=detail))
        elif state.state == "disabled":
            self.update("trunk", "absent", msg("line.not_configured") if not configured else detail)
        elif self.health["trunk"].state == "absent":
            self.update("trunk", "degraded", msg("trunk.registering"))

    def modem_state(self, state: str, line_state: str, reason: Msg | str, *, changed: bool) -> None:
        """The modem supervisor's health as the ``gsm`` line's (``changed``: a new supervisor
        state worth an event row, not every signal change while degraded)."""
        if changed:
            store_lines.record_event(self.db, "gsm", state, str(reason), at=self.clock.stamp())
        self.update("gsm", line_state, reason)

    def snapshot(self) -> dict:
        return {n: asdict(h) for n, h in self.health.items()}

    def order(self) -> list[str]:
        """Lines to try for an outbound call, best first."""
        names = self.prefer + [n for n in LINE_NAMES if n not in self.prefer]
        usable = [n for n in names if n in self.dialers and self.health[n].state != "absent"]
        good = [n for n in usable if self.health[n].state in ("up", "degraded")]
        return good + [n for n in usable if n not in good]

    # --- outbound ----------------------------------------------------------------------------
    async def dial(self, number: str, purpose: str, *, call_id: int | None = None, only: str | None = None):
        """Place an outbound call; returns ``(leg, line name, E.164 number)``. ``only``: over
        that line or not at all (the self-test call must cross to the other line).

        Raises DestinationRefused (toll-fraud guard) or NoLineAvailable (every line failed).
        """
        e164 = check_destination(self.db, number, self.settings, now=self.clock.time())
        attempts: list[dict] = []
        order = [n for n in self.order() if only is None or n == only]
        if not order:
            self._attempt_row(e164, purpose, None, "failed", "no line configured", call_id)
            raise NoLineAvailable(f"cannot call {e164}: no outbound line is configured", attempts)
        for name in order:
            row_id = self._attempt_row(e164, purpose, name, "trying", "", call_id)
            started = self.clock.monotonic()
            try:
                leg = await self.dialers[name](e164)
            except CalleeRefused as exc:
                # Busy or declined: calling again over the other line would ring the patient twice.
                self._finish_row(row_id, exc.outcome, str(exc))
                log.info("outbound %s to %s over %s: %s", purpose, e164, name, exc)
                raise
            except (LineFailed, CentralkaError) as exc:
                took = self.clock.monotonic() - started
                self._finish_row(row_id, "failed", str(exc))
                attempts.append({"line": name, "error": str(exc), "took_s": round(took, 2)})
                log.warning("outbound %s to %s over %s failed after %.1f s: %s", purpose, e164, name, took, exc)
                if self.health[name].state == "up" and not isinstance(exc, CallLimitReached):
                    # (the box's own call limit says nothing about the line)
                    self.update(name, "degraded", msg("outbound.failed", detail=_reason_of(exc)))
                continue
            self._finish_row(row_id, "placed", "")
            if (
                self.health[name].state == "degraded"
                and (self.health[name].message or {}).get("id") == "outbound.failed"
            ):
                self.update(name, "up", msg("outbound.went_through"))
            log.info("outbound %s to %s placed over %s", purpose, e164, name)
            leg.outbound_row = row_id
            leg.outbound_number = e164
            return leg, name, e164
        tried = "; ".join(f"{a['line']}: {a['error']}" for a in attempts)
        raise NoLineAvailable(f"cannot call {e164}: every line failed ({tried})", attempts)

    def _attempt_row(self, number, purpose, line, outcome, detail, call_id) -> int:
        return store_outbound.start_attempt(
            self.db, number, purpose, line, outcome, detail, call_id, at=self.clock.stamp()
        )

    def _finish_row(self, row_id: int, outcome: str, detail: str) -> None:
        store_outbound.finish_attempt(self.db, row_id, outcome, detail)

    def finished(self, leg, outcome: str, detail: str = "") -> None:
        """The placed call ended: answered / no_answer / busy..., for the admin's report."""
        row_id = getattr(leg, "outbound_row", None)
        if row_id is not None:
            self._finish_row(row_id, outcome, detail)
        number = getattr(leg, "outbound_number", None)
        if outcome in ("answered", "connected") and number:
            # R13: someone talked to the number, so its missed calls are settled.
            store_missed.close_for_number(self.db, number, at=self.clock.stamp(), by="outbound")


# --- the SIP trunk as a dialer ----------------------------------------------------------------
# Final answers that come from the callee's side, not from a broken line: no failover for these.
CALLEE_SAID_NO = {404, 410, 480, 484, 486, 600, 603, 604}


def trunk_uri(trunk, e164: str) -> str:
    """The Request-URI for ``e164`` over the trunk: the registrar's (or ``domain``'s) host, the
    number as the provider wants it (``dial_format``: e164, 00 or national), the registrar's
    transport; sips stays sips."""
    scheme, _, rest = trunk.registrar.partition(":")
    host, _, params = (trunk.get("domain") or rest).partition(";")
    params = ";".join(p for p in params.split(";") if p.lower().startswith("transport="))
    fmt = trunk.get("dial_format", "e164")
    user = e164 if fmt == "e164" else "00" + e164[1:] if fmt == "00" else _national(e164)
    return f"{'sips' if scheme.lower() == 'sips' else 'sip'}:{user}@{host}" + (f";{params}" if params else "")


def trunk_dialer(services) -> Dialer:
    """One outbound attempt over the SIP trunk, as a dialer of :class:`Lines`."""

    async def dial(e164: str):
        """Returns the leg once the far end rings. Fails fast (LineFailed) on a refusal or when
        nothing rings within ``outbound.fail_fast_s``, so :meth:`Lines.dial` can go on to the GSM
        line within seconds."""
        settings = services.settings
        leg = services.stack.dial(trunk_uri(settings.trunk, e164), account="trunk")
        fail_fast = float(settings.sections.get("outbound", {}).get("fail_fast_s", 10))
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
            raise LineFailed(msg("trunk.refused_call", detail=f"{d.code} {d.reason}".strip()))
        if not (leg.ringing.is_set() or leg.confirmed.done()):
            leg.hangup()
            raise LineFailed(msg("trunk.nothing_rang", seconds=fail_fast))
        return leg

    return dial


def _reason_of(exc: BaseException) -> Msg | str:
    """An error's reason for a person: its message id when it was raised with one."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], Msg) else str(exc)


def _national(e164: str) -> str:
    """+48600123456 -> 600123456 (what most Polish trunks expect as a dialled number)."""
    import phonenumbers

    return str(phonenumbers.parse(e164).national_number)


# --- a technician's test call ------------------------------------------------------------------
class TestCalls:
    """``centralka call NUMBER``: over the best line, plays ``test_call`` and hangs up."""

    __test__ = False  # (not a pytest class)
    RING_TIMEOUT_S = 45.0

    def __init__(self, services):
        self.services = services
        self.tasks: set[asyncio.Task] = set()

    async def place(self, number: str) -> dict:
        svc = self.services
        leg, line, e164 = await svc.lines.dial(number, "test")
        call_id = store_calls.start_call(
            svc.db,
            direction="out",
            line=line,
            caller_raw="",
            caller=e164,
            caller_kind="e164",
            dialled=e164,
            sip_call_id=leg.sip_call_id,
            flow="",
            at=svc.clock.stamp(),
        )
        store_calls.add_step(svc.db, call_id, "dialled", None, {"line": line, "purpose": "test"}, at=svc.clock.stamp())
        task = asyncio.get_running_loop().create_task(self._run(leg, call_id), name=f"test-{call_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return {"line": line, "number": e164, "call_id": call_id}

    async def _run(self, leg, call_id: int):
        svc = self.services
        outcome = "no_answer"
        try:
            try:
                answered = await asyncio.wait_for(asyncio.shield(leg.confirmed), self.RING_TIMEOUT_S)
            except asyncio.TimeoutError:
                answered = False
            if answered:
                outcome = "answered"
                store_calls.update_call(svc.db, call_id, answered_at=svc.clock.stamp())
                await asyncio.wait_for(leg.media_active.wait(), 5)
                path = svc.prompts.path("test_call", svc.flow)
                player = leg.play(path)
                done = asyncio.ensure_future(asyncio.shield(leg.disconnected))
                await asyncio.wait([done], timeout=svc.prompts.duration(path) + 0.5)
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
            svc.lines.finished(leg, outcome)
            store_calls.add_step(svc.db, call_id, "test_call", None, {"outcome": outcome}, at=svc.clock.stamp())
            store_calls.update_call(
                svc.db,
                call_id,
                ended_at=svc.clock.stamp(),
                ended_by="agent" if by == "remote" else "box",
                outcome=outcome,
            )

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
