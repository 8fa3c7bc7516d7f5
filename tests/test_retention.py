"""`centralka retention` (the daily timer): handled voice messages and self-test recordings past
their keeping time lose their audio, rows stay; a message nobody handled is never removed."""

import time

from appliance.cli import main as cli_main
from appliance.clock import stamp
from appliance.store import selftest as store_selftest
from appliance.store import voicemails as store_voicemails
from appliance.store.db import open_db


def test_old_recordings_go_and_unhandled_messages_stay(tmp_path, capsys):
    config = tmp_path / "centralka.toml"
    config.write_text(f'[box]\ndata_dir = "{tmp_path}"\n\n[retention]\nvoicemail_days = 90\nselftest_days = 30\n')
    db = open_db(tmp_path / "centralka.db")
    day = 86400
    now = time.time()

    def message(name, *, at, done_at=None):
        path = tmp_path / f"{name}.mp3"
        path.write_bytes(b"ID3 audio")
        vm = store_voicemails.add(
            db, call_id=None, at=stamp(at), number="+48600123456", path=str(path), mime="audio/mpeg"
        )
        if done_at is not None:
            store_voicemails.mark_done(db, vm, at=stamp(done_at), note="oddzwoniono")
        return vm, path

    old_done, old_done_path = message("old-done", at=now - 200 * day, done_at=now - 100 * day)
    old_open, old_open_path = message("old-open", at=now - 200 * day)  # nobody handled it: kept
    new_done, new_done_path = message("new-done", at=now - 10 * day, done_at=now - 5 * day)
    rec = tmp_path / "selftest-old.wav"
    rec.write_bytes(b"RIFF")
    st = store_selftest.start(
        db, trigger="schedule", target="gsm", line="trunk", number="+48600100200", at=stamp(now - 40 * day)
    )
    store_selftest.finish(
        db, st, result="PASS", reason="ok", message=None, checks=[], recording=str(rec), answered_s=1.0, in_call_id=None
    )

    assert cli_main(["--config", str(config), "retention", "--dry-run"]) == 0
    assert "2 recording(s) past their keeping time (dry run)" in capsys.readouterr().out
    assert old_done_path.exists() and rec.exists()

    assert cli_main(["--config", str(config), "retention"]) == 0
    out = capsys.readouterr().out
    assert f"removed voice message v{old_done}" in out and f"removed self-test recording #{st}" in out
    assert not old_done_path.exists() and not rec.exists()
    assert old_open_path.exists() and new_done_path.exists()
    assert store_voicemails.get(db, old_done)["path"] == ""  # the row stays, without audio
    assert store_selftest.recent(db)[0]["recording"] is None
    assert cli_main(["--config", str(config), "retention"]) == 0  # nothing more the next day
    assert "0 recording(s)" in capsys.readouterr().out
