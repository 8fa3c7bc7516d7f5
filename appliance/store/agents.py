"""Agents' state that outlives the core: who paused themselves (``centralka pause``)."""

from __future__ import annotations

from .db import utcnow


def set_paused(db, agent: str, paused: bool, *, at: str | None = None) -> None:
    db["agent_state"].upsert({"agent": agent, "paused": int(paused), "changed_at": at or utcnow()}, pk="agent")


def paused_agents(db) -> dict[str, bool]:
    """Every agent with a recorded state: id -> paused."""
    return {r["agent"]: bool(r["paused"]) for r in db["agent_state"].rows}


def clear_states(db) -> None:
    """Everyone back at their desk (the demo's fresh start)."""
    db["agent_state"].delete_where()
