"""The callback book: requests, missed calls and voice messages, kept until someone acted (R12–R15).

No audio here: the caller's side of the dialogue is ``flow/offer.py``; this is what happens
once the caller confirmed, or hung up without reaching anyone, and what staff do with the list
(``centralka callbacks``). Every write goes through store/; messages to people go through the
durable outboxes (SMS: gsm/outbox.py, e-mail: notify/mail.py), so a modem or mail outage
delays them and loses nothing.

- :meth:`CallbackBook.book` stores a confirmed request (merged into an open one of the same
  number), settles that number's missed calls, queues the confirming SMS once per request and
  the e-mail to the topic's team.
- :meth:`CallbackBook.missed` records a call that ended without a human and without a request.
- :meth:`CallbackBook.reached` settles a number's missed calls once a person talked to it.
- :meth:`CallbackBook.escalate_overdue` raises one alarm per request whose window ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from ..alarms import raise_alarm
from ..clock import SYSTEM_CLOCK, parse_stamp, stamp
from ..errors import CentralkaError
from ..messages import msg
from ..numbers import for_people
from ..store import callbacks as store
from ..store import calls as store_calls
from ..store import missed as store_missed
from ..store import voicemails as store_voicemails
from ..store.db import transaction
from ..tollguard import DestinationRefused, OutboundPolicy, parse_destination

log = logging.getLogger("centralka.callbacks")

# Where a caller gave up, by the type of the flow node they were at.
GAVE_UP_AT = {"menu": "menu", "play": "greeting", "queue": "queue", "transfer": "ringing", "operator": "operator"}


@dataclass(frozen=True)
class Booking:
    id: int
    merged: bool
    sms_id: int | None
    emailed: bool


def e164_of(call: dict | None) -> str:
    """The caller's E.164 number from a stored call, or "" (hidden, not a phone number)."""
    return call["caller"] if call is not None and call["caller_kind"] == "e164" else ""


def callable_number(settings, number: str | None) -> tuple[str, str] | None:
    """``(E.164, type)`` when the box may call ``number`` back (the toll-fraud rules), else None."""
    if not number:
        return None
    try:
        return parse_destination(number, OutboundPolicy.from_settings(settings))
    except DestinationRefused:
        return None


