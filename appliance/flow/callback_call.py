"""The box keeps a callback promise itself (R12, ``callback_mode = "auto"``), or on a person's
word (``centralka callbacks call c5``): ring an agent, tell them who is waiting and why, dial the
patient over the preferred line, connect the two.

One try, in order:

1. The agent's phones ring. Answered, the agent hears the whisper — "Oddzwonienie: sześćset
   sto dwadzieścia trzy…, Rejestracja, czeka od dziesiątej czterdzieści dwa. Aby zadzwonić do
   pacjenta, wciśnij 1." — and accepts with the key within ``accept_timeout_s``. An agent who
   does not answer or does not accept costs the patient nothing: no try is counted and the
   request is offered again a minute later.
2. The box dials the patient (``Lines.dial``: the preferred line, failover to the other) while
   the agent hears ringback. The patient hears "Dzień dobry, tu Przychodnia…, oddzwaniamy w
   sprawie Pana lub Pani połączenia" and presses a key to be connected, so an answering machine
   never counts as done.
3. Connected: the request is done (``turnaround_s`` from the request), the number's missed calls
   are settled, and the two talk until one hangs up. Not reached (no answer, busy, no key, no
   line): the try is counted; another follows ``retry_after_s`` later while tries and the
   promised window last; after the last one the patient gets the ``sms_unreachable`` SMS and the
   request stays open on the staff's list.

No SQL here (store/callbacks.py), no pjsua2 (the ``Leg`` interface), no queue bookkeeping (the
queue marks its agent busy and free around :meth:`CallbackCaller.serve`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from ..clock import parse_stamp, stamp
from ..errors import CentralkaError
from ..lines import CalleeRefused, NoLineAvailable
from ..messages import msg
from ..numbers import spoken_digits
from ..store import calls as store_calls
from ..store import callbacks as store
from ..tollguard import DestinationRefused
from .engine import CallerGone, CallSession
from .promise import time_of_day
from .queue import first_to_answer

log = logging.getLogger("centralka.callbacks")

AGENT_PAUSE_S = 60.0  # an agent who did not take it: offer the request again after this
PATIENT_KEY_WAIT_S = 8.0  # after each playing of the patient's prompt
MEDIA_WAIT_S = 5.0


class CallbackCaller:
    def __init__(self, services):
        self.services = services

    @property
    def conf(self):
        return self.services.settings.callbacks

    def _stamp(self) -> str:
        return self.services.clock.stamp()

    # --- one try ---------------------------------------------------------------------------------
    async def serve(self, cb: dict, agent, *, queue_name: str = "", ring_timeout: float = 20.0) -> str:
        """One try to keep request ``cb`` with ``agent`` (a queue's AgentState, already marked
        ringing by the caller of this). Returns the outcome: ``connected``, ``agent_missed``,
        ``agent_declined``, ``not_reached`` or ``taken`` (someone else is calling it)."""
        svc = self.services
        db = svc.db
        if not store.claim(db, cb["id"], at=self._stamp()):
            return "taken"
        call_id = store_calls.start_call(
            db,
            direction="out",
            line="",
            caller_raw="",
            caller=cb["number"],
            caller_kind=cb["number_kind"] or "e164",
            dialled=cb["number"],
            flow=svc.flow_name or "",
            at=self._stamp(),
        )
        legs: list = []
        outcome, result = "agent_missed", "error"
        try:
            store_calls.add_step(
                db, call_id, "callback_call", None, {"callback": cb["id"], "agent": agent.agent.id}, at=self._stamp()
            )
            desk = await self._ring_agent(agent, call_id, ring_timeout, legs)
            if desk is None:
                return outcome
            agent.ringing, agent.busy, agent.call_started = False, True, svc.clock.time()
            talk = CallSession(svc, desk, svc.flow, call_id)
            # Until the patient is dialled, an agent who hangs up has declined: no try is counted.
            outcome = "agent_declined"
            if not await self._whisper(talk, cb, queue_name):
                return outcome
            result, patient = await self._reach_patient(talk, cb, call_id, legs)
            outcome = "connected" if result == "connected" else "not_reached"
            if patient is not None:
                await self._connect(talk, patient, cb, agent, call_id)
            else:
                await self._tell_agent(talk, cb)
        except CallerGone:
            pass  # the agent hung up: what it means follows from how far the try had come
        except (CentralkaError, asyncio.TimeoutError) as exc:
            log.warning("callback #%d: %s", cb["id"], exc)
        finally:
            for leg in legs:
                if leg.alive:
                    leg.hangup()
            self._settle(cb, outcome, result, agent, call_id)
        return outcome

    async def _ring_agent(self, agent, call_id: int, timeout: float, legs: list):
        """Ring every phone of ``agent``; the first to answer, or None."""
        svc = self.services
        ringing = []
        for ext in agent.agent.phones:
            try:
                ringing.append(svc.stack.dial(svc.resolve_target(f"ext:{ext}")))
            except CentralkaError as exc:
                log.warning("callback: cannot ring %s (%s): %s", agent.agent.id, ext, exc)
        if not ringing:
            return None
        store_calls.add_step(
            svc.db, call_id, "agent_ringing", None, {"agent": agent.agent.id, "purpose": "callback"}, at=self._stamp()
        )
        winner = await first_to_answer(svc.clock, ringing, timeout)
        for leg in ringing:
            if leg is not winner:
                leg.hangup()
        if winner is not None:
            legs.append(winner)
            try:
                await asyncio.wait_for(winner.media_active.wait(), MEDIA_WAIT_S)
            except asyncio.TimeoutError:
                return None
        return winner

    def _since(self, cb: dict, lang: str) -> str:
        """When the patient asked, as the agent hears it: a time today, a date before."""

        tz = self.services.settings.tz
        asked = datetime.fromtimestamp(parse_stamp(cb["place_at"] or cb["created_at"]), tz)
        now = datetime.fromtimestamp(self.services.clock.time(), tz)
        return time_of_day(asked, lang, same_day=asked.date() == now.date())

    async def _whisper(self, talk: CallSession, cb: dict, queue_name: str) -> bool:
        """The agent hears who is waiting and why, and accepts with the key."""
        lang = self.services.settings.box.language
        key = str(self.conf.get("accept_key", "1"))
        country = self.services.settings.box.country
        text = msg(
            "callback.whisper",
            number=spoken_digits(cb["number"], country, lang),
            topic=queue_name or cb["topic"] or "",
            since=self._since(cb, lang),
            key=key,
        ).text(lang)
        talk.step(
            "callback_whisper",
            None,
            {"callback": cb["id"], "number": cb["number"], "text": text},
        )
        talk.leg.digits.clear()
        await talk.say(text, "callback_whisper", interruptible=True)
        pressed = await talk.read_key(float(self.conf.get("accept_timeout_s", 10)))
        talk.step("callback_accept", None, {"key": pressed, "accepted": pressed == key})
        return pressed == key

    async def _reach_patient(self, talk: CallSession, cb: dict, call_id: int, legs: list):
        """Dial the patient; ``(result, patient session)`` — result ``connected`` once the patient
        pressed the key, else ``no_answer``, ``busy``, ``no_key``, ``no_line`` or ``refused``."""
        svc = self.services
        lang = svc.settings.box.language
        await talk.say(msg("callback.dialling").text(lang), "callback_dialling", interruptible=False)
        tone = talk.leg.ringback()
        try:
            try:
                leg, line, e164 = await svc.lines.dial(cb["number"], "callback", call_id=call_id)
            except CalleeRefused as exc:
                talk.step("callback_dial", None, {"result": exc.outcome, "detail": str(exc)})
                return exc.outcome if exc.outcome == "busy" else "no_answer", None
            except DestinationRefused as exc:
                talk.step("callback_dial", None, {"result": "refused", "detail": str(exc)})
                return "refused", None
            except NoLineAvailable as exc:
                talk.step("callback_dial", None, {"result": "no_line", "detail": str(exc)})
                return "no_line", None
            legs.append(leg)
            store_calls.update_call(svc.db, call_id, line=line, sip_call_id=leg.sip_call_id)
            talk.step("callback_dial", None, {"line": line, "number": e164})
            ring_s = float(self.conf.get("patient_ring_s", 30))
            done, _ = await asyncio.wait(
                [
                    asyncio.ensure_future(asyncio.shield(leg.confirmed)),
                    asyncio.ensure_future(asyncio.shield(talk.leg.disconnected)),
                ],
                timeout=ring_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            talk._check_alive()
            if not (leg.confirmed.done() and leg.confirmed.result()):
                busy = leg.disconnected.done() and leg.disconnected.result().code in (486, 600)
                svc.lines.finished(leg, "busy" if busy else "no_answer")
                return ("busy" if busy else "no_answer"), None
            await asyncio.wait_for(leg.media_active.wait(), MEDIA_WAIT_S)
        finally:
            talk.leg.stop(tone)
        patient = CallSession(svc, leg, svc.flow, call_id)
        key = str(self.conf.get("patient_key", "1"))
        prompt = msg("callback.patient", clinic=svc.callbacks.clinic(cb["lang"] or lang), key=key)
        patient_lang = cb["lang"] or lang
        try:
            for _ in range(2):
                patient.leg.digits.clear()
                await patient.say(prompt.text(patient_lang), "callback_patient", interruptible=True)
                pressed = await patient.read_key(PATIENT_KEY_WAIT_S)
                if pressed == key:
                    talk.step("callback_patient_key", None, {"key": pressed})
                    return "connected", patient
        except CallerGone:
            svc.lines.finished(leg, "no_key", "hung up at the prompt")
            return "no_key", None
        svc.lines.finished(leg, "no_key", "answered, no key pressed")
        return "no_key", None

    async def _connect(self, talk: CallSession, patient: CallSession, cb: dict, agent, call_id: int):
        svc = self.services
        talk.leg.bridge(patient.leg)
        now = svc.clock.time()
        turnaround = round(now - parse_stamp(cb["created_at"]), 1)
        store.mark_done(svc.db, cb["id"], at=stamp(now), by=f"agent:{agent.agent.id}", turnaround_s=turnaround)
        store.add_attempt(svc.db, cb["id"], at=stamp(now), result="connected", agent=agent.agent.id)
        svc.lines.finished(patient.leg, "connected")
        store_calls.update_call(svc.db, call_id, answered_at=stamp(now), connected_to=f"agent:{agent.agent.id}")
        talk.step("callback_connected", None, {"callback": cb["id"], "turnaround_s": turnaround})
        log.info("callback #%d: %s connected with %s", cb["id"], agent.agent.id, cb["number"])
        await asyncio.wait(
            [
                asyncio.ensure_future(asyncio.shield(talk.leg.disconnected)),
                asyncio.ensure_future(asyncio.shield(patient.leg.disconnected)),
            ],
            return_when=asyncio.FIRST_COMPLETED,
        )

    async def _tell_agent(self, talk: CallSession, cb: dict) -> None:
        lang = self.services.settings.box.language
        last = (cb["attempts"] or 0) + 1 >= int(self.conf.get("attempts", 3))
        text = msg("callback.left_on_list" if last else "callback.retry_later").text(lang)
        try:
            await talk.say(text, "callback_not_reached", interruptible=False)
        except CallerGone:
            pass

    # --- bookkeeping -----------------------------------------------------------------------------
    def _settle(self, cb: dict, outcome: str, result: str, agent, call_id: int) -> None:
        svc = self.services
        db = svc.db
        now = svc.clock.time()
        at = stamp(now)
        try:
            if outcome == "connected":
                store_calls.update_call(db, call_id, ended_at=at, ended_by="box", outcome="callback_connected")
                return
            store_calls.update_call(db, call_id, ended_at=at, ended_by="box", outcome=f"callback_{outcome}")
            if outcome in ("agent_missed", "agent_declined"):
                store.release(db, cb["id"], at=at, next_try_at=stamp(now + AGENT_PAUSE_S))
                return
            store.add_attempt(db, cb["id"], at=at, result=result, agent=agent.agent.id)
            tries = (cb["attempts"] or 0) + 1
            retry = float(self.conf.get("retry_after_s", 600))
            nxt = now + retry
            until = parse_stamp(cb["window_until"]) if cb["window_until"] else None
            if result == "refused" or tries >= int(self.conf.get("attempts", 3)) or (until and nxt > until):
                store.release(db, cb["id"], at=at, gave_up_at=at)
                log.info("callback #%d: not reached after %d tries; stays on the list", cb["id"], tries)
                self._text_unreachable(cb)
            else:
                store.release(db, cb["id"], at=at, next_try_at=stamp(nxt))
                log.info("callback #%d: %s; next try in %.0f s", cb["id"], result, retry)
        except Exception:  # noqa: BLE001 — bookkeeping must not take the queue down
            log.exception("callback #%d: cannot store the outcome of a try", cb["id"])

    def _text_unreachable(self, cb: dict) -> None:
        lang = cb["lang"] or self.services.settings.box.language
        self.services.callbacks.text_patient(cb, "sms_unreachable", "unreachable", lang)
