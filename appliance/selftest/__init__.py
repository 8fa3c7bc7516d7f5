"""Self-tests shared by `centralka hw-test`, the web UI and the scheduler (R25).

Each check says PASS, WARN, FAIL or SKIP with one line of why and one of what to do: a
technician at the box reads them in order (``hw.py``). The checks of live parts (the modem,
the lines, the call limit) ask the running core over its control socket, because the core owns
the modem and the SIP stack; storage, clock and GPIO are looked at from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

RESULTS = ("PASS", "WARN", "FAIL", "SKIP")


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    why: str
    fix: str = ""

    def __post_init__(self):
        if self.result not in RESULTS:
            raise ValueError(f"a check's result is one of {', '.join(RESULTS)}, not {self.result!r}")

    def line(self, width: int = 14) -> str:
        text = f"{self.result:<4}  {self.name:<{width}}  {self.why}"
        return text + (f"\n      {'':<{width}}  → {self.fix}" if self.fix and self.result in ("WARN", "FAIL") else "")


def report(checks: list[Check]) -> dict:
    """The JSON report: ``{"checks": [{"name", "result", "why", "fix"}, ...]}``."""
    return {"checks": [asdict(c) for c in checks]}


def failed(checks: list[Check]) -> bool:
    return any(c.result == "FAIL" for c in checks)
