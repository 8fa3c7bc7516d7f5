"""The callback offer as the caller hears it (R12): a concrete promise, a key to confirm.

"Nasz pracownik oddzwoni dzisiaj do osiemnastej na numer, z którego dzwonisz. Aby potwierdzić,
wciśnij 1." The promise comes from the business hours (flow/promise.py), so it is never a
made-up "as soon as possible" while the hours say "tomorrow from 8". When the caller ID is
hidden or not a number the box may call (tollguard's rules), the caller types one and hears it
read back in digit groups before confirming.

On confirmation the request is booked (flow/callbacks.py), the caller hears the promise again,
whether an SMS follows, and a goodbye; then the box hangs up — the second of the two hang-ups
R7 allows. Declining (another key, or silence twice) returns ``"declined"`` and the caller
goes on: back to their place in the queue, or the node's ``on_decline``.
"""

from __future__ import annotations

import logging

from ..messages import msg
from ..numbers import spoken_digits
from .callbacks import callable_number
from .promise import promise_for

log = logging.getLogger("centralka.offer")

MAX_TYPED_DIGITS = 15  # E.164 allows 15
TYPED_DIGIT_WAIT_S = 6.0  # between digits of a typed number: time to read it off a card


async def offer_callback(session, node, *, queue=None, entry=None) -> str:
    """Run the offer at ``node`` (a ``callback`` node); ``"booked"`` or ``"declined"``.

    ``queue``/``entry``: the caller came from this queue's line; the request keeps that place.
    """
    p = node.params
    services = session.services
    lang = session.flow.language
    key = p.get("confirm_key") or "1"
    timeout = p.get("timeout") or 6
    schedule = _schedule(session, p.get("schedule"))
    promise = promise_for(schedule, session.clock.now())
    session.step("callback_offer", node.id, {"promise": promise.text(lang)})

    found = callable_number(services.settings, session.caller_number)
    typed = found is None
    if p.get("prompt"):
        await session.play(p["prompt"], node=node.id)
    if typed:
        found = await _typed_number(session, node, lang)
        if found is None:
            session.step("callback_declined", node.id, {"reason": "no number"})
            return "declined"
    number, kind = found

    offer = msg("callback.offer_typed" if typed else "callback.offer", promise=promise.spoken(lang), key=key)
    for attempt in range(2):
        await session.say(offer.text(lang), "callback_offer", node=node.id)
        pressed = await session.read_key(timeout)
        if pressed == key:
            break
        if pressed is None and attempt == 0:
            continue  # silence: say it once more
        session.step("callback_declined", node.id, {"key": pressed})
        return "declined"

    if entry is not None:
        entry.booking = True  # from here on an agent picking up is too late: the caller is leaving
    topic, label, team, mode, place_at, position, waited = _topic(session, node, queue, entry)
    booking = services.callbacks.book(
        call_id=session.call_id,
        number=number,
        number_kind=kind,
        typed=typed,
        topic=topic,
        topic_label=label,
        team=team,
        queue=queue.cfg.id if queue is not None else None,
        mode=mode,
        place_at=place_at,
        position=position,
        promise_text=promise.text(lang),
        window=promise.window(schedule),
        lang=lang,
        waited_s=waited,
    )
    session.step(
        "callback_requested",
        node.id,
        {"callback": booking.id, "merged": booking.merged, "number": number, "topic": topic, "sms": booking.sms_id},
    )
    words = [msg("callback.merged" if booking.merged else "callback.confirmed", promise=promise.spoken(lang))]
    if booking.sms_id is not None and not booking.merged and services.gsm is not None:
        words.append(msg("callback.sms_follows"))
    words.append(msg("callback.goodbye"))
    await session.say(" ".join(w.text(lang) for w in words), "callback_confirmed", node=node.id, interruptible=False)
    session.hang_up_after_callback(node)
    return "booked"


def _schedule(session, name):
    if name:
        return session.schedule(name)
    if len(session.flow.schedules) == 1:
        return session.schedule(next(iter(session.flow.schedules)))
    return None  # no business hours in the flow: open round the clock


def _topic(session, node, queue, entry):
    """What the request is about and where in line the caller stood."""
    p = node.params
    waited = place_at = position = None
    if queue is not None:
        topic, label = queue.cfg.id, queue.cfg.name
        team = p.get("team") or queue.cfg.team or queue.cfg.id
        mode = queue.cfg.callback_mode
        if entry is not None:
            position = queue.position(entry) or None
            waited = round(session.clock.monotonic() - entry.joined, 1)
            place_at = entry.joined_at
    else:
        topic = p.get("topic") or session.last_choice or node.id
        label = topic
        team = p.get("team") or topic
        mode = "list"
    return p.get("topic") or topic, label, team, mode, place_at, position, waited


async def _typed_number(session, node, lang):
    """Ask for a number, read it back, confirm; ``(E.164, type)`` or None after two failures."""
    country = session.services.settings.box.country
    for _ in range(2):
        session.leg.digits.clear()
        await session.say(msg("callback.ask_number").text(lang), "callback_ask_number", node=node.id)
        typed = await _read_digits(session)
        found = callable_number(session.services.settings, typed) if typed else None
        session.step("callback_number_typed", node.id, {"digits": len(typed or ""), "callable": found is not None})
        if found is None:
            if typed:
                await session.say(msg("callback.bad_number").text(lang), "callback_bad_number", node=node.id)
            continue
        digits = spoken_digits(found[0], country, lang)
        await session.say(msg("callback.read_back", digits=digits).text(lang), "callback_read_back", node=node.id)
        pressed = await session.read_key(8)
        if pressed == "1":
            return found
    return None


async def _read_digits(session) -> str:
    """Digits up to ``#`` (or a pause); ``*`` starts over."""
    typed = ""
    while len(typed) < MAX_TYPED_DIGITS:
        pressed = await session.read_key(TYPED_DIGIT_WAIT_S if typed else 10.0)
        if pressed is None or pressed == "#":
            break
        if pressed == "*":
            typed = ""
            continue
        typed += pressed
    return typed
