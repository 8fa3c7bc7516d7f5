"""A bare SipStack (no screen in front of it) whose incoming-call handler refuses in one chosen
way, run as its own process by test_sip_refusals.py: ``python -m tests.refusing_stack MODE``.

Modes: ``none`` (no handler: 480), ``raise`` (the handler raises: 500), ``limit`` (one call leg;
the first caller is held ringing, the next is over the limit: 486), ``framing`` (the screen's
rules applied behind pjsua: 400). Prints ``ready PORT`` and runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

from appliance.sip.stack import SipStack

from .sipkit import free_port


async def main(mode: str) -> int:
    def hold(leg, account):
        leg.answer(180)

    def fail(leg, account):
        raise RuntimeError("handler failed on purpose")

    handler = {"none": None, "raise": fail, "limit": hold, "framing": hold}[mode]
    stack = SipStack(
        address="127.0.0.1",
        port=free_port(),
        transports=("udp",),
        on_incoming=handler,
        max_calls=1 if mode == "limit" else 0,
        screen=False,
    )
    await stack.start()
    print(f"ready {stack.port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
