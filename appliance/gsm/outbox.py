"""The SMS outbox: a durable SQLite queue between the box and the GSM modem (R12, R19, R22).

Flow of one message::

    queue_sms()  ─▶ queued ─▶ sending ─▶ sent ─▶ delivered | undelivered   (delivery reports)
                      │  ▲       │
                      │  └───────┤ transient error: back to queued, later (backoff + jitter)
                      │          ├─ permanent error / max_attempts reached ─▶ failed
                      │          └─ fate unknown (box killed, timeout after the PDU left) ─▶ uncertain
                      └─ not sent within sms.max_age_s ─▶ expired
    uncertain ─▶ sent/delivered   when the network reports on it (see below)
    uncertain | failed | expired | undelivered ─▶ queued   only by resend() — a person's decision
    queued | uncertain | failed | expired ─▶ cancelled   by cancel()

``queue_sms`` validates (number, text, caps) and commits the message *before* anything is sent;
a refusal is an :class:`SmsRefused` naming the rule. :class:`Outbox` is the worker the core runs
in a thread of its own (python-gsmmodem is blocking): ``send_due()`` hands due messages to a
``sender`` (the modem adapter, protocol :class:`SmsSender`) one at a time.

Delivery guarantee — **at most once: never twice, and never silently zero**
---------------------------------------------------------------------------
Every message is committed in SQLite (WAL, ``synchronous=FULL``, so the commit is fsynced) as
``queued`` when it is accepted, and committed again as ``sending`` — with an attempt row —
*before* the first ``AT+CMGS``. When the modem returns the message references (one TP-MR per
part) the message is committed as ``sent`` with its parts. If the box dies between ``sending``
and ``sent`` (kill -9, power cut, a crash in the modem library) or the modem stops answering
after a PDU went out, nobody can know whether the network took the message: the ``+CMGS`` reply
was lost. Such a message becomes ``uncertain`` (at the next start, in :meth:`Outbox.recover`)
and is **never resent automatically**. It is resolved by evidence when there is some: a delivery
report for the same number that matches no recorded part (modems keep status reports while the
core is down, ``AT+CNMI=…,2``) proves it was sent and moves it to ``sent``/``delivered``.
Otherwise it stays ``uncertain``, an alarm is raised (``on_alarm``), and a person decides:
:func:`resend` or :func:`cancel`. So every queued message is sent **at most once**, none is
lost across restarts or power cuts, and in the seconds-wide crash window a message may be sent
zero times — and then somebody is told.

Why at-most-once for patients: a duplicate is not harmless — an elderly patient who gets "we
will call you back" or follow-up instructions twice (or a multipart text with repeated parts,
joined into garbage by older phones) calls the clinic to ask which one counts; and an automatic
resend turns any crash loop triggered while sending (a modem driver that kills the process on one
message) into an SMS storm to one patient, paid by the clinic. A missing confirmation SMS, on the
other hand, loses no care: the callback itself lives on the callback list (R12) whatever happens
to the SMS, the uncertain message is shown with an alarm, and it is one action from being resent.

Producers get exactly-once *enqueueing* with ``dedupe_key``: ``queue_sms(..., dedupe_key=
"callback:42")`` returns the existing message instead of queueing a second one, so a core killed
after queueing but before recording that it did cannot queue the same SMS twice.

Threads: use one :class:`Outbox` per database (the core's modem worker), on a connection of its
own (``open_db(path)``): the shared-connection ``transaction`` helper must not interleave across
threads. ``queue_sms``, ``record_status_report`` and ``store_incoming`` may run in any process.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from typing import Callable, NamedTuple, Protocol

import phonenumbers
from phonenumbers import PhoneNumberType

from ..clock import parse_stamp, stamp
from ..config import DEFAULTS_PATH
from ..errors import CentralkaError, StoreError
from ..messages import Msg, msg
from ..numbers import normalise_caller
from ..store import inbox
from ..store import outbox as store
from ..store.db import transaction
from .smstext import UCS2, SmsPlan, prepare

log = logging.getLogger("centralka.sms")

STATES = ("queued", "sending", "sent", "delivered", "undelivered", "failed", "uncertain", "expired", "cancelled")
DAY_S = 86400.0
REPORT_WINDOW_S = 7 * DAY_S  # a delivery report older than this cannot be for a part we sent
JOIN_WINDOW_S = DAY_S  # incoming parts further apart than this are not joined
UNCERTAIN_TEXT = (
    "the box stopped while this SMS was being handed to the modem: it may or may not "
    "have been sent; not resent automatically (never twice) — resend or cancel it"
)

_TYPE_NAMES = {
    PhoneNumberType.FIXED_LINE: "fixed-line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed-line or mobile",
    PhoneNumberType.TOLL_FREE: "toll-free",
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.VOIP: "VoIP",
    PhoneNumberType.PERSONAL_NUMBER: "personal",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "UAN",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.UNKNOWN: "unknown-type",
}
_MOBILE = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
_ANY_OK = _MOBILE | {PhoneNumberType.FIXED_LINE, PhoneNumberType.VOIP, PhoneNumberType.PERSONAL_NUMBER}


# --- errors and the modem protocol ----------------------------------------------------------------
class SmsRefused(CentralkaError, ValueError):
    """The outbox will not take this SMS; ``rule`` names the rule (e.g. ``per-number cap``)."""

    def __init__(self, rule: str, message: str):
        self.rule = rule
        super().__init__(f"SMS refused ({rule}): {message}")


class SmsSendError(CentralkaError, RuntimeError):
    """Raised by a sender. ``transient``: worth retrying later (no signal, modem busy, CMS 38…).

    ``maybe_sent``: the failure came after a PDU may have left (timeout after Ctrl-Z, part 2 of 3
    refused after part 1 went out): the message becomes ``uncertain`` and is never retried.
    ``sent_mrs``: the references of the parts that did go out, so their reports are matched.
    """

    def __init__(self, message: str, transient: bool, *, maybe_sent: bool = False, sent_mrs=()):
        super().__init__(message)
        self.transient = transient
        self.maybe_sent = maybe_sent or bool(sent_mrs)
        self.sent_mrs = [int(m) for m in sent_mrs]


class SmsSender(Protocol):
    def send(self, number: str, text: str, *, ucs2: bool) -> list[int]:
        """Send ``text`` to E.164 ``number`` in PDU mode; return the TP-MR of every part, in order.

        Raise :class:`SmsSendError` for every failure; anything else is treated as "maybe sent".
        """


# --- settings -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _default_sms_settings() -> dict:
    with open(DEFAULTS_PATH, "rb") as f:
        return dict(tomllib.load(f)["sms"])


@dataclass(frozen=True)
class SmsPolicy:
    """The ``[sms]`` settings (documented in appliance/data/default.toml) plus the box's country."""

    country: str
    transliterate: bool
    allow_countries: tuple[str, ...]
    mobile_only: bool
    per_number_per_day: int
    per_day: int
    max_parts: int
    retry_min_s: float
    retry_max_s: float
    max_attempts: int
    max_age_s: float

    @classmethod
    def from_settings(cls, settings=None, **overrides) -> "SmsPolicy":
        """From a :class:`~appliance.config.Settings`, a mapping of ``[sms]`` keys, a policy or None."""
        if isinstance(settings, SmsPolicy):
            return replace(settings, **overrides)
        values = dict(_default_sms_settings())
        values["country"] = "PL"
        if settings is not None and hasattr(settings, "sections"):
            values.update(settings.sms)
            values["country"] = settings.box.country
        elif isinstance(settings, Mapping):
            values.update(settings)
        values.update(overrides)
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise CentralkaError(f"unknown SMS setting(s): {', '.join(sorted(unknown))}")
        values["allow_countries"] = tuple(c.upper() for c in values["allow_countries"])
        policy = cls(**values)
        if policy.retry_min_s <= 0 or policy.retry_max_s < policy.retry_min_s or policy.max_attempts < 1:
            raise CentralkaError("sms: need 0 < retry_min_s <= retry_max_s and max_attempts >= 1")
        return policy


