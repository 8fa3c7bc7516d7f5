"""What a queued caller hears: position and estimated wait, Polish first, English available (R10).

R10 asks, concretely, for "W kolejce są przed Panem/Panią 3 osoby. Przybliżony czas oczekiwania
to 6 minut." with correct Polish number agreement. The rules used here are the standard ones:

- noun form: "one" only for exactly 1 (1 osoba, 1 minuta); "few" when the last digit is 2–4 and
  the last two digits are not 12–14 (2, 3, 4, 22, 23, 24, 102, 122 osoby/minuty); otherwise
  "many" (0, 5–21, 25–31, 111–114 osób/minut). 21 is "many": "21 osób".
- verb: the subject "N osób" (genitive plural) takes the singular "jest", as does "1 osoba";
  only the "few" forms take the plural "są": "jest 1 osoba", "są 2 osoby", "jest 5 osób".

The text goes to speech synthesis (espeak-ng), which was checked for these sentences:

- "Panem/Panią" is read as "Panem slesz Panią", so the spoken text says "przed Panem lub Panią".
- Digits are read well except where the noun is feminine and the number's last word must agree
  with it: espeak says "jeden osoba", "dwa osoby", "dwadzieścia dwa minuty". Those numbers
  (exactly 1, and anything ending in 2 except 12) are written out as words ("jedna osoba",
  "dwie osoby", "dwadzieścia dwie minuty"); all others stay digits, which espeak reads
  correctly ("21 osób" -> "dwadzieścia jeden osób"). ``spoken=False`` gives plain digits for
  screens and logs.

Rounding of the wait (a decision, documented here and in the report): under 60 s the caller hears
"less than a minute"; up to 20 minutes the estimate is rounded to the nearest whole minute (at
least 1); above 20 minutes to the nearest 5 minutes, because a precise "23 minutes" claims more
than any estimate knows. Nearest rather than up: the estimate is already a typical value and
rounding up would bias every announcement by half a minute.
"""

from __future__ import annotations

import math

from ..messages import plural_form, plural_pl

_UNITS = ("zero", "jeden", "dwa", "trzy", "cztery", "pięć", "sześć", "siedem", "osiem", "dziewięć")
_TEENS = (
    "dziesięć",
    "jedenaście",
    "dwanaście",
    "trzynaście",
    "czternaście",
    "piętnaście",
    "szesnaście",
    "siedemnaście",
    "osiemnaście",
    "dziewiętnaście",
)
_TENS = (
    "",
    "",
    "dwadzieścia",
    "trzydzieści",
    "czterdzieści",
    "pięćdziesiąt",
    "sześćdziesiąt",
    "siedemdziesiąt",
    "osiemdziesiąt",
    "dziewięćdziesiąt",
)
_HUNDREDS = (
    "",
    "sto",
    "dwieście",
    "trzysta",
    "czterysta",
    "pięćset",
    "sześćset",
    "siedemset",
    "osiemset",
    "dziewięćset",
)

LESS_THAN_MINUTE_S = 60.0
FIVE_MINUTE_STEPS_ABOVE_S = 20 * 60.0


def _below_thousand(n: int, feminine: bool) -> list[str]:
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words.append(_HUNDREDS[hundreds])
    tens, units = divmod(rest, 10)
    if tens == 1:
        words.append(_TEENS[units])
        return words
    if tens:
        words.append(_TENS[tens])
    if units:
        # Only the last word agrees in gender, and "jedna" only when the whole number is 1:
        # "dwadzieścia jeden osób", "dwadzieścia dwie osoby", "jedna osoba".
        if units == 2 and feminine:
            words.append("dwie")
        elif units == 1 and feminine and n == 1:
            words.append("jedna")
        else:
            words.append(_UNITS[units])
    return words


def number_pl(n: int, feminine: bool = False) -> str:
    """A count in Polish words, 0–999 999 (larger numbers stay digits): number_pl(22, True) ->
    "dwadzieścia dwie"."""
    n = int(n)
    if n < 0 or n >= 1_000_000:
        return str(n)
    if n == 0:
        return _UNITS[0]
    thousands, rest = divmod(n, 1000)
    words: list[str] = []
    if thousands == 1:
        words.append("tysiąc")
    elif thousands:
        words += _below_thousand(thousands, feminine=False)
        words.append(plural_pl(thousands, "tysiąc", "tysiące", "tysięcy"))
    if rest:
        words += _below_thousand(rest, feminine)
    return " ".join(words)


