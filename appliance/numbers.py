"""Phone numbers as the clinic sees them: E.164 where the number is real, kept as-is otherwise."""

from __future__ import annotations

import re

import phonenumbers

# Caller IDs that mean "the caller hid the number" (SIP providers and GSM networks differ).
_WITHHELD = {"", "anonymous", "unknown", "unavailable", "private", "restricted", "withheld", "asterisk"}
_DIALLABLE = re.compile(r"^\+?[0-9]{2,15}$")


def normalise_caller(raw: str | None, country: str = "PL") -> tuple[str, str]:
    """Return ``(number, kind)`` with kind one of e164, withheld, internal, malformed.

    Withheld and malformed IDs are kept as received so a report still shows what arrived; only
    a number that parses as a valid phone number becomes E.164. Short numbers (2–6 digits) are a
    desk phone's extension.
    """
    text = (raw or "").strip()
    if text.lower() in _WITHHELD:
        return (text or "anonymous", "withheld")
    compact = re.sub(r"[\s\-().]", "", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _DIALLABLE.match(compact):
        return (text, "malformed")
    if not compact.startswith("+") and len(compact) <= 6:
        return (compact, "internal")
    try:
        parsed = phonenumbers.parse(compact, None if compact.startswith("+") else country)
    except phonenumbers.NumberParseException:
        return (text, "malformed")
    if not phonenumbers.is_valid_number(parsed):
        return (text, "malformed")
    return (phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), "e164")


def user_part(uri: str) -> str:
    """The user part of a SIP URI or name-addr: ``"Jan" <sip:600123456@host>`` -> ``600123456``."""
    m = re.search(r"<([^>]*)>", uri or "")
    inner = m.group(1) if m else (uri or "")
    inner = inner.strip()
    for scheme in ("sips:", "sip:", "tel:"):
        if inner.lower().startswith(scheme):
            inner = inner[len(scheme) :]
            break
    user = inner.split("@", 1)[0] if "@" in inner else inner
    return user.split(";", 1)[0]


def for_people(number: str | None, country: str = "PL") -> str:
    """A number as people write it: national format for the home country ("600 123 456"),
    international otherwise ("+49 30 1234567"); anything else as it is."""
    text = (number or "").strip()
    try:
        parsed = phonenumbers.parse(text, None if text.startswith("+") else country)
    except phonenumbers.NumberParseException:
        return text
    if not phonenumbers.is_valid_number(parsed):
        return text
    home = phonenumbers.region_code_for_number(parsed) == country
    fmt = phonenumbers.PhoneNumberFormat.NATIONAL if home else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    return phonenumbers.format_number(parsed, fmt)


DIGIT_WORDS = {
    "pl": ("zero", "jeden", "dwa", "trzy", "cztery", "pięć", "sześć", "siedem", "osiem", "dziewięć"),
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
}


def spoken_digits(number: str, country: str = "PL", lang: str = "pl") -> str:
    """A number read back digit by digit in its usual groups: "sześć zero zero, jeden dwa trzy, …"."""
    words = DIGIT_WORDS.get(lang, DIGIT_WORDS["pl"])
    groups = [g for g in re.split(r"[\s\-]+", for_people(number, country).lstrip("+")) if g]
    return ", ".join(" ".join(words[int(d)] for d in g if d.isdigit()) for g in groups)
