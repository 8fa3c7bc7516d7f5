"""The shared parts of the running box, handed explicitly to whoever needs them.

One :class:`Services` is built by the core at start and passed to call sessions, the queue
manager, the lines, the GSM line and (later) the callback scheduler and the web UI's control
client. Nothing outside ``core.py`` holds the core itself: a part that needs the database, the
SIP stack or the clock finds it here, and a test builds a ``Services`` with exactly the parts
its subject uses.

Parts are filled in as the core starts them (the database first, the SIP stack, then the lines,
queues, GSM line and hold music); a part that could not start stays ``None`` and its users say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .clock import SYSTEM_CLOCK, Clock
from .errors import SipError
from .media.prompts import PromptLibrary, wav_duration

log = logging.getLogger("centralka.services")


class Prompts:
    """The prompt library plus the core's caches: a flow's prompt as a file, a file's length."""

    def __init__(self, library: PromptLibrary):
        self.library = library
        self._durations: dict[str, float] = {}
        self._paths: dict[tuple[str, int], Path] = {}

    def path(self, name: str, flow) -> Path:
        key = (name, id(flow))
        path = self._paths.get(key)
        if path is None or not path.exists():
            path = self.library.path(name, flow.prompts)
            self._paths[key] = path
        return path

    def duration(self, path: Path) -> float:
        d = self._durations.get(str(path))
        if d is None:
            d = self._durations[str(path)] = wav_duration(path)
        return d

    def synthesise(self, text: str, name: str) -> Path:
        return self.library.synthesise(text, name)

    def forget(self) -> None:
        """A new flow was loaded: its prompts may differ under the same names."""
        self._paths.clear()


class Faults:
    """Where a test makes the box fail on purpose (``appliance.testing.faults``). The running box
    has none: ``Services.faults`` is ``None`` and nothing is ever raised from here."""

    def at_node(self, node_id: str, services: "Services") -> None:  # pragma: no cover - test doubles
        """Called as a call enters a flow node; may raise to prove the operator fallback, or
        take a pool of the SIP stack to its end."""


@dataclass
class Services:
    settings: Any
    db: Any = None
    clock: Clock = SYSTEM_CLOCK
    prompts: Prompts | None = None
    stack: Any = None  # appliance.sip.stack.SipStack
    registrar_host: str | None = None  # the desk phones' Kamailio, "127.0.0.1:5070"
    lines: Any = None  # appliance.lines.Lines
    queues: Any = None  # appliance.flow.queue.QueueManager
    hold_music: Any = None  # the stack's shared player
    gsm: Any = None  # appliance.gsm.line.GsmLine
    flow: Any = None  # the active call flow (appliance.flow.model.Flow)
    flow_name: str | None = None
    # Where a new inbound leg goes (the core's call desk): ``incoming(leg, line)``.
    incoming: Callable[[Any, str], None] | None = None
    faults: Faults | None = None
    callbacks: Any = None  # appliance.flow.callbacks.CallbackBook
    selftest: Any = None  # appliance.selftest.call.SelfTestCalls

    def resolve_target(self, target: str) -> str:
        """A flow target as a dialable SIP URI: ``ext:201`` is the desk phone registered as 201."""
        if target.startswith("ext:"):
            if self.registrar_host is None:
                raise SipError(f"{target}: desk phones need the registrar ([kamailio] enabled = true)")
            return f"sip:{target[4:]}@{self.registrar_host}"
        return target

    def wake_sms(self) -> None:
        """A freshly queued SMS should leave now rather than at the modem's next look."""
        if self.gsm is not None:
            self.gsm.wake()
