"""Agents and queues: who answers queued calls, and how they are rung (R9).

Kept in the database as a TOML text the admin can export, edit, diff and import (like flows)
until the web UI arrives:

    [agents.anna]
    name = "Anna Nowak"
    phones = ["201"]                 # desk phones (extensions registered at the box)

    [queues.rejestracja]
    name = "Rejestracja"
    strategy = "round_robin"         # ring_all | round_robin | longest_idle | fewest_calls
    members = ["anna", "basia"]
    ring_timeout = 15                # seconds one attempt rings before the next agent
    wrapup_s = 10                    # after a call the agent gets this long before the next
    announce_min_gap_s = 20          # never two position announcements closer than this
    when_no_agents = "leave"         # leave: take the flow's on_no_agents path; wait: stay queued
    callback_mode = "auto"           # auto: the box calls back at the caller's place; list: staff do
    team = "rejestracja"             # whose e-mail a callback request is ([mail] teams); default: the id
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from ..errors import FlowSyntaxError
from ..store import staff as store_staff

STRATEGIES = ("ring_all", "round_robin", "longest_idle", "fewest_calls")


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    phones: tuple[str, ...]


@dataclass(frozen=True)
class QueueConfig:
    id: str
    name: str
    strategy: str
    members: tuple[str, ...]
    ring_timeout: float = 15
    wrapup_s: float = 10
    announce_min_gap_s: float = 20
    when_no_agents: str = "leave"
    callback_mode: str = "auto"
    team: str = ""


@dataclass
class Staff:
    agents: dict[str, Agent] = field(default_factory=dict)
    queues: dict[str, QueueConfig] = field(default_factory=dict)


_QUEUE_KEYS = {
    "name": str,
    "strategy": str,
    "members": list,
    "ring_timeout": (int, float),
    "wrapup_s": (int, float),
    "announce_min_gap_s": (int, float),
    "when_no_agents": str,
    "callback_mode": str,
    "team": str,
}
CALLBACK_MODES = ("auto", "list")


def load_staff_text(text: str, source: str = "staff.toml") -> Staff:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FlowSyntaxError(str(exc), source=source) from exc

    def fail(msg):
        raise FlowSyntaxError(msg, source=source)

    unknown = set(data) - {"agents", "queues"}
    if unknown:
        fail(f"unknown table(s): {', '.join(sorted(unknown))} (expected [agents.*] and [queues.*])")
    staff = Staff()
    for aid, raw in data.get("agents", {}).items():
        if not isinstance(raw, dict):
            fail(f"agents.{aid} must be a table")
        extra = set(raw) - {"name", "phones"}
        if extra:
            fail(f"agents.{aid}: unknown key(s) {', '.join(sorted(extra))}")
        phones = raw.get("phones", [])
        if not isinstance(phones, list) or not all(isinstance(p, str) and p.isdigit() for p in phones):
            fail(f'agents.{aid}.phones: a list of extensions such as ["201"]')
        staff.agents[aid] = Agent(aid, str(raw.get("name", aid)), tuple(phones))
    for qid, raw in data.get("queues", {}).items():
        if not isinstance(raw, dict):
            fail(f"queues.{qid} must be a table")
        for key, value in raw.items():
            if key not in _QUEUE_KEYS:
                fail(f"queues.{qid}: unknown key {key!r}")
            if not isinstance(value, _QUEUE_KEYS[key]) or isinstance(value, bool):
                fail(f"queues.{qid}.{key}: wrong type {type(value).__name__}")
        strategy = raw.get("strategy", "ring_all")
        if strategy not in STRATEGIES:
            fail(f"queues.{qid}.strategy: {strategy!r}; one of {', '.join(STRATEGIES)}")
        members = tuple(raw.get("members", []))
        missing = [m for m in members if m not in staff.agents]
        if missing:
            fail(f"queues.{qid}.members: no agent {', '.join(missing)}")
        if raw.get("when_no_agents", "leave") not in ("leave", "wait"):
            fail(f"queues.{qid}.when_no_agents: 'leave' or 'wait'")
        if raw.get("callback_mode", "auto") not in CALLBACK_MODES:
            fail(f"queues.{qid}.callback_mode: 'auto' or 'list'")
        for key in ("ring_timeout", "wrapup_s", "announce_min_gap_s"):
            if key in raw and raw[key] < 0:
                fail(f"queues.{qid}.{key}: must not be negative")
        staff.queues[qid] = QueueConfig(
            id=qid,
            name=str(raw.get("name", qid)),
            strategy=strategy,
            members=members,
            ring_timeout=raw.get("ring_timeout", 15),
            wrapup_s=raw.get("wrapup_s", 10),
            announce_min_gap_s=raw.get("announce_min_gap_s", 20),
            when_no_agents=raw.get("when_no_agents", "leave"),
            callback_mode=raw.get("callback_mode", "auto"),
            team=str(raw.get("team", qid)),
        )
    return staff


def stored_staff_text(db) -> str | None:
    """The agents-and-queues file last imported (``centralka staff import``), or None."""
    return store_staff.latest_text(db)
