"""Real peers for tests: the box as its own process, pjsua2 phones as theirs, on free ports.

Reads like a phone call:

    caller = phones.caller()
    caller.call(box.uri("48221234567"))
    caller.wait("confirmed")
    caller.press("1")
    staff.wait("incoming", user="rejestracja")
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from appliance.cli import main as cli_main
from appliance.clock import parse_stamp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def wait_for(check, timeout: float = 20.0, what: str = "condition"):
    """Poll ``check()`` until it returns something true (which is returned) or fail saying what."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


class Proc:
    """A child process whose stdout carries JSON events; stderr is kept for failure reports."""

    def __init__(self, cmd, *, env=None, cwd=None, log_path=None):
        self.log_path = Path(log_path) if log_path else None
        err = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd or ROOT
        )
        self.events: list[dict] = []
        self._q: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.events.append(ev)
            self._q.put(ev)
        self._q.put(None)

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, event: str, timeout: float = 15, **match) -> dict:
        """The next event named ``event`` whose fields match ``match`` (earlier ones count too)."""
        seen = getattr(self, "_consumed", set())
        self._consumed = seen
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if i in seen:
                    continue
                if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                    seen.add(i)
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {event!r} {match or ''} within {timeout} s; events: {self.events}" + self._stderr_tail()
                )
            try:
                if self._q.get(timeout=min(left, 0.2)) is None and self.proc.poll() is not None:
                    if not any(e.get("event") == event for e in self.events):
                        raise AssertionError(
                            f"process ended before {event!r}; events: {self.events}" + self._stderr_tail()
                        )
            except queue.Empty:
                pass

    def forget_past(self) -> None:
        """From now on ``wait`` only sees new events (what rang before is not an answer)."""
        self._consumed = getattr(self, "_consumed", set()) | set(range(len(self.events)))

    def has(self, event: str, **match) -> bool:
        return any(ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()) for ev in self.events)

    def _stderr_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "\n--- stderr ---\n" + self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self, timeout: float = 10):
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
            except (BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Phone(Proc):
    """A pjsua2 phone in its own process (see appliance/testing/phone.py)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        answer_after: float = 0.5,
        say: dict | None = None,
        user: str | None = None,
        extra: list[str] | None = None,
    ):
        self.name = name
        self.port = free_port()
        self.record_dir = workdir / f"rec-{name}"
        cmd = [
            sys.executable,
            "-m",
            "appliance.testing.phone",
            "--port",
            str(self.port),
            "--user",
            user or name,
            "--answer-after",
            str(answer_after),
            "--record-dir",
            str(self.record_dir),
            "--cache-dir",
            str(workdir / "phone-cache"),
        ]
        for u, text in (say or {}).items():
            cmd += ["--say", f"{u}={text}"]
        cmd += extra or []
        super().__init__(cmd, log_path=workdir / f"{name}.stderr")
        self.wait("ready", timeout=30)

    def address(self, user: str) -> str:
        return f"sip:{user}@127.0.0.1:{self.port}"

    def call(self, uri: str):
        self.send(cmd="call", uri=uri)

    def press(self, digits: str, method: str = "rfc4733"):
        self.send(cmd="dtmf", digits=digits, method=method)

    def hangup(self):
        self.send(cmd="hangup")

    def speak(self, text: str):
        """Say ``text`` into the call (synthesised by the phone); waits until it has been said."""
        self.send(cmd="speak", text=text)
        return self.wait("spoke", timeout=30)

    def recording(self, n: int = 1) -> Path:
        return self.record_dir / f"call-{n}.wav"


class Box:
    """``centralka run`` as its own process, with a flow imported through the command line."""

    def __init__(
        self,
        workdir: Path,
        flow_text: str,
        *,
        env: dict | None = None,
        settings: str = "",
        raise_at: str | None = None,
        hang_at: tuple | None = None,
        clock_at: str | None = None,
        fault_args: tuple = (),
    ):
        self.dir = workdir
        self.port = free_port()
        self.config = workdir / "centralka.toml"
        self.config.write_text(
            f'[box]\ndata_dir = "{workdir / "data"}"\n\n'
            f'[sip]\naddress = "127.0.0.1"\nport = {self.port}\n{settings}\n\n'
            f'[control]\nsocket = "{workdir / "core.sock"}"\n',
            encoding="utf-8",
        )
        flow_file = workdir / "flow.toml"
        flow_file.write_text(flow_text, encoding="utf-8")
        rc = cli_main(["--config", str(self.config), "flow", "import", str(flow_file)])
        assert rc == 0, "flow import failed"
        self.env = dict(os.environ)
        self.env.pop("CENTRALKA_CONFIG", None)
        self.env.update(env or {})
        self.raise_at = raise_at
        self.hang_at = [str(x) for x in hang_at] if hang_at else None
        self.fault_args = list(fault_args)  # any other fault plan of appliance.testing.faults
        # The box's wall clock runs this many seconds ahead of ours (0 without ``clock_at``).
        self.clock_shift = parse_stamp(clock_at) - time.time() if clock_at else 0.0
        self.stderr_path = workdir / "box.stderr"
        self._launch()

    def restart(self):
        """Start the box again (after ``stop()`` or a kill), on the same data and ports."""
        self._launch()

    def _launch(self):
        # A fault plan runs the same core through the testing wing (appliance.testing.faults).
        plan = (
            (["--raise-at", self.raise_at] if self.raise_at else [])
            + (["--hang-at", *self.hang_at] if self.hang_at else [])
            + self.fault_args
        ) + (["--clock-shift", repr(self.clock_shift)] if self.clock_shift else [])
        runner = ["appliance.testing.faults", *plan] if plan else ["appliance.cli"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *runner, "--config", str(self.config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderr_path, "ab"),
            env=self.env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.status()
                break
            except Exception:  # noqa: BLE001
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("box did not start:\n" + self.log())
                time.sleep(0.1)

    def uri(self, number: str = "48221234567") -> str:
        return f"sip:{number}@127.0.0.1:{self.port}"

    def ask(self, cmd: str, **fields) -> dict:
        from appliance.cli import ask_core
        from appliance.config import load_settings

        return ask_core(load_settings(self.config, env={}), cmd, **fields)

    def status(self) -> dict:
        return self.ask("status")["status"]

    def db(self):
        from appliance.store.db import open_db

        return open_db(self.dir / "data" / "centralka.db")

    def calls(self) -> list[dict]:
        return list(self.db()["calls"].rows_where(order_by="id"))

    def journey(self, call_id: int) -> list[dict]:
        from appliance.store.calls import journey

        return journey(self.db(), call_id)

    def now(self) -> float:
        """The box's wall-clock time (its clock may be set to another day: ``clock_at``)."""
        return time.time() + self.clock_shift

    def _of(self, calls: list[dict], direction: str | None) -> list[dict]:
        """Calls of ``direction`` ("in", "out"; None: every call). A box that calls patients back
        by itself starts outbound calls of its own between a test's inbound ones."""
        return [c for c in calls if direction is None or c["direction"] == direction]

    def wait_step(
        self, step: str, timeout: float = 20, count: int = 1, *, direction: str | None = None, **detail
    ) -> dict:
        """The newest call's ``count``-th journey step ``step`` whose detail has ``detail`` (e.g.
        ``wait_step("play", prompt="menu")``: the box has started playing the menu); with
        ``direction``, the newest call of that direction."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self._of(self.calls(), direction)
            seen = 0
            for row in self.journey(calls[-1]["id"]) if calls else []:
                got = json.loads(row["detail"]) if row["detail"] else {}
                if row["step"] == step and all(got.get(k) == v for k, v in detail.items()):
                    seen += 1
                    if seen == count:
                        return row
            time.sleep(0.05)
        raise AssertionError(f"no step {step!r} {detail} within {timeout} s\n" + self.log())

    def wait_call_ended(self, call_id: int | None = None, timeout: float = 15, *, direction: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self._of(self.calls(), direction)
            if calls:
                call = calls[-1] if call_id is None else next((c for c in calls if c["id"] == call_id), None)
                if call and call["ended_at"]:
                    return call
            time.sleep(0.1)
        raise AssertionError(f"call did not end within {timeout} s: {self.calls()}\n" + self.log())

    def prompt_file(self, name: str) -> Path:
        from appliance.config import load_settings
        from appliance.flow.model import load_flow_file
        from appliance.media.prompts import PromptLibrary

        s = load_settings(self.config, env={})
        flow = load_flow_file(self.dir / "flow.toml")
        return PromptLibrary(s.prompt_dir, rate=s.sip.clock_rate).path(name, flow.prompts)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-5000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
