"""SMS text: what a message costs (encoding, parts), making any text sendable, and templates.

An SMS is sent in one of two alphabets (3GPP TS 23.038):

- **GSM-7**: the default alphabet plus its extension table (``^ { } \\ [ ~ ] | €``, each of
  which costs two septets). 160 septets fit in one SMS; a longer text is split into parts of
  153 septets (the concatenation header takes the rest) and an escape pair is never split.
- **UCS-2**: any other character — every Polish letter (ą ć ę ł ń ó ś ź ż) among them —
  switches the *whole* message to UCS-2: 70 characters in one SMS, 67 per part.

:func:`prepare` turns any text into an :class:`SmsPlan`: the exact text that will be sent, its
encoding and its parts, split the same way python-gsmmodem-new splits it (tests check this
against the library's own PDU encoder). It never raises on odd input; it drops what no SMS can
carry instead of crashing:

- characters outside the Basic Multilingual Plane (emoji) — the library raises ``ValueError``
  on them in UCS-2 — and the invisible joiners/variation selectors that come with emoji;
- control characters (newlines are kept, ``\\r\\n`` becomes ``\\n``, tabs become spaces);
- two characters the library mishandles: ``ÿ`` (its extension table maps chr(0xFF) to an int,
  so encoding raises ``TypeError``) becomes ``y``; the backtick (the library writes it as the
  GSM-7 code that phones show as ``§``) becomes an apostrophe.

With ``transliterate=True`` (setting ``sms.transliterate``, off by default) Polish letters,
typographic quotes/dashes/ellipsis/non-breaking spaces and other Latin letters with diacritics
become their GSM-7 look-alikes, so "Zażółć gęślą jaźń" → "Zazolc gesla jazn" fits 160 characters
per SMS instead of 70. Letters that GSM-7 has (é, ü, ö, ä, ñ, à …) are kept; text in other
scripts (e.g. Cyrillic) stays UCS-2.

Templates (R19 follow-up SMS): ``render_template("Dzień dobry, {name}", name="Anna")``. Only
plain ``{identifier}`` placeholders are allowed (no attribute or index access, no format specs),
``{{``/``}}`` are literal braces, a missing value is an error naming the placeholder, and values
are whitelisted: text or numbers, one line, no control characters, at most 200 characters.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, field

from ..errors import CentralkaError

GSM7 = "gsm7"
UCS2 = "ucs2"

SINGLE_LIMIT = {GSM7: 160, UCS2: 70}
PART_LIMIT = {GSM7: 153, UCS2: 67}
ENCODING_NAMES = {GSM7: "GSM-7", UCS2: "UCS-2"}

# The GSM 03.38 default alphabet, minus ESC (0x1B, the escape to the extension table) and minus
# "§" (0x5F): python-gsmmodem-new has "`" at 0x5F instead, so it cannot encode "§" (it goes
# UCS-2, which phones show correctly) and it writes "`" as 0x5F (which phones show as "§").
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_BASIC = frozenset(_BASIC)
GSM7_EXTENDED = frozenset("^{}\\[~]|€")  # each costs 2 septets (ESC + code)

POLISH = str.maketrans("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ", "acelnoszzACELNOSZZ")
_TYPOGRAPHY = {
    "„": '"',
    "“": '"',
    "”": '"',
    "″": '"',
    "«": '"',
    "»": '"',
    "‚": "'",
    "‘": "'",
    "’": "'",
    "′": "'",
    "‹": "'",
    "›": "'",
    "–": "-",
    "—": "-",
    "‐": "-",
    "‑": "-",
    "−": "-",
    "…": "...",
    "•": "*",
    "·": ".",
    "\u00a0": " ",
    "\u2002": " ",
    "\u2003": " ",
    "\u2007": " ",
    "\u2009": " ",
    "\u202f": " ",
}

# Invisible characters that only make sense with emoji or bidi text: dropped.
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\ufe0e", "\ufe0f", "\u20e3"}
_LIBRARY_FIXES = {"ÿ": "y", "`": "'"}
_GAP = "\x00"  # where a visible character was removed (never in the output: controls are removed)
MAX_VALUE_CHARS = 200


class SmsTextError(CentralkaError, ValueError):
    "A text or template cannot be made into an SMS."


class TemplateError(SmsTextError):
    "A template is malformed, lacks a value, or a value is not allowed."


@dataclass(frozen=True)
class SmsPlan:
    """What will be sent and what it costs."""

    text: str  # exactly the text handed to the modem
    encoding: str  # "gsm7" | "ucs2"
    parts: tuple[str, ...]  # the text of each SMS part (one when it fits a single SMS)
    units: int  # septets (GSM-7, extension characters count 2) or UCS-2 characters
    removed: tuple[str, ...] = ()  # characters dropped (emoji, control characters)
    ucs2_chars: tuple[str, ...] = ()  # the characters that forced UCS-2, in order of appearance
    transliterated: bool = False  # the transliteration changed the text
    original: str = field(default="", compare=False)

    @property
    def ucs2(self) -> bool:
        return self.encoding == UCS2

    @property
    def part_count(self) -> int:
        return len(self.parts)

    def describe(self) -> str:
        """One line for people: ``2 parts, UCS-2 (75 characters; 67 per part; UCS-2 because of: ą, ś)``."""
        n = self.part_count
        enc = ENCODING_NAMES[self.encoding]
        unit = "characters" if self.encoding == UCS2 else "GSM-7 characters"
        room = f"{SINGLE_LIMIT[self.encoding]} in one SMS" if n == 1 else f"{PART_LIMIT[self.encoding]} per part"
        text = f"{n} part{'s' if n != 1 else ''}, {enc} ({self.units} {unit}; {room}"
        if self.ucs2_chars:
            shown = ", ".join(self.ucs2_chars[:8]) + (" …" if len(self.ucs2_chars) > 8 else "")
            text += f"; UCS-2 because of: {shown}"
        if self.transliterated:
            text += "; transliterated to GSM-7"
        if self.removed:
            text += f"; {len(self.removed)} character(s) no SMS can carry removed"
        return text + ")"


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text)


def gsm7_septets(text: str) -> int:
    """Septets needed in GSM-7 (extension characters count 2). The text must be GSM-7."""
    return sum(2 if c in GSM7_EXTENDED else 1 for c in text)


def sanitize(text: str) -> tuple[str, tuple[str, ...]]:
    """Make a text carriable by SMS through python-gsmmodem-new; returns (text, removed chars).

    NFC first (a decomposed "z" + combining dot becomes "ż"), newlines normalised, emoji and
    other characters outside the BMP, control and invisible characters dropped. Never raises.
    """
    text = unicodedata.normalize("NFC", str(text))
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = text.replace("\t", " ")
    out: list[str] = []
    removed: list[str] = []
    for c in text:
        code = ord(c)
        if c == "\n":
            out.append(c)
        elif code > 0xFFFF or 0xD800 <= code <= 0xDFFF or unicodedata.category(c) == "Cc":
            removed.append(c)  # emoji, rare symbols, lone surrogates, control characters
            out.append(_GAP)
        elif c in _INVISIBLE or unicodedata.category(c) in ("Cf", "Co", "Cn"):
            removed.append(c)  # invisible: dropped without a trace
        else:
            out.append(_LIBRARY_FIXES.get(c, c))
    result = "".join(out)
    if _GAP in result:
        # "Dzień dobry 🙂, do jutra 👍!" -> "Dzień dobry, do jutra!", not "Dzień dobry , do jutra !".
        result = re.sub(r"[ ]*\x00[\x00 ]*", _GAP, result)
        result = re.sub(r"\x00(?=[,.!?;:)\n]|$)|^\x00|(?<=\n)\x00", "", result)
        result = result.replace(_GAP, " ")
    return result.strip(" \n"), tuple(removed)


def transliterate(text: str) -> str:
    """Polish letters, typography and other Latin diacritics to GSM-7; other scripts unchanged."""
    text = text.translate(POLISH)
    out = []
    for c in text:
        if c in GSM7_BASIC or c in GSM7_EXTENDED:
            out.append(c)
            continue
        if c in _TYPOGRAPHY:
            out.append(_TYPOGRAPHY[c])
            continue
        base = "".join(b for b in unicodedata.normalize("NFKD", c) if not unicodedata.combining(b))
        out.append(base if base and is_gsm7(base) else c)
    return "".join(out)


_to_gsm7 = transliterate  # prepare()'s keyword argument shadows the function's name


def split_parts(text: str, encoding: str) -> tuple[str, ...]:
    """Split as python-gsmmodem-new does: greedy parts, an escape pair never split."""
    if encoding == UCS2:
        if len(text) <= SINGLE_LIMIT[UCS2]:
            return (text,)
        step = PART_LIMIT[UCS2]
        return tuple(text[i : i + step] for i in range(0, len(text), step))
    if gsm7_septets(text) <= SINGLE_LIMIT[GSM7]:
        return (text,)
    parts, current, size = [], [], 0
    for c in text:
        cost = 2 if c in GSM7_EXTENDED else 1
        if size + cost > PART_LIMIT[GSM7]:
            parts.append("".join(current))
            current, size = [], 0
        current.append(c)
        size += cost
    if current:
        parts.append("".join(current))
    return tuple(parts)


def prepare(text: str, *, transliterate: bool = False) -> SmsPlan:
    """The plan for sending ``text``: cleaned text, encoding, parts. Never raises."""
    original = str(text)
    clean, removed = sanitize(original)
    changed = False
    if transliterate:
        converted = _to_gsm7(clean)
        changed = converted != clean
        clean = converted
    if is_gsm7(clean):
        encoding, units = GSM7, gsm7_septets(clean)
        forcing: tuple[str, ...] = ()
    else:
        encoding, units = UCS2, len(clean)
        forcing = tuple(dict.fromkeys(c for c in clean if c not in GSM7_BASIC and c not in GSM7_EXTENDED))
    return SmsPlan(
        text=clean,
        encoding=encoding,
        parts=split_parts(clean, encoding),
        units=units,
        removed=removed,
        ucs2_chars=forcing,
        transliterated=changed,
        original=original,
    )


# --- templates ------------------------------------------------------------------------------------
_FORMATTER = string.Formatter()


def template_fields(template: str) -> list[str]:
    """The placeholder names of a template, in order, each once; raises TemplateError if malformed."""
    names: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"template: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise TemplateError(f"template placeholder {{{name}}} is not allowed: use plain names like {{name}}")
        if spec or conversion:
            raise TemplateError(f"template placeholder {{{name}}} must not carry a format (':' or '!')")
        if name not in names:
            names.append(name)
    return names


def _clean_value(name: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TemplateError(f"template value for {{{name}}} must be text or a number, not {type(value).__name__}")
    text = unicodedata.normalize("NFC", str(value)).strip()
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cn", "Zl", "Zp")]
    if bad:
        raise TemplateError(
            f"template value for {{{name}}} contains a control character "
            f"({bad[0]!r}); values are one line of plain text"
        )
    if len(text) > MAX_VALUE_CHARS:
        raise TemplateError(f"template value for {{{name}}} is {len(text)} characters long (at most {MAX_VALUE_CHARS})")
    return text


def render_template(template: str, **values) -> str:
    """Fill ``{name}`` placeholders; extra values are ignored, a missing one is an error."""
    out = []
    fields = template_fields(template)  # validates the whole template first
    missing = [n for n in fields if n not in values or values[n] is None]
    if missing:
        raise TemplateError(
            f"template placeholder {{{missing[0]}}} has no value"
            + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else "")
        )
    clean = {n: _clean_value(n, values[n]) for n in fields}
    for literal, name, _spec, _conv in _FORMATTER.parse(template):
        out.append(literal)
        if name is not None:
            out.append(clean[name])
    return "".join(out)
