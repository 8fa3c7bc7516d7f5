"""Backups of the database (R26, issue 12 item 10): the SQLite backup API, never a file copy.

A copy of a database in WAL mode taken with ``cp`` can miss what is still in the ``-wal`` file
or catch a page half-written; ``sqlite3.Connection.backup`` copies a consistent snapshot while
the core goes on writing. Every backup is written to a temporary name, fsynced and renamed, so
a power cut leaves the old backup or the new one, never half of one.

- :func:`take` writes one snapshot (the nightly backup, the one before migrations);
- :func:`rotate` keeps the newest ``keep`` nightly backups;
- :func:`problems` says what is wrong with a file offered for a restore (not SQLite, damaged,
  not a Centralka database, from a newer version of the software);
- :func:`replace` puts a checked backup in place of the live database (the core stopped).
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

NIGHTLY_PREFIX = "centralka-"


def named(prefix: str) -> str:
    """A snapshot's file name: ``prefix`` and the UTC time, e.g. ``centralka-20261204T033000Z``."""
    return prefix + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def take(db, dest: str | Path) -> Path:
    """A consistent snapshot of the open database ``db`` at ``dest`` (atomic)."""
    return _copy(db.conn, Path(dest))


def take_file(path: str | Path, dest: str | Path) -> Path:
    """The same for a database file, read as it is (nothing migrated or changed first)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _copy(conn, Path(dest))
    finally:
        conn.close()


def _copy(conn, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.unlink(missing_ok=True)
    target = sqlite3.connect(str(tmp))
    try:
        conn.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        target.close()
    _fsync(tmp)
    os.replace(tmp, dest)
    _fsync(dest.parent)
    return dest


def rotate(directory: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` nightly backups in ``directory``; returns the removed."""
    found = sorted(Path(directory).glob(f"{NIGHTLY_PREFIX}*.db"))
    gone = found[: max(0, len(found) - max(1, int(keep)))]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def problems(path: str | Path, known_migrations: list[str]) -> list[str]:
    """What stops ``path`` from being restored; empty when it is a sound Centralka database this
    software can run (every migration it records is one we know)."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            return [f"{path}: not an SQLite database"]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return [f"{path}: cannot open: {exc}"]
    try:
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            return [f"{path}: damaged: {exc}"]
        if rows != ["ok"]:
            return [f"{path}: damaged: {rows[0]}"]
        try:
            applied = [
                r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'centralka'")
            ]
        except sqlite3.DatabaseError:
            return [f"{path}: not a Centralka database (no migration record)"]
        if not applied or "calls" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}:
            return [f"{path}: not a Centralka database"]
        newer = [m for m in applied if m not in known_migrations]
        if newer:
            return [f"{path}: made by a newer Centralka (migration {newer[0]} is unknown to this one)"]
        return []
    finally:
        conn.close()


def replace(live: str | Path, backup: str | Path) -> None:
    """Put ``backup`` in place of the database at ``live``. Only with the core stopped: the
    live file's ``-wal``/``-shm`` go with it, and the backup arrives by an atomic rename."""
    live = Path(live)
    tmp = live.with_name(f".{live.name}.restore")
    tmp.write_bytes(Path(backup).read_bytes())
    _fsync(tmp)
    for side in ("-wal", "-shm"):
        Path(f"{live}{side}").unlink(missing_ok=True)
    os.replace(tmp, live)
    _fsync(live.parent)


def _fsync(path: Path) -> None:
    """A file's data, or a folder's entries (the rename), on the disk before going on."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
