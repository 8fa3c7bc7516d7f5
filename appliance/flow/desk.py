"""The call desk: every inbound call, whatever line it came on, becomes a stored call and a
:class:`CallSession` walking the active flow; a caller turned away at the call limit is stored
as a missed call. Lives on the core's event loop; the SIP stack and the GSM line hand it legs
through ``Services.incoming``.
"""

from __future__ import annotations

import asyncio
import logging

from ..numbers import normalise_caller, user_part
from ..store import calls as store_calls
from .engine import CallSession

log = logging.getLogger("centralka.core")


class CallDesk:
    def __init__(self, services):
        self.services = services
        self.sessions: dict[int, CallSession] = {}
        self.tasks: set[asyncio.Task] = set()

    def incoming(self, leg, account_name: str) -> None:
        svc = self.services
        caller, kind = normalise_caller(leg.remote_user, svc.settings.box.country)
        line = account_name if account_name in ("trunk", "gsm") else "sip"
        call_id = store_calls.start_call(
            svc.db,
            direction="in",
            line=line,
            caller_raw=leg.remote_uri,
            caller=caller,
            caller_kind=kind,
            dialled=leg.local_user,
            sip_call_id=leg.sip_call_id,
            flow=svc.flow_name or "",
            at=svc.clock.stamp(),
        )
        session = CallSession(svc, leg, svc.flow, call_id)
        self.sessions[call_id] = session
        log.info("call %d from %s (%s) to %s", call_id, caller, kind, leg.local_user)
        task = asyncio.get_running_loop().create_task(session.run(), name=f"call-{call_id}")
        self.tasks.add(task)
        task.add_done_callback(lambda t, cid=call_id: self._done(t, cid))

    def _done(self, task, call_id: int) -> None:
        self.tasks.discard(task)
        self.sessions.pop(call_id, None)

    def refused_at_limit(self, remote_uri: str, local_uri: str, sip_call_id: str) -> None:
        """A caller turned away at the call limit is a missed call: store it like any other."""
        svc = self.services
        caller, kind = normalise_caller(user_part(remote_uri), svc.settings.box.country)
        call_id = store_calls.start_call(
            svc.db,
            direction="in",
            line="sip",
            caller_raw=remote_uri,
            caller=caller,
            caller_kind=kind,
            dialled=user_part(local_uri),
            sip_call_id=sip_call_id,
            flow=svc.flow_name or "",
            at=svc.clock.stamp(),
        )
        store_calls.add_step(
            svc.db,
            call_id,
            "rejected",
            None,
            {"code": 486, "reason": "call limit", "limit": svc.stack.max_calls},
            at=svc.clock.stamp(),
        )
        store_calls.update_call(svc.db, call_id, ended_at=svc.clock.stamp(), ended_by="box", outcome="rejected")

    async def stop(self) -> None:
        """Sessions end once their calls are gone; none may outlive the SIP library."""
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
