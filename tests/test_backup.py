"""Backups and restores (issue 12 item 10): consistent snapshots through the SQLite backup API
while the database is in use, rotation, a snapshot before an upgrade's migrations, and a restore
that checks the file before anything is replaced."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from appliance.cli import main as cli_main
from appliance.store import backup
from appliance.store import calls as store_calls
from appliance.store.db import known_migrations, migrations, open_db

from .sipkit import ROOT


@pytest.fixture
def config(tmp_path):
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(f'[box]\ndata_dir = "{tmp_path}"\n[control]\nsocket = "{tmp_path / "core.sock"}"\n')
    return cfg


def a_call(db, who: str) -> int:
    return store_calls.start_call(
        db, direction="in", line="sip", caller_raw=who, caller=who, caller_kind="e164", dialled="1"
    )


def callers(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT caller FROM calls ORDER BY id")]
    finally:
        conn.close()


def test_a_backup_is_a_consistent_snapshot_taken_while_the_database_is_written(tmp_path, config, capsys):
    db = open_db(tmp_path / "centralka.db")
    a_call(db, "+48600000001")  # committed, still in the WAL file
    assert cli_main(["--config", str(config), "backup"]) == 0
    a_call(db, "+48600000002")  # after the snapshot
    [snap] = sorted((tmp_path / "backups").glob("centralka-*.db"))
    assert callers(snap) == ["+48600000001"]
    assert backup.problems(snap, known_migrations()) == []
    assert snap.with_suffix(".toml").read_text() == config.read_text()  # the settings with it
    assert "backup " in capsys.readouterr().out


def test_rotation_keeps_the_newest(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    for day in range(1, 6):
        (folder / f"centralka-2026120{day}T030000Z.db").write_bytes(b"x")
    (folder / "pre-m012_mail_outbox-20261101T000000Z.db").write_bytes(b"x")
    gone = backup.rotate(folder, 2)
    assert [p.name for p in gone] == [f"centralka-2026120{d}T030000Z.db" for d in (1, 2, 3)]
    assert sorted(p.name for p in folder.iterdir()) == [
        "centralka-20261204T030000Z.db",
        "centralka-20261205T030000Z.db",
        "pre-m012_mail_outbox-20261101T000000Z.db",  # kept: taken before an upgrade
    ]


def test_an_upgrade_takes_a_snapshot_before_its_migrations(tmp_path):
    path = tmp_path / "centralka.db"
    names = known_migrations()
    conn = sqlite3.connect(path, isolation_level=None)
    import sqlite_utils

    old = sqlite_utils.Database(conn)
    migrations.apply(old, stop_before=names[-2])  # a box two versions behind
    conn.close()
    open_db(path).close()
    [snap] = list((tmp_path / "backups").glob("pre-*.db"))
    assert snap.name.startswith(f"pre-{names[-2]}-")
    applied = [r[0] for r in sqlite3.connect(snap).execute("SELECT name FROM _sqlite_migrations")]
    assert names[-2] not in applied and names[-3] in applied
    open_db(path).close()  # up to date: no second snapshot
    assert len(list((tmp_path / "backups").glob("pre-*.db"))) == 1


def restore(config, file) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "--config", str(config), "restore", str(file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_a_restore_checks_the_file_first_and_keeps_the_database_it_replaces(tmp_path, config):
    db = open_db(tmp_path / "centralka.db")
    a_call(db, "+48600000001")
    snap = backup.take(db, tmp_path / "saved.db")
    a_call(db, "+48600000002")
    db.close()

    not_db = tmp_path / "notes.db"
    not_db.write_text("hello")
    damaged = tmp_path / "damaged.db"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
    damaged.write_bytes(bytes(data))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    for bad, said in (
        (not_db, "not an SQLite database"),
        (damaged, "damaged"),
        (other, "not a Centralka database"),
        (tmp_path / "missing.db", "no such file"),
    ):
        done = restore(config, bad)
        assert done.returncode != 0 and said in done.stderr and "not restored" in done.stderr
        assert callers(tmp_path / "centralka.db") == ["+48600000001", "+48600000002"]  # untouched

    done = restore(config, snap)
    assert done.returncode == 0, done.stderr
    assert callers(tmp_path / "centralka.db") == ["+48600000001"]
    [kept] = list((tmp_path / "backups").glob("pre-restore-*.db"))
    assert callers(kept) == ["+48600000001", "+48600000002"]


def test_a_backup_from_newer_software_is_refused(tmp_path):
    db = open_db(tmp_path / "centralka.db")
    db.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('centralka', 'm999_future', 'x')"
    )
    snap = backup.take(db, tmp_path / "future.db")
    [said] = backup.problems(snap, known_migrations())
    assert "newer Centralka" in said and "m999_future" in said
