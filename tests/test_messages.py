"""Texts by message id: every id in both languages, the same placeholders, nested reasons, plurals."""

from __future__ import annotations

import re

import pytest

from appliance.messages import CATALOG, LANGUAGES, Msg, msg, placeholders, plural_form, plural_pl, render


@pytest.mark.parametrize("message_id", sorted(CATALOG))
def test_every_message_has_both_languages_with_the_same_placeholders(message_id):
    entry = CATALOG[message_id]
    assert set(entry) == set(LANGUAGES), f"{message_id}: languages {sorted(entry)}"
    assert all(entry[lang].strip() for lang in LANGUAGES), f"{message_id}: an empty text"
    assert placeholders(entry["pl"]) == placeholders(entry["en"]), message_id


def test_polish_texts_are_polish_and_english_ones_english():
    """A sentence copied into the wrong language's slot is the defect this catalog exists to stop."""
    english_words = re.compile(r"\b(the|is|not|does|cannot|and|was)\b")
    for message_id, entry in CATALOG.items():
        assert not english_words.search(entry["pl"].replace("{", " ").replace("}", " ")), message_id


def test_a_reason_inside_a_sentence_is_rendered_in_the_same_language():
    reason = msg("modem.reconnecting", reason=msg("modem.port_failed", error="EIO"))
    sentence = msg("line.because", sentence=msg("line.state.down", line=msg("line.gsm")), reason=reason)
    assert sentence.text("pl") == "Modem GSM nie działa: port modemu przestał działać (EIO); ponowne łączenie"
    assert str(sentence) == "The GSM modem is down: the modem's port failed (EIO); reconnecting"
    assert sentence.text("de") == sentence.text("pl")  # unknown language: the box's default


def test_a_message_survives_json_as_the_modem_thread_hands_it_over():
    m = msg("modem.gone_looking", seconds=60.0)
    back = Msg.from_json(m.to_json())
    assert back.text("pl") == "modem nie odpowiada nawet po resecie; szukam go co 60 s"
    nested = msg("modem.reconnecting", reason=msg("modem.not_registered"))
    assert Msg.from_json(nested.to_json()).text("en") == "not registered on the network; reconnecting"
    assert Msg.from_json({"id": "no.such"}) is None and Msg.from_json("text") is None


def test_an_unknown_id_fails_where_it_is_built():
    with pytest.raises(KeyError, match="no.such.message"):
        msg("no.such.message")


def test_a_missing_parameter_still_gives_a_readable_text(caplog):
    assert render("modem.opening", "pl") == "otwieranie {device}"
    assert "parameter" in caplog.text


@pytest.mark.parametrize(
    "n, form",
    [(0, "many"), (1, "one"), (2, "few"), (4, "few"), (5, "many"), (12, "many"), (14, "many"), (21, "many")]
    + [(22, "few"), (25, "many"), (102, "few"), (111, "many"), (112, "many"), (124, "few"), (1000, "many")],
)
def test_polish_plural(n, form):
    assert plural_form(n) == form
    assert plural_pl(n, "osoba", "osoby", "osób") == {"one": "osoba", "few": "osoby", "many": "osób"}[form]
