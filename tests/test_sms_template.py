"""Follow-up SMS from templates (R19): `centralka sms template NAME NUMBER --set k=v` fills the
placeholders, normalises the number and queues the text in the durable outbox (the core sends it)."""

from __future__ import annotations

import pytest

from appliance.cli import main as cli_main
from appliance.store.db import open_db

TEMPLATE = "{clinic}: badanie krwi {dzien} o {godzina}. Prosimy przyjść na czczo."


@pytest.fixture
def config(tmp_path):
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(
        f'[box]\ndata_dir = "{tmp_path}"\nclinic_name = "Przychodnia Zdrowie"\n'
        f'[control]\nsocket = "{tmp_path / "core.sock"}"\n'
        f'[callbacks]\ntemplates = {{ badanie = "{TEMPLATE}", zepsuty = "Dzień {{dzien" }}\n',
        encoding="utf-8",
    )
    return cfg


def run(config, *args) -> int:
    return cli_main(["--config", str(config), "sms", "template", *args])


def outbox(config):
    return list(open_db(config.parent / "centralka.db")["sms_outbox"].rows)


def test_a_template_is_filled_and_queued_for_the_normalised_number(config, capsys):
    assert run(config, "badanie", "600 123 456", "--set", "dzien=we wtorek", "--set", "godzina=8:00") == 0
    [row] = outbox(config)
    assert row["number"] == "+48600123456"
    assert row["text"] == "Przychodnia Zdrowie: badanie krwi we wtorek o 8:00. Prosimy przyjść na czczo."
    out = capsys.readouterr().out
    assert "queued to +48600123456" in out and "the core is not running" in out


def test_without_arguments_the_templates_and_their_placeholders_are_listed(config, capsys):
    assert run(config) != 0  # one of them is broken, and says so
    out = capsys.readouterr().out
    assert "badanie: " in out and "--set dzien=… godzina=…" in out
    assert "zepsuty: Dzień {dzien  (BROKEN: template: expected '}'" in out


@pytest.mark.parametrize(
    "args, said",
    [
        (["nieznany", "600123456"], "no SMS template 'nieznany' (templates: badanie, zepsuty)"),
        (["badanie", "600123456", "--set", "dzien=wtorek"], "placeholder {godzina} has no value"),
        (["badanie", "600123456", "--set", "dzien"], "write name=value"),
        (["badanie", "600123456", "--set", "a b=1"], "write name=value"),
        (["zepsuty", "600123456"], "template"),
        (["badanie"], "whom to text?"),
        (["badanie", "0700 123 456", "--set", "dzien=x", "--set", "godzina=y"], "700"),
    ],
)
def test_bad_input_says_what_was_wrong_and_queues_nothing(config, capsys, args, said):
    assert run(config, *args) != 0
    assert said in capsys.readouterr().err
    assert outbox(config) == []
