"""`centralka hours`: the week of the active flow's schedule, now, the next change, and the
manual override a person sets (until a time, until the next scheduled change, until lifted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.cli import main as cli_main
from appliance.store.db import open_db
from appliance.store.flows import save_flow

FLOW = (Path(__file__).parent / "flows" / "hours_good.toml").read_text(encoding="utf-8")


@pytest.fixture
def config(tmp_path):
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(f'[box]\ndata_dir = "{tmp_path}"\n[control]\nsocket = "{tmp_path / "core.sock"}"\n')
    db = open_db(tmp_path / "centralka.db")
    save_flow(db, "godziny", FLOW, activate=True)
    db.close()
    return cfg


def hours(config, capsys, *args) -> str:
    assert cli_main(["--config", str(config), "hours", *args]) == 0
    return capsys.readouterr().out


def test_the_week_and_the_next_change_are_shown(config, capsys):
    out = hours(config, capsys)
    assert "schedule 'przychodnia' (Europe/Warsaw, holidays PL)" in out
    assert "  mon  08:00-18:00" in out and "  fri  08:00-12:00, 13:00-16:00" in out and "  sat  closed" in out
    assert re.search(r"now \d{4}-\d\d-\d\d \d\d:\d\d: (open|closed); next change \d{4}-\d\d-\d\d \d\d:\d\d", out)


def test_a_manual_override_holds_until_lifted_or_until_the_next_change(config, capsys):
    out = hours(config, capsys, "closed")
    assert "przychodnia: closed until lifted" in out and ": closed (override)" in out
    assert "callers hear: " in out  # the closed message, from the schedule
    out = hours(config, capsys, "lift")
    assert "przychodnia: override lifted" in out and "(override)" not in out
    out = hours(config, capsys, "open", "--until", "next")
    assert re.search(r"przychodnia: open until \d{4}-\d\d-\d\d \d\d:\d\d", out)
    out = hours(config, capsys, "closed", "--until", "2099-01-02 08:00")
    assert "przychodnia: closed until 2099-01-02 08:00" in out


def test_a_bad_until_is_refused_with_the_expected_form(config, capsys):
    assert cli_main(["--config", str(config), "hours", "closed", "--until", "jutro"]) != 0
    assert "write it as YYYY-MM-DD HH:MM" in capsys.readouterr().err
