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
from ..store import selftest as store_selftest
from .engine import CallSession

log = logging.getLogger("centralka.core")


class CallDesk:
    def __init__(self, services):
        self.services = services
        self.sessions: dict[int, CallSession] = {}
        self.tasks: set[asyncio.Task] = set()

    def incoming(self, leg, account_name: str) -> None:
        line = account_name if account_name in ("trunk", "gsm") else "sip"
        call_id, caller, kind = self._record(line, leg.remote_uri, leg.remote_user, leg.local_user, leg.sip_call_id)
        # The box's own self-test call, from its other line's number while it is dialling it.
        probe = self.services.selftest.recognise(line, caller, call_id) if self.services.selftest else None
        if probe is not None:
            store_selftest.mark_call(self.services.db, call_id, "selftest")
        session = CallSession(self.services, leg, self.services.flow, call_id, selftest=probe)
        self.sessions[call_id] = session
        log.info("call %d from %s (%s) to %s%s", call_id, caller, kind, leg.local_user, " (self-test)" if probe else "")
        task = asyncio.get_running_loop().create_task(session.run(), name=f"call-{call_id}")
        self.tasks.add(task)
        task.add_done_callback(lambda t, cid=call_id: self._done(t, cid))

    def _done(self, task, call_id: int) -> None:
        self.tasks.discard(task)
        self.sessions.pop(call_id, None)

    def refused_at_limit(self, remote_uri: str, local_uri: str, sip_call_id: str) -> None:
        """A caller turned away at the call limit is a missed call: store it like any other."""
        svc = self.services
        call_id, _, _ = self._record("sip", remote_uri, user_part(remote_uri), user_part(local_uri), sip_call_id)
        detail = {"code": 486, "reason": "call limit", "limit": svc.stack.max_calls}
        store_calls.add_step(svc.db, call_id, "rejected", None, detail, at=svc.clock.stamp())
        store_calls.update_call(svc.db, call_id, ended_at=svc.clock.stamp(), ended_by="box", outcome="rejected")
        if svc.callbacks is not None:
            svc.callbacks.missed_call(store_calls.get_call(svc.db, call_id), gave_up="busy", node=None, topic=None)

    def _record(self, line: str, caller_raw: str, caller_user: str, dialled: str, sip_call_id: str):
        """Store an inbound call; returns its id and the caller as normalised (E.164, kind)."""
        svc = self.services
        caller, kind = normalise_caller(caller_user, svc.settings.box.country)
        call_id = store_calls.start_call(
            svc.db,
            direction="in",
            line=line,
            caller_raw=caller_raw,
            caller=caller,
            caller_kind=kind,
            dialled=dialled,
            sip_call_id=sip_call_id,
            flow=svc.flow_name or "",
            at=svc.clock.stamp(),
        )
        return call_id, caller, kind

    async def stop(self) -> None:
        """Sessions end once their calls are gone; none may outlive the SIP library."""
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
