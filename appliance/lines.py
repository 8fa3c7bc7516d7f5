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
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable

from .alarms import localise, raise_alarm
from .errors import CallLimitReached, CentralkaError
from .store.db import utcnow
from .tollguard import check_destination

log = logging.getLogger("centralka.lines")

STATES = ("up", "degraded", "down", "absent")
LINE_NAMES = {"trunk": {"pl": "Trunk SIP", "en": "The SIP trunk"}, "gsm": {"pl": "Modem GSM", "en": "The GSM modem"}}
_STATE_WORDS = {
    "up": {"pl": "działa", "en": "is up"},
    "degraded": {"pl": "działa z problemami", "en": "is degraded"},
    "down": {"pl": "nie działa", "en": "is down"},
    "absent": {"pl": "jest niedostępny", "en": "is not available"},
}


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
    reason: str = "not configured"
    since: float = field(default_factory=time.time)


Dialer = Callable[[str], Awaitable[object]]


class Lines:
    """Health of every line and the outbound dialer. Lives on the core's event loop."""

    def __init__(self, db, settings, *, lang: str = "pl"):
        self.db = db
        self.settings = settings
        self.lang = lang if lang in ("pl", "en") else "pl"
        outbound = settings.sections.get("outbound") or {}
        self.prefer = [n for n in outbound.get("prefer", ["trunk", "gsm"]) if n in LINE_NAMES]
        self.health: dict[str, LineHealth] = {n: LineHealth(n) for n in LINE_NAMES}
        self.dialers: dict[str, Dialer] = {}
        self.listeners: list[Callable[[LineHealth, str], None]] = []
        self._alarmed: set[str] = set()

    # --- health ------------------------------------------------------------------------------
    def set_dialer(self, name: str, dialer: Dialer | None) -> None:
        if dialer is None:
            self.dialers.pop(name, None)
        else:
            self.dialers[name] = dialer

    def update(self, name: str, state: str, reason: str = "") -> bool:
        """Record a line's health; returns True when it changed (a state change is an alarm).

        The low-level events (each registration attempt, each modem health poll that changed
        something) are stored by whoever sees them in ``line_events``; this is the summary."""
        if state not in STATES:
            raise ValueError(f"unknown line state {state!r}")
        old = self.health[name]
        if old.state == state and (state == "up" or old.reason == reason):
            return False
        self.health[name] = LineHealth(name, state, reason)
        if old.state != state:
            if state == "up" or state == "absent":
                # "Back up" is news only after the admin was told it was down.
                if name in self._alarmed:
                    self._alarmed.discard(name)
                    self._alarm(name, old.state, state, reason)
            elif not (old.state == "absent" and state == "degraded"):
                # (a line still starting — registering, looking for the modem — is not news)
                self._alarmed.add(name)
                self._alarm(name, old.state, state, reason)
        log.log(
            logging.INFO if old.state != state else logging.DEBUG,
            "line %s: %s -> %s (%s)",
            name,
            old.state,
            state,
            reason,
        )
        for listener in self.listeners:
            try:
                listener(self.health[name], old.state)
            except Exception:  # noqa: BLE001 — a listener must not stop the health update
                log.exception("line listener failed")
        return True

    def _alarm(self, name: str, old: str, new: str, reason: str) -> None:
        who = LINE_NAMES[name][self.lang]
        text = f"{who} {_STATE_WORDS[new][self.lang]}"
        if reason and new != "up":
            text += f": {localise(reason, self.lang)}"
        kind = {"up": "line_up", "degraded": "line_degraded"}.get(new, "line_down")
        severity = "info" if new in ("up", "absent") else "critical" if self._all_down_after(name, new) else "warning"
        raise_alarm(self.db, kind, name, text, severity=severity, detail=f"{old} -> {new}")

    def _all_down_after(self, name: str, new: str) -> bool:
        states = {n: h.state for n, h in self.health.items()}
        states[name] = new
        configured = [s for s in states.values() if s != "absent"]
        return bool(configured) and all(s == "down" for s in configured)

    def snapshot(self) -> dict:
        return {n: asdict(h) for n, h in self.health.items()}

    def order(self) -> list[str]:
        """Lines to try for an outbound call, best first."""
        names = self.prefer + [n for n in LINE_NAMES if n not in self.prefer]
        usable = [n for n in names if n in self.dialers and self.health[n].state != "absent"]
        good = [n for n in usable if self.health[n].state in ("up", "degraded")]
        return good + [n for n in usable if n not in good]

    # --- outbound ----------------------------------------------------------------------------
    async def dial(self, number: str, purpose: str, *, call_id: int | None = None):
        """Place an outbound call; returns ``(leg, line name, E.164 number)``.

        Raises DestinationRefused (toll-fraud guard) or NoLineAvailable (every line failed).
        """
        e164 = check_destination(self.db, number, self.settings)
        attempts: list[dict] = []
        order = self.order()
        if not order:
            self._attempt_row(e164, purpose, None, "failed", "no line configured", call_id)
            raise NoLineAvailable(f"cannot call {e164}: no outbound line is configured", attempts)
        for name in order:
            row_id = self._attempt_row(e164, purpose, name, "trying", "", call_id)
            started = time.monotonic()
            try:
                leg = await self.dialers[name](e164)
            except CalleeRefused as exc:
                # Busy or declined: calling again over the other line would ring the patient twice.
                self._finish_row(row_id, exc.outcome, str(exc))
                log.info("outbound %s to %s over %s: %s", purpose, e164, name, exc)
                raise
            except (LineFailed, CentralkaError) as exc:
                took = time.monotonic() - started
                self._finish_row(row_id, "failed", str(exc))
                attempts.append({"line": name, "error": str(exc), "took_s": round(took, 2)})
                log.warning("outbound %s to %s over %s failed after %.1f s: %s", purpose, e164, name, took, exc)
                if self.health[name].state == "up" and not isinstance(exc, CallLimitReached):
                    # (the box's own call limit says nothing about the line)
                    self.update(name, "degraded", f"outbound call failed: {exc}")
                continue
            self._finish_row(row_id, "placed", "")
            if self.health[name].state == "degraded" and str(self.health[name].reason).startswith("outbound"):
                self.update(name, "up", "an outbound call went through")
            log.info("outbound %s to %s placed over %s", purpose, e164, name)
            leg.outbound_row = row_id
            return leg, name, e164
        tried = "; ".join(f"{a['line']}: {a['error']}" for a in attempts)
        raise NoLineAvailable(f"cannot call {e164}: every line failed ({tried})", attempts)

    def _attempt_row(self, number, purpose, line, outcome, detail, call_id) -> int:
        return (
            self.db["outbound_calls"]
            .insert(
                {
                    "at": utcnow(),
                    "number": number,
                    "purpose": purpose,
                    "line": line,
                    "outcome": outcome,
                    "detail": detail or None,
                    "call_id": call_id,
                }
            )
            .last_pk
        )

    def _finish_row(self, row_id: int, outcome: str, detail: str) -> None:
        self.db.execute(
            "UPDATE outbound_calls SET outcome = ?, detail = ? WHERE id = ?", [outcome, detail or None, row_id]
        )

    def finished(self, leg, outcome: str, detail: str = "") -> None:
        """The placed call ended: answered / no_answer / busy..., for the admin's report."""
        row_id = getattr(leg, "outbound_row", None)
        if row_id is not None:
            self._finish_row(row_id, outcome, detail)