def _count_pl(n: int, spoken: bool) -> str:
    """How a count before a feminine noun is written: digits unless speech synthesis would get
    the gender wrong (1 -> "jedna", ...2 -> "dwie"), see the module docstring."""
    if spoken and (n == 1 or (n % 10 == 2 and n % 100 != 12)):
        return number_pl(n, feminine=True)
    return str(n)


def people_ahead_pl(n: int, spoken: bool = False) -> str:
    """ "1 osoba", "3 osoby", "5 osób", "22 osoby", "112 osób"; ``spoken`` writes 1 and ...2 as
    words ("jedna osoba", "dwadzieścia dwie osoby") so espeak-ng gets the gender right."""
    return f"{_count_pl(n, spoken)} {plural_pl(n, 'osoba', 'osoby', 'osób')}"


def minutes_pl(n: int, spoken: bool = False) -> str:
    """ "1 minuta", "2 minuty", "5 minut", "22 minuty" (nominative, as after "to")."""
    return f"{_count_pl(n, spoken)} {plural_pl(n, 'minuta', 'minuty', 'minut')}"


def is_are_pl(n: int) -> str:
    """The verb agreeing with "N osób/osoby/osoba": "są" only for the few-forms, else "jest"."""
    return "są" if plural_form(n) == "few" else "jest"


def wait_minutes(wait_s: float) -> int:
    """Whole minutes announced for an estimate; 0 means "less than a minute" (rounding rule in
    the module docstring)."""
    if wait_s < LESS_THAN_MINUTE_S:
        return 0
    minutes = wait_s / 60.0
    if wait_s > FIVE_MINUTE_STEPS_ABOVE_S:
        return int(5 * math.floor(minutes / 5 + 0.5))
    return max(1, int(math.floor(minutes + 0.5)))


def announced_wait_s(wait_s: float) -> float:
    """The wait the caller actually hears, in seconds ("less than a minute" counts as 30 s);
    the benchmark scores this, not the unrounded estimate."""
    minutes = wait_minutes(wait_s)
    return 30.0 if minutes == 0 else 60.0 * minutes


def position_announcement(
    ahead: int, wait_s: float | None, lang: str = "pl", spoken: bool = True, *, longer: bool = False
) -> str:
    """The periodic queue announcement (R8, R10). The caller who is next hears that they are
    first in line (issue 11: a lone caller heard only music until an agent answered).

    ``wait_s`` None (or not finite) -> only the position sentence; the engine passes None when
    nobody can answer at all. ``longer``: the estimate rose since the last announcement because
    fewer people answer now, and the caller is told so. ``lang`` "en..." gives English, anything
    else Polish.
    """
    english = str(lang or "pl").lower().startswith("en")
    has_wait = wait_s is not None and math.isfinite(wait_s)
    minutes = wait_minutes(max(0.0, wait_s)) if has_wait else None
    if english:
        if ahead <= 0:
            text = "You are first in the queue."
        else:
            who = "There is 1 person" if ahead == 1 else f"There are {ahead} people"
            text = f"{who} ahead of you."
        if longer:
            text += " The wait is longer now because fewer staff are answering."
        if minutes is not None:
            if minutes == 0:
                text += " The estimated wait is less than a minute."
            else:
                text += f" The estimated wait is about {minutes} minute{'s' if minutes != 1 else ''}."
        return text
    you = "Panem lub Panią" if spoken else "Panem/Panią"
    if ahead <= 0:
        text = f"Jest {'Pan lub Pani' if spoken else 'Pan/Pani'} pierwszą osobą w kolejce."
    else:
        text = f"W kolejce {is_are_pl(ahead)} przed {you} {people_ahead_pl(ahead, spoken)}."
    if longer:
        text += " Czas oczekiwania się wydłużył, bo mniej osób odbiera teraz telefony."
    if minutes is not None:
        if minutes == 0:
            text += " Przybliżony czas oczekiwania to mniej niż minutę."
        else:
            text += f" Przybliżony czas oczekiwania to {minutes_pl(minutes, spoken)}."
    return text
