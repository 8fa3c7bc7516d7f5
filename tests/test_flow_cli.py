"""`centralka flow check/import/export` and `centralka prompt upload`, with real audio.

Here prompt lengths are measured from what espeak-ng and sox actually produce, as on a box.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.store.db import open_db
from appliance.store.flows import active_flow

from .conftest import needs_tools

FLOWS = Path(__file__).parent / "flows"
pytestmark = needs_tools

LONG_GREETING = (
    "Dzień dobry, dodzwoniłeś się do przychodni rodzinnej Zdrowie przy ulicy Długiej w Warszawie. "
    "Rejestracja czynna jest od poniedziałku do piątku od ósmej do osiemnastej, w soboty od dziewiątej."
)


@pytest.fixture
def box_config(tmp_path, monkeypatch):
    """A box's settings file in a temporary directory (nothing running)."""
    monkeypatch.delenv("CENTRALKA_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # away from the repository's var/demo
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(f'[box]\ndata_dir = "{tmp_path / "data"}"\n[control]\nsocket = "{tmp_path / "core.sock"}"\n')
    (tmp_path / "data").mkdir()
    return cfg


def run(*argv, config=None):
    args = (["--config", str(config)] if config else []) + list(argv)
    return main(args)


def test_good_flow_passes(box_config, capsys):
    assert run("flow", "check", str(FLOWS / "good.toml"), config=box_config) == 0
    assert "OK" in capsys.readouterr().out


def test_greeting_over_10_s_of_real_speech_is_refused(box_config, tmp_path, capsys):
    text = (FLOWS / "good.toml").read_text(encoding="utf-8")
    flow = tmp_path / "long.toml"
    flow.write_text(_with_prompt(text, "greeting", LONG_GREETING), encoding="utf-8")
    assert run("flow", "check", str(flow), config=box_config) == 1
    err = capsys.readouterr().err
    assert "[greeting-too-long]" in err and "powitanie" in err and "R2" in err


def test_uploaded_recording_counts_not_the_text(box_config, tmp_path, capsys):
    # The text is short, but the admin's recording of the greeting lasts 12 s (R2 is about audio).
    recording = tmp_path / "powitanie.mp3"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(recording), "synth", "12", "sine", "300"], check=True)
    assert run("prompt", "upload", "greeting", str(recording), config=box_config) == 0
    assert "12.0 s" in capsys.readouterr().out
    assert run("flow", "import", str(FLOWS / "good.toml"), config=box_config) == 1
    err = capsys.readouterr().err
    assert "[greeting-too-long]" in err and "12" in err
    assert active_flow(open_db(tmp_path / "data" / "centralka.db")) is None  # nothing was saved


def test_refused_import_keeps_the_active_flow(box_config, tmp_path, capsys):
    assert run("flow", "import", str(FLOWS / "good.toml"), config=box_config) == 0
    db_path = tmp_path / "data" / "centralka.db"
    before = active_flow(open_db(db_path))
    assert run("flow", "import", str(FLOWS / "loop.toml"), config=box_config) == 1
    assert "[loop]" in capsys.readouterr().err
    assert active_flow(open_db(db_path)) == before


@pytest.mark.parametrize(
    "name, code",
    [
        ("menu_five_options", "menu-too-many-options"),
        ("nested_menu", "nested-menu"),
        ("loop", "loop"),
        ("no_operator", "no-operator"),
        ("dead_end", "dead-end"),
        ("hangup_after_invalid", "hangup-not-allowed"),
        ("menu_timeout_20s", "silence-too-long"),
        ("gdpr_before_queue", "gdpr-mandatory"),
        ("four_transfers", "too-many-transfers"),
        ("unknown_node", "unknown-node"),
        ("bad_key", "bad-key"),
    ],
)
def test_each_broken_rule_is_refused_by_the_command(box_config, capsys, name, code):
    assert run("flow", "check", str(FLOWS / f"{name}.toml"), config=box_config) == 1
    err = capsys.readouterr().err
    assert f"[{code}]" in err and "error(s): flow refused" in err


def test_syntax_error_names_the_line(box_config, capsys):
    assert run("flow", "check", str(FLOWS / "syntax_error.toml"), config=box_config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "syntax_error.toml:10:" in err[0]


def test_export_then_import_round_trips(box_config, tmp_path, capsys):
    assert run("flow", "import", str(FLOWS / "good.toml"), config=box_config) == 0
    out = tmp_path / "exported.toml"
    assert run("flow", "export", str(out), config=box_config) == 0
    assert out.read_text(encoding="utf-8") == (FLOWS / "good.toml").read_text(encoding="utf-8")
    assert run("flow", "import", str(out), config=box_config) == 0


def test_upload_of_something_that_is_not_audio_is_a_clear_error(box_config, tmp_path, capsys):
    fake = tmp_path / "greeting.wav"
    fake.write_text("this is not audio")
    assert run("prompt", "upload", "greeting", str(fake), config=box_config) == 1
    err = capsys.readouterr().err
    assert err.startswith("centralka: prompt 'greeting' (greeting.wav): sox failed")
    assert not (tmp_path / "data" / "prompts" / "uploaded" / "greeting.wav").exists()


def test_command_line_runs_as_a_program(box_config):
    proc = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "--config", str(box_config), "flow", "check", str(FLOWS / "loop.toml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "[loop]" in proc.stderr


def _with_prompt(text: str, name: str, value: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{name} = "):
            lines[i] = f'{name} = "{value}"'
            return "\n".join(lines) + "\n"
    raise AssertionError(f"no prompt {name} in the flow")