class CallbackBook:
    def __init__(self, services):
        self.services = services

    @property
    def db(self):
        return self.services.db

    @property
    def settings(self):
        return self.services.settings

    @property
    def clock(self):
        return self.services.clock or SYSTEM_CLOCK

    @property
    def country(self) -> str:
        return self.settings.box.country

    def clinic(self, lang: str) -> str:
        name = self.settings.box.clinic_name.strip()
        return name or ("Przychodnia" if lang == "pl" else "The clinic")

    # --- a caller asked -------------------------------------------------------------------------
    def book(
        self,
        *,
        call_id: int | None,
        number: str,
        number_kind: str,
        typed: bool,
        topic: str,
        topic_label: str,
        team: str,
        queue: str | None,
        mode: str,
        place_at: str | None,
        position: int | None,
        promise_text: str,
        window: tuple[datetime, datetime | None],
        lang: str,
        waited_s: float | None = None,
        patient: str | None = None,
    ) -> Booking:
        now = self.clock.stamp()
        window_from, window_until = window
        # The request, its SMS and its e-mail commit together: a power cut in between must not
        # leave a request whose patient is never told, nor a confirmation of no request.
        with transaction(self.db):
            cb_id, merged = store.request(
                self.db,
                at=now,
                number=number,
                number_kind=number_kind,
                typed=typed,
                call_id=call_id,
                topic=topic,
                team=team,
                queue=queue,
                mode=mode,
                place_at=place_at,
                position=position,
                window_from=stamp(window_from.timestamp()),
                window_until=stamp(window_until.timestamp()) if window_until else None,
                promise=promise_text,
                lang=lang,
                patient=patient,
            )
            settled = store_missed.close_for_number(self.db, number, at=now, by="callback")
            log.info(
                "callback #%d %s for %s (%s, %s)%s",
                cb_id,
                "merged" if merged else "booked",
                number,
                topic,
                promise_text,
                f"; {settled} missed call(s) settled" if settled else "",
            )
            row = store.get(self.db, cb_id)
            # One confirmation per request: a merged repeat does not text the caller again.
            sms_id = self.text_patient(row, "sms_confirm", "confirm", lang, wake=False)
            emailed = self._email_team(row, topic_label, lang, waited_s)
        if sms_id is not None:
            self.services.wake_sms()
        if self.services.queues is not None and mode == "auto":
            self.services.queues.kick()  # the request now stands in its queue's line
        return Booking(cb_id, merged, sms_id, emailed)

    def text_patient(self, row: dict, template: str, what: str, lang: str, *, wake: bool = True) -> int | None:
        """Queue ``[callbacks] {template}_{lang}`` to the request's number, once per request and
        ``what`` (the outbox's dedupe key); None when no SMS may go (not a mobile, a cap, an
        error: logged)."""
        from ..gsm.outbox import SmsRefused, queue_sms
        from ..gsm.smstext import render_template

        conf = self.settings.callbacks
        text_of = conf.get(f"{template}_{lang}") or conf.get(f"{template}_pl")
        try:
            text = render_template(
                text_of,
                clinic=self.clinic(lang),
                promise=row["promise"] or "",
                number=for_people(row["number"], self.country),
            )
            sms_id = queue_sms(
                self.db,
                row["number"],
                text,
                kind="callback",
                settings=self.settings,
                dedupe_key=f"callback:{row['id']}:{what}",
                now=self.clock.time(),
            )
        except SmsRefused as exc:
            log.info("callback #%d: no %s SMS to %s: %s", row["id"], what, row["number"], exc)
            return None
        except CentralkaError as exc:
            log.warning("callback #%d: %s SMS not queued: %s", row["id"], what, exc)
            return None
        if wake:
            self.services.wake_sms()
        return sms_id

    def _email_team(self, row: dict, topic_label: str, lang: str, waited_s: float | None) -> bool:
        from ..notify.mail import callback_request_message, enqueue_mail

        req = {**row, "topic_label": topic_label, "waited_s": waited_s, "typed": bool(row["typed"])}
        mail = self.settings.mail
        prefix = f"{mail.subject_prefix.strip()} " if mail.subject_prefix.strip() else ""
        subject, body = callback_request_message(
            req, self.settings.box.language, prefix=prefix, tz=self.tz, country=self.country
        )
        key = f"callback:{row['id']}:request:{row['requests']}"
        try:
            queued = enqueue_mail(
                self.db,
                self.settings,
                key=key,
                kind="callback",
                team=row["team"] or row["topic"] or "",
                subject=subject,
                body=body,
                at=self.clock.stamp(),
            )
        except CentralkaError as exc:
            log.warning("callback #%d: e-mail not queued: %s", row["id"], exc)
            return False
        return queued is not None

    @property
    def tz(self):
        return self.settings.tz

    # --- a caller gave up -----------------------------------------------------------------------
    def missed(
        self,
        *,
        call_id: int,
        number: str,
        number_kind: str,
        started_at: str,
        gave_up: str,
        node: str | None,
        topic: str | None,
    ) -> int | None:
        """Record a missed call, unless the number has an open request (it covers this call)."""
        if number and store.open_for_number(self.db, number) is not None:
            return None
        now = self.clock.stamp()
        waited = max(0.0, self.clock.time() - parse_stamp(started_at)) if started_at else None
        missed_id = store_missed.add(
            self.db,
            call_id=call_id,
            number=number,
            number_kind=number_kind,
            started_at=started_at,
            ended_at=now,
            waited_s=round(waited, 1) if waited is not None else None,
            gave_up=gave_up,
            node=node,
            topic=topic,
        )
        if missed_id is not None:
            log.info("missed call #%d from %s (gave up: %s, %.0f s)", missed_id, number, gave_up, waited or 0)
        return missed_id

    def calls_cut_off(self) -> int:
        """At start: calls the last core never ended (a power cut, a crash) end now as
        ``interrupted``. A patient cut off before reaching anyone, who left no message and asked
        for nothing, is a missed call (``gave_up = 'restart'``): the staff call them back."""
        now = self.clock.stamp()
        calls = store_calls.unfinished(self.db)
        for call in calls:
            store_calls.update_call(self.db, call["id"], ended_at=now, ended_by="box", outcome="interrupted")
            if (
                call["direction"] == "in"
                and call.get("purpose") != "selftest"
                and not call["connected_to"]
                and not store_voicemails.for_call(self.db, call["id"])
            ):
                self.missed_call(call, gave_up="restart", node=None, topic=None)
        if calls:
            log.warning("%d call(s) cut off by the last stop (power cut or crash) closed", len(calls))
        return len(calls)

    def missed_call(self, call: dict, *, gave_up: str, node: str | None, topic: str | None) -> int | None:
        """:meth:`missed` for a stored call (its number, kind and start come from the row)."""
        return self.missed(
            call_id=call["id"],
            number=e164_of(call),
            number_kind=call["caller_kind"],
            started_at=call["started_at"],
            gave_up=gave_up,
            node=node,
            topic=topic,
        )

    def reached(self, number: str | None, by: str) -> int:
        """A person talked to ``number`` (``outbound``, ``called_again``): its missed calls are settled."""
        if not number:
            return 0
        return store_missed.close_for_number(self.db, number, at=self.clock.stamp(), by=by)

    # --- the window ended -----------------------------------------------------------------------
    def escalate_overdue(self) -> int:
        """One alarm per request not done by the end of its promised window; it stays open."""
        now = self.clock.stamp()
        count = 0
        for row in store.overdue(self.db, now):
            local = datetime.fromtimestamp(parse_stamp(row["window_until"]), self.tz)
            since = datetime.fromtimestamp(parse_stamp(row["created_at"]), self.tz)
            text = msg(
                "callback.overdue",
                number=for_people(row["number"], self.country),
                topic=row["topic"] or "—",
                since=f"{since:%d.%m %H:%M}",
                until=f"{local:%d.%m %H:%M}",
            )
            raise_alarm(
                self.db,
                "callback_overdue",
                f"callback #{row['id']}",
                text,
                severity="warning",
                lang=self.settings.box.language,
                at=now,
            )
            store.update(self.db, row["id"], escalated_at=now)
            count += 1
        return count

    # --- staff ---------------------------------------------------------------------------------
    def items(self) -> list[dict]:
        """Everything open, oldest first: requests (``c12``), missed calls (``m7``), voice messages
        (``v3``), each with ``ref``, ``kind``, ``number``, ``topic``, ``at``, ``state``."""
        out = []
        for r in store.open_requests(self.db):
            out.append(
                {
                    "ref": f"c{r['id']}",
                    "kind": "callback",
                    "number": r["number"],
                    "topic": r["topic"],
                    "at": r["created_at"],
                    "state": r["state"],
                    "detail": r,
                }
            )
        for m in store_missed.open_items(self.db):
            out.append(
                {
                    "ref": f"m{m['id']}",
                    "kind": "missed",
                    "number": m["number"],
                    "topic": m["topic"],
                    "at": m["started_at"],
                    "state": "missed",
                    "detail": m,
                }
            )
        for v in store_voicemails.new_messages(self.db):
            out.append(
                {
                    "ref": f"v{v['id']}",
                    "kind": "voicemail",
                    "number": v["number"],
                    "topic": None,
                    "at": v["at"],
                    "state": "message",
                    "detail": v,
                }
            )
        return sorted(out, key=lambda i: (i["at"] or "", i["ref"]))

    def done(self, ref: str, note: str = "", by: str = "staff") -> str:
        """Mark one item done (``c12``, ``m7``, ``v3``); returns what was closed, raises if nothing."""
        ref = (ref or "").strip().lower()
        kind, digits = ref[:1], ref[1:]
        if kind not in ("c", "m", "v") or not digits.isdigit():
            raise CallbackError(f"{ref!r} is not an item of the list (c12, m7 or v3: see `centralka callbacks`)")
        item_id = int(digits)
        now = self.clock.stamp()
        if kind == "c":
            row = store.get(self.db, item_id)
            ok = store.mark_done(self.db, item_id, at=now, by=by, note=note)
            if ok and row:
                store_missed.close_for_number(self.db, row["number"], at=now, by="callback", note=note)
        elif kind == "m":
            ok = store_missed.mark_done(self.db, item_id, at=now, note=note, by=by)
        else:
            ok = store_voicemails.mark_done(self.db, item_id, at=now, note=note)
        if not ok:
            raise CallbackError(f"{ref} is not open (already done, or no such item)")
        return ref


class CallbackError(CentralkaError, ValueError):
    """A staff action on the callback list that cannot be done (unknown or closed item)."""
