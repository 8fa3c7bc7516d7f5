"""The GSM modem as the core's second line (R20, R22).

Glue between the modem supervisor (its own thread: AT commands, SMS outbox, recovery ladder),
the core's event loop (flow sessions, lines) and the media bridge (``sip.gsmleg.GsmLeg``, which
puts the modem's voice channel into the pjsua2 conference; sip/ knows nothing of the modem: the
leg gets the supervisor as its call control and :class:`appliance.gsm.voice.VoiceOpener` as its audio):

* an incoming GSM call becomes a ``GsmLeg`` and runs through the same flow as a SIP call;
* outbound calls over GSM are a dialer of :class:`appliance.lines.Lines`;
* the modem's health is the ``gsm`` line's health (line_events + alarms);
* ``wake()`` makes the supervisor send a freshly queued SMS now.

A missing modem never stops the core: the line is ``absent`` and the supervisor keeps looking.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ..lines import LineFailed
from ..messages import Msg, msg
from .voice import VoiceOpener

log = logging.getLogger("centralka.gsm")

# Supervisor states -> line states (see appliance/lines.py).
_LINE_STATE = {
    "up": "up",
    "degraded": "degraded",
    "down": "down",
    "pin_error": "down",
    "connecting": "degraded",
    "absent": "absent",
}
DIAL_ACCEPT_TIMEOUT_S = 15
MISSING_ALARM_S = 120  # a configured modem not found this long after start is reported down


class GsmLine:
    def __init__(self, services):
        self.services = services
        self.settings = services.settings
        self.supervisor = None
        self.voice: str | None = None  # the configured voice port (the supervisor may find another)
        # The legs by the supervisor's call number (its events say which call they are about):
        # a late event of an ended call finds nothing, and a RING while we dial is its own call.
        self.legs: dict[int, object] = {}
        self.dialing = None  # an outbound leg whose ATD the modem has not taken yet
        self._last_health: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        from .supervisor import ModemSupervisor

        self.loop = asyncio.get_running_loop()
        modem = self.settings.modem
        # $CENTRALKA_MODEM arrives here through the settings' environment overrides.
        configured = modem.device or None
        # "AT_PORT" or "AT_PORT,VOICE_PORT". Looking for an unnamed modem (udev links, by-id, an
        # ATI probe) is the supervisor's job, on its own thread: nothing here talks to a tty.
        at, _, voice = (configured or "").partition(",")
        self.voice = voice.strip() or None
        if configured and not os.path.exists(at.strip()):
            log.warning(
                "no GSM modem at %s yet; the GSM line is absent until it appears (SMS wait in the outbox)", at.strip()
            )
        self.supervisor = ModemSupervisor(
            device=at.strip() or None,
            voice_device=self.voice,
            db_path=self.settings.db_path,
            settings=self.settings,
            pin=modem.get("pin") or None,
            on_event=self._from_modem_thread,
            clock=self.services.clock.monotonic,
            wall=self.services.clock.time,
        )
        self.supervisor.start()
        self.services.lines.set_dialer("gsm", self.dial)
        if configured:
            # A modem the admin named that never shows up is a fault to report, not "no modem".
            self.loop.call_later(float(modem.get("missing_alarm_s", MISSING_ALARM_S)), self._check_missing, configured)

    def _check_missing(self, configured: str) -> None:
        h = self.health() or {}
        if self.loop is not None and h.get("state") == "absent":
            self.services.lines.update("gsm", "down", msg("modem.not_found_at", device=configured))

    async def stop(self) -> None:
        self.loop = None  # a box shutting down is not a line going down: no more events, no alarms
        # (a leg keeps its session, and that its pj objects, alive: let go of them all)
        legs, self.legs, self.dialing = [*self.legs.values(), self.dialing], {}, None
        for leg in legs:
            if leg is not None and leg.alive:
                leg.hangup()
        if self.supervisor is not None:
            await asyncio.to_thread(self.supervisor.stop)

    def wake(self) -> None:
        if self.supervisor is not None:
            self.supervisor.wake()

    def health(self) -> dict | None:
        return self.supervisor.health() if self.supervisor is not None else None

    # --- events from the modem thread ------------------------------------------------------------
    def _from_modem_thread(self, name: str, data: dict) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._event, name, data)

    def _event(self, name: str, data: dict) -> None:
        try:
            if name == "health":
                self._health(data)
            elif name == "ring":
                self._ring(data)
            elif name == "dialled":
                if self.dialing is not None:
                    self.legs[data["call"]] = self.dialing
                    self.dialing = None
            elif name == "call_connected":
                leg = self.legs.get(data.get("call"))
                if leg is not None and leg.alive:
                    leg.modem_connected()
                elif leg is None:
                    log.info("modem: call %s connected, but it is not ours any more: ignored", data.get("call"))
            elif name == "call_ended":
                leg = self.legs.pop(data.get("call"), None)
                if leg is not None and leg.alive:
                    leg.modem_ended(str(data.get("reason") or "ended"))
                elif leg is None:
                    log.info("modem: the end of call %s, which no leg has (any more): ignored", data.get("call"))
            elif name == "sms_in":
                log.info("SMS from %s stored (#%s)", data.get("number"), data.get("message_id"))
            elif name == "alarm":
                log.warning("modem: %s", data.get("text"))
        except Exception:  # noqa: BLE001 — one bad event must not stop the next
            log.exception("GSM event %s failed", name)

    def _health(self, h: dict) -> None:
        state = h.get("state", "absent")
        reason = Msg.from_json(h.get("message")) or h.get("reason") or ""
        changed = state != self._last_health  # (not every signal change while degraded)
        self._last_health = state
        self.services.lines.modem_state(state, _LINE_STATE.get(state, "down"), reason, changed=changed)

    def _ring(self, data: dict) -> None:
        from ..sip.gsmleg import GsmLeg

        call = data.get("call")
        known = self.legs.get(call)
        if known is not None and known.alive:
            return  # the network repeats RING for the call we already have
        caller = str(data.get("caller") or "")
        leg = GsmLeg(
            self.services.stack,
            "in",
            self.supervisor,
            self._voice(),
            remote_number=caller,
            local_number=str((self.settings.sections.get("modem") or {}).get("number", "")),
        )
        self.legs[call] = leg
        self.services.incoming(leg, "gsm")

    def _voice(self) -> VoiceOpener | None:
        # After a USB reset the modem may be back under another name: the supervisor knows.
        h = self.health() or {}
        device = h.get("voice_device") or self.voice
        return VoiceOpener(device) if device else None

    @property
    def busy(self) -> bool:
        """The modem has a call (or we are dialling one): it carries one voice call at a time."""
        return self.dialing is not None or any(leg.alive for leg in self.legs.values())

    # --- outbound (a dialer of Lines) ------------------------------------------------------------
    async def dial(self, e164: str):
        from ..sip.gsmleg import GsmLeg

        h = self.health() or {}
        if h.get("state") not in ("up", "degraded"):
            reason = Msg.from_json(h.get("message")) or h.get("reason") or msg("modem.not_found")
            raise LineFailed(msg("gsm.not_ready", reason=reason))
        if self.busy:
            raise LineFailed(msg("gsm.busy"))
        leg = GsmLeg(self.services.stack, "out", self.supervisor, self._voice(), remote_number=e164)
        self.dialing = leg
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.supervisor.dial(e164)), DIAL_ACCEPT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 — any refusal means: next line
            if self.dialing is leg:
                self.dialing = None
            for call, other in list(self.legs.items()):
                if other is leg:
                    del self.legs[call]
            leg.modem_ended("dial failed")
            # A dial that timed out here may still be placed by the modem: hang it up (the job
            # runs after the dial), or the patient would answer to silence.
            self.supervisor.hangup()
            raise LineFailed(msg("gsm.dial_failed", error=str(exc) or type(exc).__name__)) from exc
        leg.ringing.set()
        return leg
