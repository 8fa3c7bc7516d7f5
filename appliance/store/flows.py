"""Call flows kept in the database: the TOML text as the admin wrote it, one active."""

from __future__ import annotations

from .db import transaction, utcnow


def save_flow(db, name: str, text: str, *, activate: bool = True) -> None:
    with transaction(db):
        if activate:
            db.execute("UPDATE flows SET active = 0 WHERE active = 1")
        db["flows"].upsert(
            {"name": name, "text": text, "active": 1 if activate else 0, "updated_at": utcnow()}, pk="name"
        )


def active_flow(db) -> dict | None:
    rows = list(db["flows"].rows_where("active = 1", limit=1))
    return rows[0] if rows else None


def get_flow(db, name: str) -> dict | None:
    rows = list(db["flows"].rows_where("name = ?", [name], limit=1))
    return rows[0] if rows else None


def list_flows(db) -> list[dict]:
    return list(db["flows"].rows_where(order_by="name"))
