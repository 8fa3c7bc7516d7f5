"""The toll-fraud guard: every number the box is about to dial passes here first.

A clinic's box that can be talked into calling premium or foreign numbers is a money machine
for fraudsters (a compromised admin account, a crafted callback request, a flow typo). So an
outbound destination must be, by default:

* written with nothing but digits (and a leading ``+``/``00``; spaces and dashes are dropped) —
  nothing else ever reaches a dial string or an AT command;
* a valid number of an allowed country (Poland only by default);
* of an allowed type: fixed line, mobile, toll-free. Premium rate (Polish 70x), shared cost
  (801…), personal, UAN, pager and VoIP ranges are refused;
* within the hourly caps, counted over every outbound attempt on every line (the
  ``outbound_calls`` table), per number and in total.

``check_destination`` raises :class:`DestinationRefused` naming the rule, so the log and the
admin see exactly why a call was not placed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType as T

from .clock import stamp
from .errors import CentralkaError
from .store import outbound

_ALLOWED_CHARS = re.compile(r"^\+?[0-9][0-9 \-]{1,24}$")

TYPE_NAMES = {
    T.FIXED_LINE: "fixed_line",
    T.MOBILE: "mobile",
    T.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    T.TOLL_FREE: "toll_free",
    T.PREMIUM_RATE: "premium_rate",
    T.SHARED_COST: "shared_cost",
    T.VOIP: "voip",
    T.PERSONAL_NUMBER: "personal_number",
    T.PAGER: "pager",
    T.UAN: "uan",
    T.VOICEMAIL: "voicemail",
    T.UNKNOWN: "unknown",
}
# Premium rate and shared cost are never allowed, whatever the settings say.
NEVER = {"premium_rate", "shared_cost"}


class DestinationRefused(CentralkaError, ValueError):
    "The toll-fraud guard refused a number; ``rule`` says which rule."

    def __init__(self, rule: str, message: str):
        self.rule = rule
        super().__init__(message)


@dataclass
class OutboundPolicy:
    country: str = "PL"
    allow_countries: tuple[str, ...] = ("PL",)
    allow_types: tuple[str, ...] = ("fixed_line", "mobile", "fixed_line_or_mobile", "toll_free")
    per_number_per_hour: int = 4
    per_hour: int = 30

    @classmethod
    def from_settings(cls, settings=None) -> "OutboundPolicy":
        p = cls()
        if settings is None:
            return p
        section = getattr(settings, "sections", {}).get("outbound") or {}
        box = getattr(settings, "sections", {}).get("box") or {}
        p.country = box.get("country", p.country)
        p.allow_countries = tuple(section.get("allow_countries", p.allow_countries))
        p.allow_types = tuple(t for t in section.get("allow_types", p.allow_types) if t not in NEVER)
        p.per_number_per_hour = int(section.get("per_number_per_hour", p.per_number_per_hour))
        p.per_hour = int(section.get("per_hour", p.per_hour))
        return p


def parse_destination(number: str, policy: OutboundPolicy) -> tuple[str, str]:
    """``(E.164, type name)`` of an allowed destination; DestinationRefused otherwise."""
    text = str(number).strip()
    if not _ALLOWED_CHARS.match(text):
        raise DestinationRefused(
            "characters",
            f"{text[:40]!r} is not a phone number (only digits, a leading + and spaces/dashes are accepted)",
        )
    compact = re.sub(r"[ \-]", "", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    try:
        parsed = phonenumbers.parse(compact, None if compact.startswith("+") else policy.country)
    except phonenumbers.NumberParseException as exc:
        raise DestinationRefused("invalid", f"{compact} is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise DestinationRefused("invalid", f"{compact} is not a valid phone number")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    region = phonenumbers.region_code_for_number(parsed) or "unknown"
    if region not in policy.allow_countries:
        raise DestinationRefused(
            "country",
            f"{e164} is a {region} number; calls go only to "
            f"{', '.join(policy.allow_countries) or 'no'} numbers "
            "(outbound.allow_countries)",
        )
    kind = TYPE_NAMES.get(phonenumbers.number_type(parsed), "unknown")
    if kind in NEVER:
        raise DestinationRefused("premium", f"{e164} is a {kind.replace('_', ' ')} number: never dialled")
    if kind not in policy.allow_types:
        raise DestinationRefused(
            "number type",
            f"{e164} is a {kind.replace('_', ' ')} number, not one of "
            f"{', '.join(policy.allow_types)} (outbound.allow_types)",
        )
    return e164, kind


def check_destination(db, number: str, settings=None, *, now: float | None = None) -> str:
    """The E.164 number to dial, after every rule above; counts attempts in ``outbound_calls``."""
    policy = OutboundPolicy.from_settings(settings)
    e164, _kind = parse_destination(number, policy)
    if db is not None:
        since = stamp((now if now is not None else time.time()) - 3600)
        total = outbound.count_since(db, since)
        if total >= policy.per_hour:
            raise DestinationRefused(
                "hourly cap",
                f"{total} outbound calls in the last hour; the cap is {policy.per_hour} (outbound.per_hour)",
            )
        same = outbound.count_since(db, since, e164)
        if same >= policy.per_number_per_hour:
            raise DestinationRefused(
                "number cap",
                f"{e164} was called {same} times in the last hour; the cap "
                f"is {policy.per_number_per_hour} (outbound.per_number_per_hour)",
            )
    return e164
