"""One JSON object per line over a unix socket: how the command line talks to the core (and the
demo's emulated mobile network). Both ends are here so they cannot drift apart."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Awaitable, Callable

Handler = Callable[[str, dict], Awaitable[dict]]


def request(sock: str | Path, cmd: str, /, *, timeout: float = 10, **fields) -> dict:
    """Send ``{"cmd": cmd, ...}`` and return the reply; OSError when nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b"{}")


async def serve(path: str | Path, handler: Handler, *, mode: int = 0o660):
    """Start a unix-socket server answering each line with ``await handler(cmd, request)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()

    async def one(reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                req = json.loads(line or b"{}")
                reply = await handler(req.get("cmd", ""), req)
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(one, path=str(path))
    os.chmod(path, mode)
    return server
