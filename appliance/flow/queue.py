"""The queue (ACD): callers wait in order, agents are rung by the queue's strategy (R9).

One ``QueueManager`` per box. Each queue keeps its waiting callers in order; a dispatcher offers
the caller at the head (and the next ones, while agents are left) to available agents:

- ring_all: every available agent's phones ring; the first to answer takes the call;
- round_robin: the next agent after the one who rang last (memory survives between calls);
- longest_idle: the agent whose last call ended longest ago;
- fewest_calls: the agent who has taken the fewest calls today.

An agent is available when not paused, not on a call, not ringing, past the wrap-up time of
the last call, and not found unreachable in the last half minute (a phone that is not
registered answers 480 at once). Handling times (talk + wrap-up) are measured per queue and
persisted, and feed the wait estimate announced to callers (R10).

Callback requests of a queue in ``callback_mode = "auto"`` stand in the line as virtual callers
at the place their caller had (R12): the dispatcher merges them with the callers holding, by
the moment each joined, and a free agent at the front takes the next one — a request whose
caller joined before a holding caller is served first, one who joined after waits its turn.
While callers hold, at most ``callbacks.agent_share`` of the serving agents are on callbacks
(at least one may be). The call itself is ``flow/callback_call.py``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from ..errors import CallLimitReached, CentralkaError, SipError
from ..store import agents as store_agents
from ..store import callbacks as store_callbacks
from ..store import queue as store_queue
from .estimate import HandlingStats, estimate_wait, resolve_announcements
from .staff import Agent, QueueConfig, Staff

# The line a request outside any queue is called back from (``centralka callbacks call``).
_ADHOC = QueueConfig(id="", name="", strategy="ring_all", members=(), ring_timeout=20, wrapup_s=0)

log = logging.getLogger("centralka.queue")

UNREACHABLE_S = 30.0
RETRY_S = 2.0
CALLBACK_POLL_S = 30.0  # due callbacks are looked at on every change and at least this often


@dataclass
class AgentState:
    agent: Agent
    paused: bool = False
    busy: bool = False
    ringing: bool = False
    wrapup_until: float = 0.0
    unreachable_until: float = 0.0
    last_call_end: float = 0.0  # wall clock; 0 = no call yet today
    calls_today: int = 0
    call_started: float | None = None

    def available(self, now: float) -> bool:
        return (
            not self.paused
            and not self.busy
            and not self.ringing
            and now >= self.wrapup_until
            and now >= self.unreachable_until
            and bool(self.agent.phones)
        )


@dataclass
class QueueEntry:
    session: object
    queue: "QueueRuntime"
    joined: float
    row_id: int
    answered: asyncio.Future
    joined_at: str = ""  # wall-clock stamp: the caller's place in line, kept by a callback request
    ringing: bool = False
    done: bool = False
    offering: bool = False  # hearing the callback offer: keeps the place, is not rung meanwhile
    booking: bool = False  # confirmed a callback: an agent answering now is too late
    said_wait: float | None = None  # the last wait announced to this caller
    said_serving: int = 0  # how many agents served the queue then
    announced: list = field(default_factory=list)  # (monotonic, wait said, position) per announcement
    number: str = ""  # the caller's E.164 number, when known (a request of theirs waits for them)


@dataclass
class QueueRuntime:
    cfg: QueueConfig
    manager: "QueueManager"
    stats: HandlingStats
    waiting: list[QueueEntry] = field(default_factory=list)
    last_rung: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    virtual: list = field(default_factory=list)  # due callback requests standing in line (rows)
    calling: set = field(default_factory=set)  # ids of the requests being called back now

    def members(self) -> list[AgentState]:
        return [self.manager.agents[m] for m in self.cfg.members if m in self.manager.agents]

    def can_serve(self) -> bool:
        """Is anyone there at all (logged in and not paused), now or after their current call?"""
        now = self.manager.clock.monotonic()
        return any(not a.paused and a.agent.phones and now >= a.unreachable_until for a in self.members())

    def serving_count(self) -> int:
        """Agents who serve this queue now or after their current call (not paused, reachable)."""
        now = self.manager.clock.monotonic()
        return sum(1 for a in self.members() if not a.paused and a.agent.phones and now >= a.unreachable_until)

    def position(self, entry: QueueEntry) -> int:
        """1 = next; callback requests whose callers joined earlier count as people ahead."""
        if entry not in self.waiting:
            return 0
        ahead = sum(1 for row in self.virtual if place_of(row) < entry.joined_at)
        return self.waiting.index(entry) + 1 + ahead

    def holding(self) -> list[QueueEntry]:
        return [e for e in self.waiting if not e.done]

    def estimate(self, entry: QueueEntry) -> float:
        """Seconds until this caller is answered, from measured handling times (R10)."""
        now, now_wall = self.manager.clock.monotonic(), self.manager.clock.time()
        busy, idle = [], 0
        for a in self.members():
            if a.paused or not a.agent.phones or now < a.unreachable_until:
                continue
            if a.busy and a.call_started:
                busy.append(now_wall - a.call_started)  # handling = talk + wrap-up, from the answer
            elif a.ringing:
                busy.append(0.0)  # about to take a call
            elif now < a.wrapup_until:
                # In wrap-up: the handling time observed includes it, so count it as a call
                # nearly done (elapsed = the handling time minus what is left of the wrap-up).
                busy.append(max(0.0, self.stats.mean - (a.wrapup_until - now)))
            else:
                idle += 1
        return estimate_wait(self.position(entry), busy, idle, self.stats, hour=self.manager.hour())


class QueueManager:
    def __init__(self, services, staff: Staff):
        self.services = services
        self.clock = services.clock
        self.agents: dict[str, AgentState] = {}
        self.queues: dict[str, QueueRuntime] = {}
        self._tasks: list[asyncio.Task] = []
        self._ringers: set[asyncio.Task] = set()
        from .callback_call import CallbackCaller

        self.caller = CallbackCaller(services)
        reopened = store_callbacks.reopen_interrupted(services.db, at=self.clock.stamp())
        if reopened:
            log.info("%d callback request(s) were being called when the box stopped: open again", reopened)
        self.apply(staff)
        self._tasks.append(asyncio.get_running_loop().create_task(self._poll_callbacks(), name="callback-poll"))

    # --- configuration ---------------------------------------------------------------------
    def apply(self, staff: Staff) -> None:
        db = self.services.db
        paused = store_agents.paused_agents(db)
        old = self.agents
        self.agents = {}
        for aid, agent in staff.agents.items():
            prev = old.get(aid)
            st = AgentState(agent=agent, paused=paused.get(aid, False))
            if prev:
                st.busy, st.ringing, st.wrapup_until = prev.busy, prev.ringing, prev.wrapup_until
                st.last_call_end, st.calls_today, st.call_started = (
                    prev.last_call_end,
                    prev.calls_today,
                    prev.call_started,
                )
            self.agents[aid] = st
        for qid, cfg in staff.queues.items():
            saved = store_queue.load_stats(db, qid)
            stats = HandlingStats.from_dict(saved) if saved else HandlingStats()
            if qid in self.queues:
                self.queues[qid].cfg = cfg
            else:
                q = QueueRuntime(cfg=cfg, manager=self, stats=stats)
                self.queues[qid] = q
                self._tasks.append(asyncio.get_running_loop().create_task(self._dispatch(q), name=f"queue-{qid}"))
        self.kick()

    def get(self, qid: str) -> QueueRuntime | None:
        return self.queues.get(qid)

    def set_paused(self, aid: str, paused: bool) -> bool:
        st = self.agents.get(aid)
        if st is None:
            return False
        st.paused = paused
        store_agents.set_paused(self.services.db, aid, paused, at=self.clock.stamp())
        self.kick()
        return True

    def kick(self) -> None:
        for q in self.queues.values():
            q.wake.set()

    def hour(self) -> float:
        """The clinic's local time of day in hours (8.5 = 8:30): handling times depend on it
        (the morning's short registrations, the afternoon's longer calls)."""

        now = self.clock.now().astimezone(self.services.settings.tz)
        return now.hour + now.minute / 60.0

    async def stop(self):
        tasks = self._tasks + list(self._ringers)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self) -> dict:
        now = self.clock.monotonic()
        return {
            "agents": {
                aid: {
                    "paused": a.paused,
                    "busy": a.busy,
                    "ringing": a.ringing,
                    "wrapup_s": max(0.0, round(a.wrapup_until - now, 1)),
                    "calls_today": a.calls_today,
                    "available": a.available(now),
                }
                for aid, a in self.agents.items()
            },
            "queues": {
                qid: {
                    "waiting": len(q.waiting),
                    "strategy": q.cfg.strategy,
                    "mean_handle_s": round(q.stats.mean, 1),
                    "observed": q.stats.count,
                }
                for qid, q in self.queues.items()
            },
        }

    # --- callers ---------------------------------------------------------------------------
    def join(self, q: QueueRuntime, session) -> QueueEntry:
        at = self.clock.stamp()
        row = store_queue.record_join(self.services.db, session.call_id, q.cfg.id, at=at)
        entry = QueueEntry(
            session=session,
            queue=q,
            joined=self.clock.monotonic(),
            row_id=row,
            answered=asyncio.get_running_loop().create_future(),
            joined_at=at,
            number=getattr(session, "caller_number", "") or "",
        )
        q.waiting.append(entry)
        q.wake.set()
        return entry

    def leave(self, entry: QueueEntry, reason: str) -> None:
        """The caller leaves without an agent: timeout, hung up, left by key, no agents."""
        q = entry.queue
        entry.done = True
        if entry in q.waiting:
            q.waiting.remove(entry)
        waited = self.clock.monotonic() - entry.joined
        store_queue.record_exit(self.services.db, entry.row_id, reason, waited, at=self.clock.stamp())
        if reason not in ("no_agents", "callback"):
            # Callers who hang up while waiting shorten the queue for those behind them; a key
            # press or the time limit is not impatience.
            q.stats.observe_wait(waited, abandoned=reason == "caller_hangup")
        q.wake.set()

    def answered(self, entry: QueueEntry, agent: AgentState) -> None:
        waited = self.clock.monotonic() - entry.joined
        store_queue.record_answer(self.services.db, entry.row_id, agent.agent.id, waited, at=self.clock.stamp())
        entry.queue.stats.observe_wait(waited, abandoned=False)
        # Now the box knows how wrong each announcement to this caller was: it learns from that.
        resolve_announcements(entry.queue.stats, entry.announced, self.clock.monotonic())

    def call_ended(self, entry: QueueEntry, agent: AgentState, talk_s: float) -> None:
        q = entry.queue
        agent.busy = False
        agent.call_started = None
        agent.last_call_end = self.clock.time()
        agent.calls_today += 1
        agent.wrapup_until = self.clock.monotonic() + q.cfg.wrapup_s
        handle = talk_s + q.cfg.wrapup_s
        q.stats.observe(handle, hour=self.hour())
        store_queue.record_end(self.services.db, entry.row_id, handle, at=self.clock.stamp())
        store_queue.save_stats(self.services.db, q.cfg.id, q.stats.to_dict())
        # Wake the dispatcher when the wrap-up is over, not before.
        asyncio.get_running_loop().call_later(q.cfg.wrapup_s + 0.05, self.kick)

    # --- dispatching -----------------------------------------------------------------------
    def _choose(self, q: QueueRuntime, free: list[AgentState]) -> list[AgentState]:
        if not free:
            return []
        strategy = q.cfg.strategy
        if strategy == "ring_all":
            return free
        if strategy == "round_robin":
            order = list(q.cfg.members)
            start = order.index(q.last_rung) + 1 if q.last_rung in order else 0
            rotated = order[start:] + order[:start]
            return [
                next(a for a in free if a.agent.id == aid) for aid in rotated if any(a.agent.id == aid for a in free)
            ][:1]
        if strategy == "longest_idle":
            return [min(free, key=lambda a: (a.last_call_end, q.cfg.members.index(a.agent.id)))]
        if strategy == "fewest_calls":
            return [min(free, key=lambda a: (a.calls_today, a.last_call_end, q.cfg.members.index(a.agent.id)))]
        raise ValueError(strategy)

    async def _dispatch(self, q: QueueRuntime):
        while True:
            await q.wake.wait()
            q.wake.clear()
            try:
                self._refresh_virtual(q)
                now = self.clock.monotonic()
                for item in self._line(q):
                    free = [a for a in q.members() if a.available(now)]
                    if isinstance(item, dict):
                        if not self._callback_may_go(q):
                            continue
                        chosen = self._choose(q, free)[:1]
                        if not chosen:
                            break
                        self._start_callback(q, item, chosen[0])
                        continue
                    entry = item
                    if entry.ringing or entry.done or entry.offering:
                        continue
                    chosen = self._choose(q, free)
                    if not chosen:
                        break
                    entry.ringing = True
                    self._start(self._ring(q, entry, chosen), chosen)
            except Exception:  # noqa: BLE001 — a dispatcher must never die
                log.exception("queue %s: dispatcher error", q.cfg.id)
                await asyncio.sleep(RETRY_S)
                q.wake.set()

    def _start(self, coro, agents: list[AgentState]) -> None:
        for a in agents:
            a.ringing = True
        task = asyncio.get_running_loop().create_task(coro)
        self._ringers.add(task)
        task.add_done_callback(self._ringers.discard)

    # --- callbacks standing in line ------------------------------------------------------------
    def _refresh_virtual(self, q: QueueRuntime) -> None:
        """The queue's due automatic requests, except those being called and those whose caller
        is still on the line with us (booking, or holding again)."""
        if q.cfg.callback_mode != "auto":
            q.virtual = []
            return
        present = {e.number for e in q.waiting if e.number} | {e.session.call_id for e in q.waiting}
        rows = store_callbacks.due(self.services.db, q.cfg.id, self.clock.stamp())
        q.virtual = [
            r for r in rows if r["id"] not in q.calling and r["number"] not in present and r["call_id"] not in present
        ]

    def _line(self, q: QueueRuntime) -> list:
        """Holding callers and due requests, in the order their callers joined."""
        items = [(e.joined_at, i, e) for i, e in enumerate(q.waiting)]
        items += [(place_of(r), len(items) + i, r) for i, r in enumerate(q.virtual)]
        return [item for *_, item in sorted(items, key=lambda t: (t[0], t[1]))]

    def _callback_may_go(self, q: QueueRuntime) -> bool:
        if not q.holding():
            return True
        share = float(self.services.settings.callbacks.get("agent_share", 0.5))
        limit = max(1, int(share * q.serving_count() + 1e-9))
        return len(q.calling) < limit

    def _start_callback(self, q: QueueRuntime, row: dict, agent: AgentState) -> None:
        # Counted at once: the share check of the same dispatching pass must see it.
        q.calling.add(row["id"])
        q.virtual = [r for r in q.virtual if r["id"] != row["id"]]
        self._start(self._serve_callback(q, row, agent), [agent])

    async def _serve_callback(self, q: QueueRuntime, row: dict, agent: AgentState) -> str:
        outcome = "error"
        try:
            outcome = await self.caller.serve(
                row, agent, queue_name=q.cfg.name or q.cfg.id, ring_timeout=q.cfg.ring_timeout
            )
        except Exception:  # noqa: BLE001 — one failed call back must not stop the queue
            log.exception("queue %s: callback #%d failed", q.cfg.id, row["id"])
        finally:
            q.calling.discard(row["id"])
            self._agent_done(q, agent, talked=outcome == "connected")
            if outcome in ("agent_missed", "agent_declined", "not_reached"):
                # Look again when the request's next try is due.
                asyncio.get_running_loop().call_later(self._seconds_to_next_due() or CALLBACK_POLL_S, self.kick)
        return outcome

    def _agent_done(self, q: QueueRuntime, agent: AgentState, *, talked: bool) -> None:
        was_busy = agent.busy
        agent.ringing = agent.busy = False
        agent.call_started = None
        if was_busy:
            agent.last_call_end = self.clock.time()
            agent.calls_today += 1
            agent.wrapup_until = self.clock.monotonic() + (q.cfg.wrapup_s if talked else 0.0)
            asyncio.get_running_loop().call_later((q.cfg.wrapup_s if talked else 0.0) + 0.05, self.kick)
        self.kick()

    def _seconds_to_next_due(self) -> float | None:
        from ..clock import parse_stamp

        at = store_callbacks.next_due_at(self.services.db, self.clock.stamp())
        return max(0.5, parse_stamp(at) - self.clock.time() + 0.5) if at else None

    async def _poll_callbacks(self):
        """Retries and windows that open with nobody else waking the queues."""
        while True:
            await asyncio.sleep(min(CALLBACK_POLL_S, self._seconds_to_next_due() or CALLBACK_POLL_S))
            self.kick()

    def call_back_now(self, callback_id: int, agent_id: str | None = None) -> dict:
        """``centralka callbacks call c5 [--agent anna]`` (and the web UI's click-to-call): ring
        an agent now — the one named, else a free member of the request's queue — then the
        patient. Works in both modes; raises CentralkaError with the reason when it cannot."""
        row = store_callbacks.get(self.services.db, callback_id)
        if row is None or row["state"] not in store_callbacks.OPEN_STATES:
            raise CentralkaError(f"c{callback_id} is not an open callback request (see `centralka callbacks`)")
        if row["state"] == "calling" or any(callback_id in q.calling for q in self.queues.values()):
            raise CentralkaError(f"c{callback_id} is being called back right now")
        q = self.queues.get(row["queue"] or "")
        now = self.clock.monotonic()
        if agent_id:
            agent = self.agents.get(agent_id)
            if agent is None:
                raise CentralkaError(f"no agent {agent_id!r} (see `centralka staff export`)")
            if not agent.available(now):
                raise CentralkaError(f"agent {agent_id} is not free now (on a call, ringing, paused or in wrap-up)")
        else:
            members = q.members() if q is not None else list(self.agents.values())
            free = [a for a in members if a.available(now)]
            if not free:
                raise CentralkaError("no agent is free now; name one with --agent")
            agent = free[0]
        runtime = q or QueueRuntime(cfg=_ADHOC, manager=self, stats=HandlingStats())
        self._start_callback(runtime, row, agent)
        return {
            "callback": callback_id,
            "agent": agent.agent.id,
            "phones": list(agent.agent.phones),
            "number": row["number"],
        }

    async def _ring(self, q: QueueRuntime, entry: QueueEntry, agents: list[AgentState]):
        legs = {}
        stack = self.services.stack
        try:
            for a in agents:
                if q.cfg.strategy == "round_robin":
                    q.last_rung = a.agent.id
                for ext in a.agent.phones:
                    try:
                        leg = stack.dial(self.services.resolve_target(f"ext:{ext}"))
                    except CallLimitReached as exc:
                        log.warning("queue %s: cannot ring %s: %s", q.cfg.id, a.agent.id, exc)
                        continue
                    except SipError as exc:
                        log.warning("queue %s: cannot ring %s (%s): %s", q.cfg.id, a.agent.id, ext, exc)
                        a.unreachable_until = self.clock.monotonic() + UNREACHABLE_S
                        continue
                    legs[leg] = a
            if legs:
                entry.session.step(
                    "agent_ringing", None, {"queue": q.cfg.id, "agents": sorted({a.agent.id for a in legs.values()})}
                )
            winner = await self._first_answer(entry, legs, q.cfg.ring_timeout)
        finally:
            for a in agents:
                a.ringing = False
        if winner is not None:
            leg, agent = winner
            for other in legs:
                if other is not leg:
                    other.hangup()
            if entry.done or entry.booking or entry.answered.done() or not entry.session.leg.alive:
                leg.hangup()  # the caller left (or booked a callback) while the phone was picked up
            else:
                agent.busy = True
                agent.call_started = self.clock.time()
                if entry in q.waiting:
                    q.waiting.remove(entry)
                self.answered(entry, agent)
                entry.answered.set_result((agent, leg))
        else:
            for leg, agent in legs.items():
                leg.hangup()
                d = leg.disconnected.result() if leg.disconnected.done() else None
                if d is not None and d.code in (404, 408, 480, 503):
                    agent.unreachable_until = self.clock.monotonic() + UNREACHABLE_S
                    log.info("queue %s: agent %s unreachable (%d %s)", q.cfg.id, agent.agent.id, d.code, d.reason)
            entry.ringing = False
            if not legs:
                await asyncio.sleep(RETRY_S)
        q.wake.set()

    async def _first_answer(self, entry, legs: dict, timeout: float):
        leg = await first_to_answer(
            self.clock,
            list(legs),
            timeout,
            give_up=lambda: entry.done or not entry.session.leg.alive,
            watch=entry.session.leg.disconnected,
        )
        return None if leg is None else (leg, legs[leg])


async def first_to_answer(clock, legs: list, timeout: float, *, give_up=lambda: False, watch=None):
    """The first of ringing ``legs`` to answer within ``timeout``, or None (all ended, time up,
    or ``give_up()``: the caller they ring for left; ``watch``, a future, wakes that check)."""
    if not legs:
        return None
    deadline = clock.monotonic() + timeout
    while True:
        for leg in legs:
            if leg.confirmed.done() and leg.confirmed.result():
                return leg
        live = [leg for leg in legs if leg.alive]
        left = deadline - clock.monotonic()
        if not live or left <= 0 or give_up():
            return None
        waits = [asyncio.ensure_future(asyncio.shield(leg.confirmed)) for leg in live]
        waits += [asyncio.ensure_future(asyncio.shield(leg.disconnected)) for leg in live]
        if watch is not None:
            waits.append(asyncio.ensure_future(asyncio.shield(watch)))
        done, pending = await asyncio.wait(waits, timeout=min(left, 1.0), return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()


def place_of(row: dict) -> str:
    """A request's place in line: when its caller joined the queue (or asked, outside one)."""
    return row.get("place_at") or row.get("created_at") or ""
