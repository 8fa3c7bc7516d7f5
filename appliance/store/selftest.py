"""Self-test calls (``selftest_calls``): one row per call the box made to its own number."""

from __future__ import annotations

import json

from .db import utcnow


def start(db, *, trigger: str, target: str, line: str, number: str, at: str | None = None) -> int:
    row = {"started_at": at or utcnow(), "trigger": trigger, "target": target, "line": line, "number": number}
    return db["selftest_calls"].insert({**row, "result": "running"}).last_pk


def finish(
    db,
    row_id: int,
    *,
    result: str,
    reason: str,
    message: dict | None,
    checks: list[dict],
    recording: str | None,
    answered_s: float | None,
    in_call_id: int | None,
    line: str | None = None,
    at: str | None = None,
) -> None:
    fields = {
        "ended_at": at or utcnow(),
        "result": result,
        "reason": reason,
        "message": json.dumps(message, ensure_ascii=False, sort_keys=True) if message else None,
        "checks": json.dumps(checks, ensure_ascii=False),
        "recording": recording,
        "answered_s": answered_s,
        "in_call_id": in_call_id,
    }
    if line is not None:
        fields["line"] = line
    db["selftest_calls"].update(row_id, fields)


def recent(db, limit: int = 20) -> list[dict]:
    rows = list(db.query("SELECT * FROM selftest_calls ORDER BY id DESC LIMIT ?", [limit]))
    for r in rows:
        r["checks"] = json.loads(r["checks"]) if r.get("checks") else []
    return rows


def failures_in_a_row(db) -> int:
    """How many of the latest finished self-tests failed, counting back to the last PASS."""
    n = 0
    for (result,) in db.execute(
        "SELECT result FROM selftest_calls WHERE result IN ('PASS', 'FAIL') ORDER BY id DESC LIMIT 100"
    ):
        if result != "FAIL":
            break
        n += 1
    return n


def interrupted(db, *, at: str | None = None) -> int:
    """Rows left ``running`` by a core that stopped mid-call: closed as not finished."""
    cur = db.execute(
        "UPDATE selftest_calls SET result = 'SKIP', reason = 'interrupted', ended_at = ? WHERE result = 'running'",
        [at or utcnow()],
    )
    return cur.rowcount


def recordings_beyond(db, keep: int) -> list[tuple[int, str]]:
    """(id, path) of recordings older than the newest ``keep``: to be deleted."""
    return [
        (r[0], r[1])
        for r in db.execute(
            "SELECT id, recording FROM selftest_calls WHERE recording IS NOT NULL ORDER BY id DESC LIMIT -1 OFFSET ?",
            [keep],
        )
    ]


def recordings_before(db, before: str) -> list[tuple[int, str]]:
    """(id, path) of self-test recordings of runs started before ``before`` (retention)."""
    return [
        (r[0], r[1])
        for r in db.execute(
            "SELECT id, recording FROM selftest_calls WHERE recording IS NOT NULL AND started_at < ?", [before]
        )
    ]


def recording_paths(db) -> set[str]:
    return {r[0] for r in db.execute("SELECT recording FROM selftest_calls WHERE recording IS NOT NULL")}


def forget_recording(db, row_id: int) -> None:
    db.execute("UPDATE selftest_calls SET recording = NULL WHERE id = ?", [row_id])


def mark_call(db, call_id: int, purpose: str) -> None:
    db["calls"].update(call_id, {"purpose": purpose})
