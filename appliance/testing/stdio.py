"""The JSON-lines talk of the test doubles that run as processes of their own (the simulated
phone, the simulated telephone network): events out on stdout, commands in on stdin."""

from __future__ import annotations

import asyncio
import json
import sys


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def commands(report=emit):
    """Each command read from stdin as a dict, until stdin closes; a line that is not JSON is
    reported as an ``error`` event and skipped."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            cmd = json.loads(line)
        except ValueError:
            report({"event": "error", "error": f"bad command: {line!r}"})
            continue
        if isinstance(cmd, dict):
            yield cmd
        else:
            report({"event": "error", "error": f"not a command object: {line!r}"})
