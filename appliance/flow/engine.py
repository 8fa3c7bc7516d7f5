"""The per-call flow engine: walks a validated flow for one caller.

State lives here, not in pjsua2 objects: the engine only uses the ``Leg`` interface (answer,
play, ringback, bridge, hangup, digits, futures) so a build with more calls, or several media
processes, changes nothing above ``sip/``.

Promises kept here, whatever the flow says:
- any failure, including an exception in this file, ends with the operator ringing (R6);
- the box never hangs up first except at a ``hangup`` node the doctor allowed (R7);
- while a phone rings the caller hears ringback and a reminder at least every 15 s (R8);
- digits pressed early (during the greeting, or post-dial digits) are kept, not dropped (R3).
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import CallLimitReached, SipError
from ..messages import msg
from ..store import calls as store_calls
from ..store import hours as store_hours
from .announce import position_announcement
from .callbacks import GAVE_UP_AT, e164_of
from .doctor import MAX_HANDOVERS  # R18: the doctor checks the same bound statically
from .hours import overridden
from .offer import offer_callback
from .promise import closed_message

log = logging.getLogger("centralka.flow")

# Between digits of an extension: long enough for an elderly caller, short for post-dial digits.
INTER_DIGIT_S = 3.0
MEDIA_WAIT_S = 3.0
ACK_WAIT_S = 34.0  # 64 x T1 (pjsip's 2xx retransmissions), then a margin
OPERATOR_RETRY_PAUSE_S = 2.0
DIGITS = set("0123456789*#")
# Outcomes of a call that reached nobody and left no request: a missed call (R13). A box
# hang-up after a goodbye to a caller who chose nothing counts too; the staff may call back.
MISSED_OUTCOMES = ("caller_hangup", "goodbye", "error")
# Nodes that would ring, queue or book for a person: a self-test call stops before them.
PERSON_NODES = ("transfer", "queue", "operator", "callback", "voicemail")


class CallerGone(Exception):
    """The caller hung up; the flow stops quietly."""


class CallSession:
    """One inbound call walking the flow; ``services`` gives the prompts, the stack, the queues,
    the database and the clock (appliance.services)."""

    def __init__(self, services, leg, flow, call_id: int, *, selftest=None):
        self.services = services
        # The box's own self-test call (appliance.selftest.call.Probe): walked like a patient's
        # up to the first node that would ring or book for a person, then told it got there.
        self.selftest = selftest
        self.clock = services.clock
        self.leg = leg
        self.flow = flow
        self.call_id = call_id
        self.handovers = 0
        self.outbound = None
        self.node_id = None
        self.ended_by = None
        self.outcome = None
        self.connected_to = None
        self.last_choice = None  # the menu option chosen last: a callback's topic outside a queue
        self.topic = None  # the queue (or choice) the caller was about, for the missed-call list
        leg.owner = self

    # --- journey ---------------------------------------------------------------------------
    def step(self, step: str, node: str | None = None, detail=None):
        try:
            store_calls.add_step(self.services.db, self.call_id, step, node, detail, at=self.clock.stamp())
        except Exception:  # noqa: BLE001 — a full disk must not drop the caller
            log.exception("call %s: cannot store step %s", self.call_id, step)

    # --- media helpers ---------------------------------------------------------------------
    def _check_alive(self):
        if not self.leg.alive:
            raise CallerGone()

    async def _wait_any(self, timeout: float | None, *, digits: bool = False, extra=()):
        """Wait for timeout, caller hang-up, (optionally) a digit, or extra awaitables."""
        waits = [asyncio.ensure_future(asyncio.shield(self.leg.disconnected))]
        if digits:
            self.leg.digit_event.clear()
            if self.leg.digits:
                self.leg.digit_event.set()
            waits.append(asyncio.ensure_future(self.leg.digit_event.wait()))
        waits.extend(asyncio.ensure_future(e) for e in extra)
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if not w.done():
                    w.cancel()
        self._check_alive()
        return done

    async def play(self, prompt: str, *, interruptible: bool = True, node: str | None = None) -> bool:
        """Play a prompt to the end; True if a digit cut it short (barge-in)."""
        self._check_alive()
        if interruptible and self.leg.digits:
            return True
        return await self.play_path(
            self.services.prompts.path(prompt, self.flow), prompt, interruptible=interruptible, node=node
        )

    async def play_path(
        self, path, name: str, *, interruptible: bool = True, node: str | None = None, until=()
    ) -> bool:
        """Play a file; a digit (when ``interruptible``) or any of ``until`` (futures: an agent
        answered) ends it early."""
        duration = self.services.prompts.duration(path)
        music = None
        try:
            player = self.leg.play(path)
        except SipError as exc:
            self._check_alive()  # the caller hung up just now: gone, not an error of ours
            # No player to be had (a pool of the build ran out): the caller stays and hears the
            # shared hold music (no player of their own needed) for the prompt's length, and the
            # flow goes on at its pace — never a dropped call for a missing resource.
            player = None  # (stop() ignores it)
            shared = self.services.hold_music
            music = shared if shared is not None and self.leg.listen(shared) else None
            log.warning("call %s: prompt %s not played: %s", self.call_id, name, exc)
            self.step(
                "play_failed",
                node,
                {"prompt": name, "error": str(exc), "instead": "hold_music" if music else "silence"},
            )
        else:
            self.step("play", node, {"prompt": name, "seconds": round(duration, 2)})
        try:
            await self._wait_any(duration + 0.15, digits=interruptible, extra=[asyncio.shield(f) for f in until])
        finally:
            self.leg.stop(player)
            if music is not None:
                self.leg.unlisten(music)
        return interruptible and bool(self.leg.digits)

    async def say(self, text: str, name: str, *, node: str | None = None, interruptible: bool = True, until=()) -> bool:
        """Speak a generated sentence (synthesised off the loop, cached by text)."""
        self._check_alive()
        if interruptible and self.leg.digits:
            return True
        path = await asyncio.get_running_loop().run_in_executor(None, self.services.prompts.synthesise, text, name)
        if any(f.done() for f in until):
            return False
        return await self.play_path(path, name, interruptible=interruptible, node=node, until=until)

    async def read_key(self, timeout: float) -> str | None:
        """The next key the caller presses (one already pressed counts), or None after ``timeout``."""
        if not self.leg.digits:
            await self._wait_any(timeout, digits=True)
        return self.leg.digits.pop(0) if self.leg.digits else None

    def schedule(self, name: str):
        """The flow's business hours ``name`` with any manual override a person set."""
        return overridden(self.flow.schedule(name), store_hours.override(self.services.db, name))

    def hang_up_after_callback(self, node) -> None:
        """R7 (b): the request is confirmed and the caller heard the goodbye; the box hangs up."""
        self.step("hangup", node.id, {"by": "box", "after": "callback"})
        self.ended_by = "box"
        self.outcome = "callback"
        self.leg.hangup()

    # --- the walk --------------------------------------------------------------------------
    async def run(self):
        leg = self.leg
        try:
            try:
                if not leg.alive:
                    raise CallerGone()  # cancelled before we could answer
                try:
                    leg.answer(200)
                except SipError:
                    if not leg.alive:
                        raise CallerGone() from None
                    raise
                self.step("answered", None, {"from": leg.remote_uri, "to": leg.local_uri})
                store_calls.update_call(self.services.db, self.call_id, answered_at=self.clock.stamp())
                # A caller who hangs up (or whose ACK brought no usable answer) before the audio
                # starts is gone, not an error of ours.
                await self._wait_any(MEDIA_WAIT_S, extra=[leg.media_active.wait()])
                if not leg.media_active.is_set():
                    raise TimeoutError(f"no audio within {MEDIA_WAIT_S:g} s of answering")
                # The caller's ACK confirms the call (milliseconds after the 200 OK). Without it
                # (a spoofed source, a NAT that eats it) nobody is there: never walk such a call
                # to a receptionist's phone. pjsua ends it when its retransmissions give up.
                if not leg.confirmed.done():
                    await self._wait_any(ACK_WAIT_S, extra=[asyncio.shield(leg.confirmed)])
                if not (leg.confirmed.done() and leg.confirmed.result()):
                    raise CallerGone()
                await self.walk(self.flow.start)
            except CallerGone:
                raise
            except Exception as exc:  # noqa: BLE001 — R6: every failure ends at the operator
                log.exception("call %s: error at node %s; sending caller to the operator", self.call_id, self.node_id)
                self.step("error", self.node_id, {"error": f"{type(exc).__name__}: {exc}"})
                await self._cleanup_outbound()
                await self.operator(reason="error")
        except CallerGone:
            pass
        except Exception:  # noqa: BLE001 — even the operator path failed; keep the record honest
            log.exception("call %s: the operator path failed", self.call_id)
            self.step("error", self.node_id, {"error": "operator path failed"})
        finally:
            await self._finish()

    async def walk(self, node_id: str):
        # The doctor guarantees the graph has no cycles, so this ends; the counter is a seatbelt.
        for _ in range(len(self.flow.nodes) + 2):
            self._check_alive()
            self.node_id = node_id
            node = self.flow.nodes[node_id]
            if self.selftest is not None and node.type in PERSON_NODES:
                await self._selftest_arrived(node)
                return
            if self.services.faults is not None:
                self.services.faults.at_node(node_id, self.services)  # tests only (appliance.testing.faults)
            handler = getattr(self, f"node_{node.type}")
            nxt = await handler(node)
            if nxt is None:
                return
            node_id = nxt
        raise RuntimeError("flow did not end (cycle?)")

    async def node_play(self, node):
        self.step("enter", node.id, {"type": "play"})
        await self.play(node.params["prompt"], interruptible=node.params.get("interruptible", True), node=node.id)
        return node.params["next"]

    async def node_menu(self, node):
        p = node.params
        options = p["options"]
        extensions = self.flow.extensions if p.get("extensions") else {}
        self.step("enter", node.id, {"type": "menu"})
        if self.selftest is not None:
            self.selftest.menu(node.id, options)
        attempts = 0
        while True:
            if not self.leg.digits:
                await self.play(p["prompt"], node=node.id)
            entered = await self._collect(options, extensions, p["timeout"])
            if entered is None:
                self.step("no_input", node.id)
                return p["on_timeout"]
            if entered in options:
                self.step("choice", node.id, {"key": entered, "to": options[entered]})
                if self.selftest is not None:
                    self.selftest.chose(node.id, entered, options[entered])
                self.last_choice = self.topic = options[entered]
                return options[entered]
            if entered in extensions:
                self.step("extension", node.id, {"number": entered, "to": extensions[entered]})
                return extensions[entered]
            attempts += 1
            self.step("invalid", node.id, {"entered": entered, "attempt": attempts})
            if attempts > p["repeats"]:
                return p["on_invalid"]
            self.leg.digits.clear()
            await self.play("invalid_choice", interruptible=False, node=node.id)

    async def _collect(self, options: dict, extensions: dict, timeout: float) -> str | None:
        """Read one choice: a menu key, or a whole extension number when one is possible."""
        entered = ""
        wait = timeout
        while True:
            if not self.leg.digits:
                done = await self._wait_any(wait, digits=True)
                if not done:
                    return entered or None
                if not self.leg.digits:
                    continue
            entered += self.leg.digits.pop(0)
            longer = [x for x in extensions if x.startswith(entered) and x != entered]
            if entered in extensions and not longer:
                return entered
            if len(entered) == 1 and entered in options and not longer:
                return entered
            if not longer:
                return entered  # no option, no extension begins like this: a wrong choice
            wait = INTER_DIGIT_S

    async def node_transfer(self, node):
        p = node.params
        self.step("enter", node.id, {"type": "transfer", "target": p["target"]})
        if p.get("prompt"):
            await self.play(p["prompt"], interruptible=False, node=node.id)
        answered = await self.connect(node, p["target"], p["ring_timeout"], p["remind_every"])
        if answered:
            return None
        return p.get("on_fail") or self.flow.operator

    async def node_queue(self, node):
        """Wait for an agent with hold music and honest announcements (R8–R11); a key asks for a
        callback at any time, keeping the caller's place (R12)."""
        p = node.params
        queues = self.services.queues
        q = queues.get(p["queue"]) if queues else None
        if q is None:
            raise RuntimeError(f"queue {p['queue']!r} is not configured (centralka staff import)")
        self.step("enter", node.id, {"type": "queue", "queue": p["queue"]})
        self.topic = p["queue"]
        callback = self.flow.nodes.get(p.get("callback") or "")
        callback_key = (p.get("callback_key") or "1") if callback is not None else ""
        if p.get("prompt"):
            await self.play(p["prompt"], interruptible=False, node=node.id)
        if q.cfg.when_no_agents == "leave" and not q.can_serve():
            queues.leave(queues.join(q, self), "no_agents")
            self.step("queue_left", node.id, {"reason": "no_agents"})
            return p["on_no_agents"]
        self.handovers += 1
        entry = queues.join(q, self)
        music = self.services.hold_music
        reason = "caller_hangup"
        keys = {k for k in (p.get("leave_key"), callback_key) if k}
        try:
            started = self.clock.monotonic()
            deadline = started + p["max_wait"]
            last_announce = -1e9
            next_announce = started
            offer_at = started + p.get("offer_after", 600)
            # Keys pressed before joining (during the queue's prompt) still count; others go.
            self.leg.digits[:] = [d for d in self.leg.digits if d in keys]
            while not entry.answered.done():
                now = self.clock.monotonic()
                if callback_key and callback_key in self.leg.digits:
                    self.leg.digits.clear()
                    if music is not None:
                        self.leg.unlisten(music)
                    outcome = await self._offer_from_queue(callback, q, entry)
                    if outcome == "booked":
                        reason = "callback"
                        break
                    if outcome == "answered":
                        break
                    continue
                if now >= deadline:
                    reason = "timeout"
                    break
                if q.cfg.when_no_agents == "leave" and not q.can_serve():
                    reason = "no_agents"
                    break
                if now >= next_announce:
                    # The period runs from the start of one announcement to the next.
                    next_announce = now + p["announce_every"]
                    if now - last_announce >= q.cfg.announce_min_gap_s:
                        last_announce = now
                        offer = callback_key if callback_key and now >= offer_at else ""
                        await self._announce_position(q, entry, node, music, offer_key=offer, keys=keys)
                    continue
                if music is not None:
                    self.leg.listen(music)
                await self._wait_any(
                    min(deadline, next_announce, offer_at if offer_at > now else deadline) - now,
                    digits=bool(keys),
                    extra=(asyncio.shield(entry.answered),),
                )
                if p.get("leave_key") and p["leave_key"] in self.leg.digits:
                    reason = "left_by_key"
                    break
                self.leg.digits[:] = [d for d in self.leg.digits if d == callback_key]
        finally:
            if music is not None:
                self.leg.unlisten(music)
            if not entry.answered.done():
                queues.leave(entry, reason if self.leg.alive or reason == "callback" else "caller_hangup")
        if reason == "callback" and not entry.answered.done():
            return None  # booked: the caller heard the goodbye and the box hung up (R7 b)
        if not entry.answered.done():
            self.step("queue_left", node.id, {"reason": reason, "waited_s": round(self.clock.monotonic() - started, 1)})
            return {"timeout": p["on_timeout"], "left_by_key": p["on_leave"]}.get(reason, p["on_no_agents"])
        agent, out = entry.answered.result()
        self.step(
            "queue_answered", node.id, {"agent": agent.agent.id, "waited_s": round(self.clock.monotonic() - started, 1)}
        )
        talk_start = self.clock.monotonic()
        try:
            await self.converse(out, node, f"agent:{agent.agent.id}", "connected")
        finally:
            queues.call_ended(entry, agent, self.clock.monotonic() - talk_start)
        return None

    async def _announce_position(self, q, entry, node, music, *, offer_key: str = "", keys=()):
        """Position and estimated wait in grammatical Polish (R10), to every caller, the first in
        line too. The wait said never rises between two announcements to the same caller unless
        fewer agents serve the queue now — and then the caller is told why."""
        ahead = q.position(entry) - 1
        # While an agent's phone rings for this caller the wait is that ring, not a whole call
        # of the agent's: the position is said, no estimate (and none is kept as said).
        wait = None if entry.ringing else q.estimate(entry)
        if wait == 0.0 and ahead == 0:
            return  # an agent is free this moment: the phone rings, there is nothing to wait for
        wait = None if wait == float("inf") else wait
        serving = q.serving_count()
        longer = False
        if wait is not None and entry.said_wait is not None and wait > entry.said_wait:
            if serving < entry.said_serving:
                longer = True
            else:
                wait = entry.said_wait  # a rise without a reason would only be noise in the model
        if wait is not None:
            entry.said_wait, entry.said_serving = wait, serving
            entry.announced.append((self.clock.monotonic(), wait, ahead + 1))
        lang = self.flow.language
        text = position_announcement(ahead, wait, lang=lang, longer=longer)
        if offer_key:
            text += " " + msg("callback.offer_in_queue", key=offer_key).text(lang)
        if music is not None:
            self.leg.unlisten(music)
        self.step(
            "announce",
            node.id,
            {
                "ahead": ahead,
                "wait_s": None if wait is None else round(wait),
                "offer": bool(offer_key),
                "longer": longer,
            },
        )
        # An agent who answers meanwhile cuts it short: a person beats an announcement.
        await self.say(text, "queue_position", node=node.id, interruptible=bool(keys), until=(entry.answered,))

    async def _offer_from_queue(self, callback, q, entry) -> str:
        """The callback offer while the caller keeps their place: ``booked``, ``declined``, or
        ``answered`` (an agent picked up meanwhile: a person beats a promise)."""
        entry.offering = True
        self.step("callback_key", callback.id, {"queue": q.cfg.id, "position": q.position(entry)})
        offer = asyncio.ensure_future(offer_callback(self, callback, queue=q, entry=entry))
        try:
            answered = asyncio.ensure_future(asyncio.shield(entry.answered))
            await asyncio.wait([offer, answered], return_when=asyncio.FIRST_COMPLETED)
            answered.cancel()
            if not offer.done() and entry.answered.done() and not entry.booking:
                offer.cancel()
                await asyncio.gather(offer, return_exceptions=True)
                return "answered"
            outcome = await offer
        finally:
            entry.offering = False
            q.wake.set()
        if outcome == "declined":
            await self.say(msg("callback.back_in_line").text(self.flow.language), "back_in_line", node=callback.id)
        return outcome

    async def node_time(self, node):
        """Business hours decide the way on; closed, the caller hears the real hours (R14)."""
        p = node.params
        schedule = self.schedule(p["schedule"])
        now = self.clock.now()
        is_open = schedule.is_open(now)
        self.step("enter", node.id, {"type": "time", "schedule": p["schedule"], "open": is_open})
        if not is_open and p.get("announce", True):
            text = closed_message(schedule, now, self.flow.language)
            await self.say(text, "closed", node=node.id, interruptible=False)
        return p["open"] if is_open else p["closed"]

    async def node_callback(self, node):
        self.step("enter", node.id, {"type": "callback"})
        # Straight from a queue nobody could serve, the request still belongs to that queue; after
        # hours it belongs to the queue the node's topic names (called back from there, in turn).
        queues = self.services.queues
        about = node.params.get("topic") or self.topic
        q = queues.get(about) if queues is not None and about else None
        if await offer_callback(self, node, queue=q) == "booked":
            return None
        return node.params["on_decline"]

    async def node_voicemail(self, node):
        from .voicemail import take_message

        self.step("enter", node.id, {"type": "voicemail"})
        await take_message(self, node)
        return node.params["next"]

    async def node_operator(self, node):
        await self.operator(reason="flow", node=node)
        return None

    async def node_hangup(self, node):
        # The doctor admits this node only after a goodbye to a caller who chose nothing (R7).
        self.step("hangup", node.id, {"by": "box"})
        self.ended_by = "box"
        self.outcome = "goodbye"
        self.leg.hangup()
        return None

    async def operator(self, reason: str, node=None):
        """R6: ring the operator until a human answers or the caller gives up. Never hangs up."""
        node = node or self.flow.nodes.get(self.flow.operator)
        if node is None or node.type != "operator":
            raise RuntimeError("flow has no operator")  # the doctor refuses such flows
        if self.selftest is not None:
            await self._selftest_arrived(node, reason=reason)
            return
        p = node.params
        self.node_id = node.id
        self.step("operator", node.id, {"reason": reason, "target": p["target"]})
        first = True
        while True:
            self._check_alive()
            prompt = p.get("prompt") or ("to_operator" if first else None)
            if prompt:
                await self.play(prompt, interruptible=False, node=node.id)
            first = False
            if await self.connect(node, p["target"], p["ring_timeout"], p["remind_every"], is_operator=True):
                return
            await self.play("still_connecting", interruptible=False, node=node.id)
            await self._wait_any(OPERATOR_RETRY_PAUSE_S)

    async def connect(
        self, node, target: str, ring_timeout: float, remind_every: float, is_operator: bool = False
    ) -> bool:
        """Ring ``target`` with ringback and reminders; bridge and stay until the end if answered."""
        self._check_alive()
        if not is_operator:
            self.handovers += 1
            if self.handovers > MAX_HANDOVERS:
                self.step("too_many_transfers", node.id, {"handovers": self.handovers})
                return False
        try:
            store_calls.count_transfer(self.services.db, self.call_id)
        except Exception:  # noqa: BLE001
            log.exception("cannot count transfer")
        self.step("transfer", node.id, {"target": target})
        try:
            out = self.services.stack.dial(self.services.resolve_target(target))
        except CallLimitReached as exc:
            log.warning("call %s: %s", self.call_id, exc)
            self.step("transfer_failed", node.id, {"target": target, "reason": "call limit"})
            await self.play("all_lines_busy", interruptible=False, node=node.id)
            return False
        except SipError as exc:
            self.step("transfer_failed", node.id, {"target": target, "reason": str(exc)})
            return False
        self.outbound = out
        out.owner = self
        tone = self._ringback()
        started = self.clock.monotonic()
        next_reminder = started + remind_every
        try:
            while True:
                now = self.clock.monotonic()
                left = ring_timeout - (now - started)
                if left <= 0:
                    self.step("transfer_failed", node.id, {"target": target, "reason": "no answer"})
                    out.hangup()
                    return False
                wait = min(left, max(0.0, next_reminder - now))
                done = await self._wait_any(
                    wait, extra=(asyncio.shield(out.confirmed), asyncio.shield(out.disconnected))
                )
                if out.disconnected.done():
                    d = out.disconnected.result()
                    self.step("transfer_failed", node.id, {"target": target, "code": d.code, "reason": d.reason})
                    return False
                if out.confirmed.done() and out.confirmed.result():
                    break
                if not done and self.clock.monotonic() >= next_reminder:
                    # R8: tell the caller what is happening instead of endless ringing.
                    self.leg.stop(tone)
                    await self.play("still_connecting", interruptible=False, node=node.id)
                    tone = self._ringback()
                    next_reminder = self.clock.monotonic() + remind_every
        finally:
            self.leg.stop(tone)
            tone = None  # a pj object kept alive by this frame (in converse) outlives the library
            if not (out.confirmed.done() and out.confirmed.result()):
                # No answer, a refusal, or the caller gave up while it rang: stop the ringing phone.
                out.hangup()
                self.outbound = None
        return await self.converse(out, node, target, "operator" if is_operator else "connected")

    def _ringback(self):
        """The ringback tone, or none when the bridge has no port for it (the call goes on)."""
        try:
            return self.leg.ringback()
        except SipError as exc:
            self._check_alive()
            log.warning("call %s: no ringback tone: %s", self.call_id, exc)
            return None

    async def converse(self, out, node, target: str, outcome: str) -> bool:
        """An answered leg: bridge it with the caller and stay until one side hangs up."""
        self.outbound = out
        out.owner = self
        try:
            await asyncio.wait_for(out.media_active.wait(), MEDIA_WAIT_S)
        except asyncio.TimeoutError:
            self.step("transfer_failed", node.id, {"target": target, "reason": "no audio"})
            out.hangup()
            self.outbound = None
            return False
        if not self.leg.alive:
            out.hangup()  # the caller gave up just as the phone was picked up
            self.outbound = None
            raise CallerGone()
        self.leg.bridge(out)
        self.connected_to = target
        self.outcome = outcome
        self.step("connected", node.id, {"target": target, "user": out.remote_user})
        store_calls.update_call(self.services.db, self.call_id, connected_to=target)
        self._reached_a_person()
        await asyncio.wait(
            [
                asyncio.ensure_future(asyncio.shield(self.leg.disconnected)),
                asyncio.ensure_future(asyncio.shield(out.disconnected)),
            ],
            return_when=asyncio.FIRST_COMPLETED,
        )
        # One side hung up: the conversation is over, so ending the other side is expected.
        self.ended_by = "caller" if _hung_up_remotely(self.leg) else "agent" if _hung_up_remotely(out) else "box"
        out.hangup()
        self.leg.hangup()
        self.outbound = None
        return True

    async def _cleanup_outbound(self):
        out, self.outbound = self.outbound, None
        if out is not None and out.alive:
            out.hangup()

    async def _finish(self):
        await self._cleanup_outbound()
        if self.leg.alive:
            # Only reached when the engine itself gave up; R7 forbids hanging up, so log loudly.
            log.error("call %s: session ended with the caller still on the line", self.call_id)
            self.ended_by = self.ended_by or "box"
            self.leg.hangup()
        by = self.ended_by or ("caller" if _hung_up_remotely(self.leg) else "box")
        if self.outcome is None:
            self.outcome = "caller_hangup" if by == "caller" else "error"
        self.step("hangup", self.node_id, {"by": by})
        try:
            store_calls.update_call(
                self.services.db, self.call_id, ended_at=self.clock.stamp(), ended_by=by, outcome=self.outcome
            )
        except Exception:  # noqa: BLE001
            log.exception("call %s: cannot store the end of the call", self.call_id)
        if self.selftest is not None:
            self.selftest.session_ended(self.outcome)
        elif self.outcome in MISSED_OUTCOMES:
            self._missed()

    async def _selftest_arrived(self, node, reason: str = "flow") -> None:
        """The self-test call got as far as a person: say so to the calling side and hang up."""
        self.node_id = node.id
        self.step("selftest_reached", node.id, {"type": node.type, "reason": reason})
        self.selftest.reached(node.id, node.type)
        self.outcome = "selftest"
        await self.play("selftest_ok", interruptible=False, node=node.id)
        self.ended_by = "box"
        self.leg.hangup()

    def _caller(self) -> dict | None:
        try:
            return store_calls.get_call(self.services.db, self.call_id)
        except Exception:  # noqa: BLE001 — a record problem must not end the call differently
            log.exception("call %s: cannot read the call", self.call_id)
            return None

    @property
    def caller_number(self) -> str:
        """The caller's E.164 number, or "" when hidden or not a phone number."""
        return e164_of(self._caller())

    def _missed(self) -> None:
        """R13: a caller who reached nobody and asked for nothing stays on the list until settled."""
        book = self.services.callbacks
        call = self._caller()
        if book is None or call is None:
            return
        node = self.flow.nodes.get(self.node_id or "")
        try:
            book.missed_call(
                call,
                gave_up=GAVE_UP_AT.get(node.type, node.type) if node is not None else "greeting",
                node=self.node_id,
                topic=self.topic,
            )
        except Exception:  # noqa: BLE001
            log.exception("call %s: cannot record the missed call", self.call_id)

    def _reached_a_person(self) -> None:
        """The caller talks to someone: their earlier missed calls are settled (called again)."""
        book = self.services.callbacks
        number = self.caller_number
        if book is not None and number:
            try:
                book.reached(number, "called_again")
            except Exception:  # noqa: BLE001
                log.exception("call %s: cannot settle missed calls", self.call_id)


def _hung_up_remotely(leg) -> bool:
    return leg.disconnected.done() and leg.disconnected.result().by == "remote"