# --- time -----------------------------------------------------------------------------------------
iso = stamp  # epoch seconds as the store's text (appliance.clock.stamp)
_epoch = parse_stamp


def _as_iso(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return stamp(value.timestamp())
    return stamp(float(value))


# --- validation and queueing ----------------------------------------------------------------------
def check_number(number: str, settings=None) -> str:
    """The E.164 form of ``number`` if the policy lets it receive an SMS; else SmsRefused."""
    policy = SmsPolicy.from_settings(settings)
    e164, kind = normalise_caller(number, policy.country)
    if kind == "withheld":
        raise SmsRefused("withheld", f"the number is withheld ({e164!r}): there is no number to text")
    if kind == "internal":
        raise SmsRefused("internal", f"{e164} is an internal extension, not a phone number")
    if kind != "e164":
        raise SmsRefused("invalid number", f"{str(number).strip()!r} is not a valid phone number")
    parsed = phonenumbers.parse(e164)
    region = phonenumbers.region_code_for_number(parsed) or "unknown"
    if region not in policy.allow_countries:
        raise SmsRefused(
            "country",
            f"{e164} is a {region} number; SMS go only to "
            f"{', '.join(policy.allow_countries) or 'no'} numbers (sms.allow_countries)",
        )
    ntype = phonenumbers.number_type(parsed)
    name = _TYPE_NAMES.get(ntype, "unknown-type")
    if ntype not in _ANY_OK:
        raise SmsRefused("number type", f"{e164} is a {name} number; SMS never go to those")
    if policy.mobile_only and ntype not in _MOBILE:
        raise SmsRefused("mobile only", f"{e164} is a {name} number, not a mobile (sms.mobile_only = true)")
    return e164


def plan_sms(text: str, settings=None) -> SmsPlan:
    """What ``text`` becomes and costs under the settings (transliteration), without queueing."""
    return prepare(text, transliterate=SmsPolicy.from_settings(settings).transliterate)


def queue_sms(
    db,
    number: str,
    text: str,
    *,
    kind: str = "manual",
    settings=None,
    dedupe_key: str | None = None,
    now: float | None = None,
) -> int:
    """Validate and durably queue an SMS; return its id. Nothing is sent here.

    Refusals (:class:`SmsRefused`, the rule named): withheld/internal/invalid numbers, countries
    outside ``sms.allow_countries``, non-mobiles (``sms.mobile_only``), premium/shared-cost
    numbers, empty or over-long texts (``sms.max_parts``), and the caps against SMS pumping:
    ``sms.per_number_per_day`` and ``sms.per_day`` over the last 24 hours (cancelled messages do
    not count). With ``dedupe_key`` the call is idempotent: an existing message with that key is
    returned as is, whatever the other arguments.
    """
    policy = SmsPolicy.from_settings(settings)
    now = time.time() if now is None else now
    if dedupe_key is not None:
        existing = store.find_by_dedupe_key(db, dedupe_key)
        if existing is not None:
            return existing
    e164 = check_number(number, policy)
    plan = prepare(text, transliterate=policy.transliterate)
    if not plan.text.strip():
        raise SmsRefused("empty", "there is no text to send")
    if plan.part_count > policy.max_parts:
        raise SmsRefused("too long", f"{plan.describe()}; at most {policy.max_parts} parts (sms.max_parts)")
    since = iso(now - DAY_S)
    with transaction(db):
        if dedupe_key is not None:
            existing = store.find_by_dedupe_key(db, dedupe_key)
            if existing is not None:
                return existing
        n = store.count_since(db, since, e164)
        if n >= policy.per_number_per_day:
            raise SmsRefused(
                "per-number cap",
                f"{e164} already has {n} SMS in the last 24 hours "
                f"(sms.per_number_per_day = {policy.per_number_per_day})",
            )
        n = store.count_since(db, since)
        if n >= policy.per_day:
            raise SmsRefused("daily cap", f"{n} SMS were queued in the last 24 hours (sms.per_day = {policy.per_day})")
        sms_id = store.add_message(
            db,
            {
                "created_at": iso(now),
                "kind": kind,
                "number": e164,
                "text": plan.text,
                "original_text": str(text),
                "encoding": plan.encoding,
                "parts": plan.part_count,
                "state": "queued",
                "attempts": 0,
                "next_at": iso(now),
                "expires_at": iso(now + policy.max_age_s) if policy.max_age_s > 0 else None,
                "dedupe_key": dedupe_key,
            },
        )
    log.debug("sms #%d queued to %s: %s", sms_id, e164, plan.describe())
    return sms_id


# --- reading and admin decisions ------------------------------------------------------------------
def get_sms(db, sms_id: int) -> dict | None:
    """The message row with its ``part_rows`` and ``attempt_rows``."""
    row = store.get_message(db, sms_id)
    if row is None:
        return None
    row["part_rows"] = store.parts_of(db, sms_id)
    row["attempt_rows"] = store.attempts_of(db, sms_id)
    return row


def list_outbox(db, limit: int = 20, states: tuple[str, ...] | None = None) -> list[dict]:
    """Newest first."""
    return store.list_messages(db, limit, states)


def _admin_change(
    db,
    sms_id: int,
    allowed: tuple[str, ...],
    new_state: str,
    outcome: str,
    reason: str,
    now: float | None,
    *,
    supersede: bool = False,
    **extra,
) -> None:
    now_iso = iso(time.time() if now is None else now)
    was = store.admin_change(
        db, sms_id, allowed, {"state": new_state, **extra}, outcome, reason, now_iso, supersede=supersede
    )
    if was is None:
        raise CentralkaError(f"no SMS #{sms_id}")
    if was not in allowed:
        raise CentralkaError(f"SMS #{sms_id} is {was}; only {', '.join(allowed)} can be {outcome}")


def resend(db, sms_id: int, *, reason: str = "resend requested by the admin", now: float | None = None) -> None:
    """A person's decision to send again a message that is uncertain, failed, expired or undelivered.

    The caps are not applied (it is an explicit decision) and the message does not expire again;
    the parts of earlier attempts are kept as ``superseded`` (their late reports are stored only).
    """
    _admin_change(
        db,
        sms_id,
        ("uncertain", "failed", "expired", "undelivered"),
        "queued",
        "resend",
        reason,
        now,
        attempts=0,
        next_at=iso(time.time() if now is None else now),
        expires_at=None,
        error=None,
        finished_at=None,
        supersede=True,  # (with the change, in its transaction: a power cut cannot split them)
    )


def cancel(db, sms_id: int, *, reason: str = "cancelled by the admin", now: float | None = None) -> None:
    _admin_change(
        db,
        sms_id,
        ("queued", "uncertain", "failed", "expired"),
        "cancelled",
        "cancelled",
        reason,
        now,
        finished_at=iso(time.time() if now is None else now),
        error=reason,
    )


# --- delivery reports -----------------------------------------------------------------------------
def delivery_from_tp_status(tp_st: int) -> bool | None:
    """TP-Status of a status report (TS 23.040 9.2.3.15): True delivered, False failed for good,
    None still being tried by the SMSC (not final)."""
    if 0x00 <= tp_st <= 0x1F:
        return True
    if 0x20 <= tp_st <= 0x3F:
        return None
    return False


def _settle(db, sms_id: int, now_iso: str) -> None:
    """Message state from its parts: delivered when every part is, undelivered when any failed."""
    row = store.get_message(db, sms_id)
    if row is None or row["state"] not in ("sent", "delivered", "undelivered"):
        return
    statuses = store.live_part_statuses(db, sms_id)
    if "undelivered" in statuses:
        state = "undelivered"
    elif statuses.count("delivered") >= max(row["parts"], 1):
        state = "delivered"
    else:
        state = "sent"
    if state != row["state"]:
        store.set_final_state(db, sms_id, state, now_iso if state != "sent" else None)


def _apply_report(db, part_id: int, sms_id: int, report_id: int, status: str, at: str | None, now_iso: str):
    if status != "pending":
        store.set_part_status(db, part_id, status, at or now_iso)
    store.link_report(db, report_id, sms_id, part_id)
    _settle(db, sms_id, now_iso)


def _adopt_as_evidence(db, sms_id: int, report: dict, now_iso: str) -> None:
    """A report for an uncertain message's number: it was sent after all."""
    started = store.last_doubtful_start(db, sms_id)
    part_id = store.add_part(db, sms_id, None, report["mr"], started)
    note = (
        f"resolved: the network reported on message reference {report['mr']} for this number "
        f"after the attempt, so it was sent (not resent)"
    )
    store.mark_resolved(db, sms_id, started, note)
    store.add_attempt(db, sms_id, now_iso, now_iso, "resolved", note)
    _apply_report(db, part_id, sms_id, report["id"], report["status"], report["at"], now_iso)


def record_status_report(
    db, mr: int, delivered: bool | None, at=None, *, number: str | None = None, now: float | None = None
) -> int | None:
    """Record a delivery report for message reference ``mr``; return the SMS id it belongs to.

    ``delivered``: True/False for a final report, None for "SMSC still trying" (see
    :func:`delivery_from_tp_status`). ``at``: the report's time (datetime, ISO text or epoch).
    ``number``: the recipient the report names — pass it whenever known: TP-MR is 8 bits and
    wraps, so the number keeps a report from landing on an older message, and it is what
    resolves an ``uncertain`` message. Every report is stored, matched or not; repeats are
    harmless. A report that matches no part yet (it overtook the ``sent`` record) is matched
    when the message is recorded as sent.
    """
    now = time.time() if now is None else now
    now_iso = iso(now)
    status = "pending" if delivered is None else ("delivered" if delivered else "undelivered")
    e164 = normalise_caller(number)[0] if number else None
    mr = int(mr)
    with transaction(db):
        report_id = store.add_report(db, now_iso, mr, e164, status, _as_iso(at))
        part = store.part_for_report(db, mr, iso(now - REPORT_WINDOW_S), e164)
        if part:
            _apply_report(db, part[0], part[1], report_id, status, _as_iso(at), now_iso)
            return part[1]
        if e164:
            uncertain_id = store.newest_uncertain_to(db, e164)
            if uncertain_id is not None:
                report = {"id": report_id, "mr": mr, "status": status, "at": _as_iso(at)}
                _adopt_as_evidence(db, uncertain_id, report, now_iso)
                log.warning(
                    "sms #%d: uncertain SMS resolved by a delivery report (MR %d): it was sent", uncertain_id, mr
                )
                return uncertain_id
    log.info("delivery report for MR %d (%s) matches no SMS", mr, e164 or "number unknown")
    return None


# --- the worker -----------------------------------------------------------------------------------
class Outbox:
    """Sends due messages through ``sender``; see the module docstring for the guarantee.

    ``clock`` gives epoch seconds (tests inject one); ``rng`` the jitter; ``on_alarm(sms_id,
    text)`` is called for every message that needs a person (uncertain). Constructing an Outbox
    runs :meth:`recover` — construct exactly one, in the process that owns the modem.
    """

    def __init__(
        self,
        db,
        sender: SmsSender,
        settings=None,
        clock: Callable[[], float] = time.time,
        *,
        rng: random.Random | None = None,
        on_alarm: Callable[[int, str], None] | None = None,
    ):
        self.db = db
        self.sender = sender
        self.policy = SmsPolicy.from_settings(settings)
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_alarm = on_alarm
        if store.synchronous(db) < 2:
            raise StoreError("the SMS outbox needs PRAGMA synchronous=FULL (open the database with open_db)")
        self.recovered = self.recover()

    # -- recovery
    def recover(self) -> list[int]:
        """Messages left in ``sending`` by a previous run become ``uncertain`` (never resent).

        Delivery reports already stored for their numbers resolve them; the rest raise an alarm.
        Returns the ids of the messages that stay uncertain.
        """
        now_iso = iso(self.clock())
        stuck = store.ids_in_state(self.db, "sending")
        for sms_id in stuck:
            store.mark_interrupted(self.db, sms_id, UNCERTAIN_TEXT, now_iso)
        left = []
        for row in store.uncertain_messages(self.db):
            if not self._resolve_from_stored_reports(row["id"], row["number"]):
                left.append(row["id"])
        for sms_id in left:
            if sms_id in stuck:
                self._alarm(sms_id, msg("sms.uncertain"))
        return left

    def _resolve_from_stored_reports(self, sms_id: int, number: str) -> bool:
        started = store.last_doubtful_start(self.db, sms_id)
        if started is None:
            return False
        with transaction(self.db):
            reports = store.unmatched_reports_to(self.db, number, started)
            if not reports:
                return False
            _adopt_as_evidence(self.db, sms_id, reports[0], iso(self.clock()))
            for extra in reports[1:]:  # the other parts of the same message
                part_id = store.add_part(self.db, sms_id, None, extra["mr"], started)
                _apply_report(self.db, part_id, sms_id, extra["id"], extra["status"], extra["at"], iso(self.clock()))
        log.warning("sms #%d: uncertain SMS resolved by stored delivery reports: it was sent", sms_id)
        return True

    def _alarm(self, sms_id: int, text: Msg) -> None:
        log.warning("sms #%d needs a person: %s", sms_id, text)
        if self.on_alarm is not None:
            try:
                self.on_alarm(sms_id, text)
            except Exception:  # an alarm channel failing must not stop the outbox
                log.exception("sms #%d: alarm callback failed", sms_id)

    # -- scheduling
    def backoff(self, attempt: int) -> float:
        """Delay before the retry after failed attempt number ``attempt`` (1-based): exponential,
        capped at ``retry_max_s``, with "equal jitter" (half fixed, half random)."""
        base = min(self.policy.retry_max_s, self.policy.retry_min_s * (2 ** max(attempt - 1, 0)))
        return base / 2 + self.rng.uniform(0, base / 2)

    def next_due_in(self) -> float | None:
        """Seconds until the next queued message is due (0 when one is due now), None when none."""
        next_at = store.next_queued_at(self.db)
        if next_at is None:
            return None
        return max(0.0, _epoch(next_at) - self.clock())

    # -- sending
    def send_due(self, limit: int | None = None) -> int:
        """Send every due message (oldest first), one at a time; return how many were sent.

        A transient error or an uncertain outcome ends the round (the modem is in trouble; the
        other messages keep their attempts); a permanent error fails only that message.
        """
        sent = handled = 0
        while limit is None or handled < limit:
            now = self.clock()
            row = store.next_due(self.db, iso(now))
            if row is None:
                break
            handled += 1
            if row["expires_at"] and row["expires_at"] <= iso(now):
                self._finish(
                    row["id"],
                    "expired",
                    None,
                    f"not sent within {self.policy.max_age_s:g} s of being queued (sms.max_age_s)",
                    only_from="queued",
                )
                continue
            attempt_id = self._claim(row, now)
            if attempt_id is None:
                continue
            try:
                mrs = self.sender.send(row["number"], row["text"], ucs2=row["encoding"] == UCS2)
            except SmsSendError as exc:
                if exc.maybe_sent:
                    self._uncertain(row, attempt_id, f"maybe sent: {exc}", exc.sent_mrs)
                    break
                if exc.transient:
                    self._retry_or_fail(row, attempt_id, str(exc))
                    break
                self._finish(row["id"], "failed", attempt_id, f"refused: {exc}", outcome="permanent")
                continue
            except Exception as exc:  # the adapter broke its contract: we cannot know what left
                log.exception("sms #%d: unexpected error from the sender", row["id"])
                self._uncertain(row, attempt_id, f"unexpected error while sending: {exc!r}")
                break
            self._record_sent(row, attempt_id, mrs)
            sent += 1
        return sent

    def _claim(self, row: dict, now: float) -> int | None:
        """Commit ``sending`` + an open attempt row (fsynced) before the modem sees the message."""
        return store.claim(self.db, row["id"], iso(now))

    def _end_attempt(self, attempt_id: int, outcome: str, detail: str | None) -> None:
        store.end_attempt(self.db, attempt_id, iso(self.clock()), outcome, detail)

    def _record_sent(self, row: dict, attempt_id: int, mrs) -> None:
        now_iso = iso(self.clock())
        mrs = [int(m) for m in (mrs or [])]
        detail = "message reference(s) " + ", ".join(map(str, mrs)) if mrs else "no message reference returned"
        if len(mrs) != row["parts"]:
            log.warning(
                "sms #%d: %d part(s) planned, the modem returned %d reference(s)", row["id"], row["parts"], len(mrs)
            )
            detail += f" ({row['parts']} part(s) planned)"
        started = store.attempt_started_at(self.db, attempt_id)
        with transaction(self.db):
            store.mark_sent(self.db, row["id"], now_iso)
            part_ids = [store.add_part(self.db, row["id"], i + 1, mr, now_iso) for i, mr in enumerate(mrs)]
            self._end_attempt(attempt_id, "sent", detail)
            # Reports that overtook this record (they arrive on the modem's callback thread).
            for part_id, mr in zip(part_ids, mrs):
                early = store.early_report(self.db, mr, row["number"], started)
                if early:
                    _apply_report(self.db, part_id, row["id"], early["id"], early["status"], early["at"], now_iso)
        log.info("sms #%d sent to %s (%s)", row["id"], row["number"], detail)

    def _finish(
        self,
        sms_id: int,
        state: str,
        attempt_id: int | None,
        reason: str,
        *,
        outcome: str | None = None,
        only_from: str | None = None,
    ) -> None:
        finished_at = iso(self.clock())
        ended_at = iso(self.clock()) if attempt_id is not None else None
        store.finish(
            self.db,
            sms_id,
            state,
            reason,
            finished_at,
            only_from=only_from,
            attempt_id=attempt_id,
            outcome=outcome or state,
            ended_at=ended_at,
        )
        log.warning("sms #%d %s: %s", sms_id, state, reason)

    def _retry_or_fail(self, row: dict, attempt_id: int, reason: str) -> None:
        attempt = row["attempts"] + 1
        if attempt >= self.policy.max_attempts:
            self._finish(
                row["id"],
                "failed",
                attempt_id,
                f"gave up after {attempt} attempt(s) (sms.max_attempts): {reason}",
                outcome="transient",
            )
            return
        delay = self.backoff(attempt)
        next_at = iso(self.clock() + delay)
        store.requeue(
            self.db,
            row["id"],
            next_at,
            f"attempt {attempt} failed, retrying: {reason}",
            attempt_id,
            "transient",
            reason,
            iso(self.clock()),
        )
        log.info("sms #%d: attempt %d failed (%s); next try in %.0f s", row["id"], attempt, reason, delay)

    def _uncertain(self, row: dict, attempt_id: int, reason: str, sent_mrs=()) -> None:
        text = f"{reason}; not resent automatically (never twice) — resend or cancel it"
        if sent_mrs:
            text = f"{len(sent_mrs)} of {row['parts']} part(s) went out; " + text
        now_iso = iso(self.clock())
        store.mark_uncertain(self.db, row["id"], text, sent_mrs, now_iso, attempt_id, reason, iso(self.clock()))
        if sent_mrs or not self._resolve_from_stored_reports(row["id"], row["number"]):
            if sent_mrs:
                why = msg("sms.uncertain_partial", sent=len(sent_mrs), parts=row["parts"], reason=reason)
            else:
                why = msg("sms.uncertain_because", reason=reason)
            self._alarm(row["id"], why)


# --- incoming SMS ---------------------------------------------------------------------------------
class IncomingResult(NamedTuple):
    status: str  # "complete" (a new whole message), "waiting" (more parts due), "duplicate"
    message_id: int | None  # the whole message, when there is one


def concat_info(parts_info) -> tuple[int, int, int] | None:
    """(reference, total, seq) from None, a tuple, a dict (ref/total/seq), a python-gsmmodem
    ``Concatenation`` (reference/parts/number) or a ``ReceivedSms.udh`` list; None if single."""
    if parts_info is None:
        return None
    if isinstance(parts_info, Mapping):
        info = (parts_info["ref"], parts_info["total"], parts_info["seq"])
    elif isinstance(parts_info, tuple):
        info = tuple(parts_info)
    elif isinstance(parts_info, list):
        for ie in parts_info:
            if hasattr(ie, "reference") and hasattr(ie, "parts"):
                return concat_info(ie)
        return None
    elif hasattr(parts_info, "reference"):
        info = (parts_info.reference, parts_info.parts, parts_info.number)
    else:
        raise TypeError(f"cannot read concatenation info from {parts_info!r}")
    ref, total, seq = (int(v) for v in info)
    if total <= 1 or not 1 <= seq <= total:
        return None  # not a real multipart (or nonsense): keep it as a message of its own
    return ref, total, seq


def store_incoming(
    db, number: str, text: str, parts_info=None, *, sent_at=None, received_at=None, country: str = "PL"
) -> IncomingResult:
    """Store an incoming SMS; multipart ones are joined by (sender, concat ref, total) across
    separate arrivals, in any order. Idempotent: a part or message seen before (same sender,
    text, position and SMSC timestamp ``sent_at``) is recognised as a duplicate and ignored.

    Pass the SMSC timestamp (``ReceivedSms.time``) as ``sent_at``: it is what tells a modem
    repeating a stored SMS apart from a patient sending the same words twice (without it,
    single-part messages are never treated as duplicates). Parts that never complete are kept
    and made into a message by :func:`flush_incomplete`.
    """
    raw = number
    number, kind = normalise_caller(number, country)
    if kind == "withheld":
        number = str(raw or "").strip() or "anonymous"
    sent_iso = _as_iso(sent_at)
    recv_iso = _as_iso(received_at) or iso(time.time())
    text = str(text or "")
    info = concat_info(parts_info)
    with transaction(db):
        if info is None:
            if sent_iso is not None:
                dup_id = inbox.find_single_duplicate(db, number, sent_iso, text)
                if dup_id is not None:
                    return IncomingResult("duplicate", dup_id)
            msg_id = inbox.add_message(
                db,
                {
                    "number": number,
                    "number_kind": kind,
                    "text": text,
                    "sent_at": sent_iso,
                    "received_at": recv_iso,
                    "parts": 1,
                    "complete": 1,
                },
            )
            return IncomingResult("complete", msg_id)
        ref, total, seq = info
        window = iso(_epoch(recv_iso) - JOIN_WINDOW_S)
        dup = inbox.find_part_duplicate(db, number, ref, total, seq, text, sent_iso, window)
        if dup:
            return IncomingResult("duplicate", dup["message_id"])
        group = inbox.open_group_for(db, number, ref, total, seq, window)
        part_id = inbox.add_part(
            db,
            {
                "number": number,
                "ref": ref,
                "total": total,
                "seq": seq,
                "text": text,
                "sent_at": sent_iso,
                "received_at": recv_iso,
                "group_id": group,
            },
        )
        group_id = group if group is not None else part_id
        if group is None:
            inbox.set_group(db, part_id, part_id)
        parts = inbox.group_parts(db, group_id)
        if len({p["seq"] for p in parts}) < total:
            return IncomingResult("waiting", None)
        msg_id = _join_parts(db, parts, total, kind, complete=True)
        return IncomingResult("complete", msg_id)


def _join_parts(db, parts: list[dict], total: int, kind: str, *, complete: bool) -> int:
    by_seq = {p["seq"]: p for p in parts}
    text = "".join(by_seq[i]["text"] if i in by_seq else "[…]" for i in range(1, total + 1))
    first = min(parts, key=lambda p: p["seq"])
    sent = [p["sent_at"] for p in parts if p["sent_at"]]
    msg_id = inbox.add_message(
        db,
        {
            "number": first["number"],
            "number_kind": kind,
            "text": text,
            "sent_at": min(sent) if sent else None,
            "received_at": max(p["received_at"] for p in parts),
            "parts": total,
            "complete": int(complete),
        },
    )
    inbox.link_parts(db, [p["id"] for p in parts], msg_id)
    return msg_id


def flush_incomplete(
    db, older_than_s: float = JOIN_WINDOW_S, *, now: float | None = None, country: str = "PL"
) -> list[int]:
    """Multipart messages still missing parts after ``older_than_s`` become messages with the
    gaps marked "[…]" (``complete = 0``), so no received text is ever dropped. Returns their ids."""
    cutoff = iso((time.time() if now is None else now) - older_than_s)
    ids = []
    with transaction(db):
        for group_id, total in inbox.stale_groups(db, cutoff):
            parts = inbox.group_parts(db, group_id)
            kind = normalise_caller(parts[0]["number"], country)[1]
            ids.append(_join_parts(db, parts, total, kind, complete=False))
    return ids


def list_incoming(db, limit: int = 20) -> list[dict]:
    return inbox.list_messages(db, limit)
