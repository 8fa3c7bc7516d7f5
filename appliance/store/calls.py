"""Calls and their journeys: the rows every later report is built on."""

from __future__ import annotations

import json

from .db import utcnow


def start_call(
    db,
    *,
    direction: str,
    line: str,
    caller_raw: str,
    caller: str,
    caller_kind: str,
    dialled: str,
    sip_call_id: str = "",
    flow: str = "",
    at: str | None = None,
) -> int:
    return (
        db["calls"]
        .insert(
            {
                "started_at": at or utcnow(),
                "direction": direction,
                "line": line,
                "caller_raw": caller_raw,
                "caller": caller,
                "caller_kind": caller_kind,
                "dialled": dialled,
                "sip_call_id": sip_call_id,
                "flow": flow,
                "transfers": 0,
            }
        )
        .last_pk
    )


def add_step(db, call_id: int, step: str, node: str | None = None, detail=None, *, at: str | None = None) -> None:
    if detail is not None and not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False, sort_keys=True)
    db["call_steps"].insert({"call_id": call_id, "at": at or utcnow(), "step": step, "node": node, "detail": detail})


def update_call(db, call_id: int, **fields) -> None:
    db["calls"].update(call_id, fields)


def count_transfer(db, call_id: int) -> None:
    db.execute("UPDATE calls SET transfers = transfers + 1 WHERE id = ?", [call_id])


def unfinished(db) -> list[dict]:
    """Calls with no end: at start, those a power cut or a crash cut off."""
    return list(db["calls"].rows_where("ended_at IS NULL", order_by="id"))


def find_call(db, call_id: int) -> dict | None:
    rows = list(db["calls"].rows_where("id = ?", [call_id]))
    return rows[0] if rows else None


def get_call(db, call_id: int) -> dict:
    return db["calls"].get(call_id)


def journey(db, call_id: int) -> list[dict]:
    return list(db["call_steps"].rows_where("call_id = ?", [call_id], order_by="id"))


def recent_calls(db, limit: int = 50) -> list[dict]:
    return list(db["calls"].rows_where(order_by="id desc", limit=limit))
