"""Queue announcements: Polish number agreement, verb agreement, English, rounding (R10)."""

import pytest

from appliance.flow.announce import (
    announced_wait_s,
    is_are_pl,
    minutes_pl,
    number_pl,
    people_ahead_pl,
    position_announcement,
    wait_minutes,
)

# count -> (persons, minutes, verb)
GRAMMAR = {
    1: ("1 osoba", "1 minuta", "jest"),
    2: ("2 osoby", "2 minuty", "są"),
    3: ("3 osoby", "3 minuty", "są"),
    4: ("4 osoby", "4 minuty", "są"),
    5: ("5 osób", "5 minut", "jest"),
    11: ("11 osób", "11 minut", "jest"),
    12: ("12 osób", "12 minut", "jest"),
    13: ("13 osób", "13 minut", "jest"),
    14: ("14 osób", "14 minut", "jest"),
    21: ("21 osób", "21 minut", "jest"),
    22: ("22 osoby", "22 minuty", "są"),
    23: ("23 osoby", "23 minuty", "są"),
    24: ("24 osoby", "24 minuty", "są"),
    25: ("25 osób", "25 minut", "jest"),
    101: ("101 osób", "101 minut", "jest"),
    102: ("102 osoby", "102 minuty", "są"),
    111: ("111 osób", "111 minut", "jest"),
    112: ("112 osób", "112 minut", "jest"),
    122: ("122 osoby", "122 minuty", "są"),
}


@pytest.mark.parametrize("n", sorted(GRAMMAR))
def test_polish_number_agreement(n):
    persons, minutes, verb = GRAMMAR[n]
    assert people_ahead_pl(n) == persons
    assert minutes_pl(n) == minutes
    assert is_are_pl(n) == verb


@pytest.mark.parametrize("n", sorted(GRAMMAR))
def test_polish_sentence_agrees(n):
    persons, _, verb = GRAMMAR[n]
    text = position_announcement(n, None, spoken=False)
    assert text == f"W kolejce {verb} przed Panem/Panią {persons}."


def test_r10_wording_exactly():
    assert position_announcement(3, 360, spoken=False) == (
        "W kolejce są przed Panem/Panią 3 osoby. Przybliżony czas oczekiwania to 6 minut."
    )


def test_spoken_text_reads_well_in_espeak():
    # "Panem/Panią" would be read "Panem slesz Panią"; feminine 1 and ...2 are spelled out
    # because espeak-ng says "jeden osoba", "dwa osoby" for the digits.
    assert position_announcement(3, 360) == (
        "W kolejce są przed Panem lub Panią 3 osoby. Przybliżony czas oczekiwania to 6 minut."
    )
    assert position_announcement(1, 60) == (
        "W kolejce jest przed Panem lub Panią jedna osoba. Przybliżony czas oczekiwania to jedna minuta."
    )
    assert position_announcement(2, 120).startswith("W kolejce są przed Panem lub Panią dwie osoby.")
    assert position_announcement(2, 120).endswith("to dwie minuty.")
    assert people_ahead_pl(22, spoken=True) == "dwadzieścia dwie osoby"
    assert people_ahead_pl(21, spoken=True) == "21 osób"  # espeak: "dwadzieścia jeden osób"
    assert people_ahead_pl(12, spoken=True) == "12 osób"
    assert people_ahead_pl(122, spoken=True) == "sto dwadzieścia dwie osoby"


def test_number_words():
    assert number_pl(1) == "jeden"
    assert number_pl(1, feminine=True) == "jedna"
    assert number_pl(21, feminine=True) == "dwadzieścia jeden"
    assert number_pl(12, feminine=True) == "dwanaście"
    assert number_pl(215) == "dwieście piętnaście"
    assert number_pl(1000) == "tysiąc"
    assert number_pl(2002, feminine=True) == "dwa tysiące dwie"
    assert number_pl(5000) == "pięć tysięcy"


def test_the_caller_who_is_next_hears_they_are_first():
    # The caller who is next is told so (issue 11), with the wait when one is known.
    assert position_announcement(0, 30) == (
        "Jest Pan lub Pani pierwszą osobą w kolejce. Przybliżony czas oczekiwania to mniej niż minutę."
    )
    assert position_announcement(0, None, spoken=False) == "Jest Pan/Pani pierwszą osobą w kolejce."
    assert position_announcement(0, None, lang="en") == "You are first in the queue."
    assert "mniej osób odbiera" in position_announcement(2, 400, longer=True)


def test_less_than_a_minute():
    assert position_announcement(1, 59, spoken=False) == (
        "W kolejce jest przed Panem/Panią 1 osoba. Przybliżony czas oczekiwania to mniej niż minutę."
    )
    assert position_announcement(1, 0, lang="en").endswith("The estimated wait is less than a minute.")


def test_position_only_without_wait():
    assert position_announcement(5, None, spoken=False) == "W kolejce jest przed Panem/Panią 5 osób."
    assert position_announcement(5, float("inf"), spoken=False) == "W kolejce jest przed Panem/Panią 5 osób."
    assert position_announcement(5, None, lang="en") == "There are 5 people ahead of you."


def test_english():
    assert position_announcement(3, 360, lang="en") == (
        "There are 3 people ahead of you. The estimated wait is about 6 minutes."
    )
    assert position_announcement(1, 70, lang="en") == (
        "There is 1 person ahead of you. The estimated wait is about 1 minute."
    )
    assert position_announcement(2, 30, lang="en") == (
        "There are 2 people ahead of you. The estimated wait is less than a minute."
    )


@pytest.mark.parametrize(
    "wait_s,minutes",
    [
        (0, 0),
        (59.9, 0),
        (60, 1),
        (89, 1),
        (90, 2),
        (359, 6),
        (1200, 20),
        (1201, 20),
        (1351, 25),
        (1500, 25),
        (1649, 25),
        (1651, 30),
        (3600, 60),
    ],
)
def test_rounding(wait_s, minutes):
    assert wait_minutes(wait_s) == minutes


def test_announced_wait_as_heard():
    assert announced_wait_s(10) == 30.0
    assert announced_wait_s(100) == 120.0
    assert announced_wait_s(1400) == 1500.0
