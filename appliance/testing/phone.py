"""A small SIP phone on pjsua2: the demo's simulated staff phones, the tests' callers and agents,
and ``centralka phone`` for a person at a terminal.

It is a separate process (pjsua2 allows one endpoint per process). In ``--json`` mode it reads
commands as JSON lines on stdin and reports events as JSON lines on stdout:

    {"cmd": "call", "uri": "sip:123@127.0.0.1:5060"}     {"event": "confirmed", ...}
    {"cmd": "dtmf", "digits": "555", "method": "rfc4733"|"info"}
    {"cmd": "hangup"}   {"cmd": "quit"}   {"cmd": "speak", "text": "…"}  {"event": "spoke"}

Events beside those: ``incoming``, ``calling``, ``dtmf``, ``disconnected``, ``registration`` and,
once an answered call's ``--say`` phrase has been played through once, ``said``.

As a called phone it answers after ``--answer-after`` seconds (negative: never) and plays
what ``--say USER=TEXT`` gives for the dialled user, so a caller can tell which phone answered.
Every call can be recorded (what this phone hears) into ``--record-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path

import pjsua2 as pj

from ..media.prompts import PromptLibrary, wav_duration
from ..sip.screen import FloodGate
from ..sip.stack import PARK_S, SipStack
from .stdio import commands, emit

log = logging.getLogger("centralka.phone")


class Phone:
    def __init__(self, args, emit):
        self.args = args
        self.emit = emit
        self.stack: SipStack | None = None
        self.current = None
        self.calls = 0
        self.say = dict(s.split("=", 1) for s in (args.say or []))
        self.record_dir = Path(args.record_dir) if args.record_dir else None
        cache = Path(args.cache_dir or tempfile.gettempdir()) / "centralka-phone-prompts"
        self.prompts = PromptLibrary(cache, rate=8000, voice=args.voice)
        self.tasks = set()

    async def start(self):
        self.stack = SipStack(
            address=self.args.address,
            port=self.args.port,
            transports=("udp",),
            user=self.args.user,
            rtp_port=self.args.rtp_port,
            on_incoming=self.on_incoming,
            on_trunk_state=self.on_registration,
            log_path=self.args.sip_log,
            log_level=4 if self.args.sip_log else 0,
            # A test and demo tool: the box may ring it as often as it likes.
            gate=FloodGate(max_requests=1_000_000),
        )
        await self.stack.start()
        if getattr(self.args, "register", None):
            # A desk phone: registers at the box's registrar (Kamailio) with its credentials.
            self.stack.add_trunk(
                registrar=f"sip:{self.args.register}",
                username=self.args.user,
                password=self.args.password or "",
                expires=self.args.expires,
                retry_min=1,
                retry_max=5,
            )
        self.emit(
            {"event": "ready", "address": self.args.address, "port": self.args.port, "call_limit": self.stack.max_calls}
        )

    def on_registration(self, state):
        self.emit({"event": "registration", "state": state.state, "code": state.code, "reason": state.reason})

    def _spawn(self, coro):
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    # --- as a called phone ---------------------------------------------------------------------
    def on_incoming(self, leg, account):
        self.calls += 1
        n = self.calls
        self.emit(
            {
                "event": "incoming",
                "n": n,
                "from": leg.remote_uri,
                "to": leg.local_uri,
                "user": leg.local_user,
                "call_id": leg.sip_call_id,
            }
        )
        leg.answer(180)
        self._spawn(self._answer_later(leg, n))

    async def _answer_later(self, leg, n):
        if self.args.answer_after < 0:
            await leg.disconnected
            self._report_end(leg, n)
            return
        try:
            await asyncio.wait_for(asyncio.shield(leg.disconnected), self.args.answer_after)
            self._report_end(leg, n)
            return
        except asyncio.TimeoutError:
            pass
        leg.answer(200)
        await self._in_call(leg, n)

    # --- as a caller ---------------------------------------------------------------------------
    async def call(self, uri: str):
        self.calls += 1
        n = self.calls
        try:
            leg = self.stack.dial(uri)
        except Exception as exc:  # noqa: BLE001
            self.emit({"event": "error", "error": str(exc)})
            return
        self.emit({"event": "calling", "n": n, "uri": uri, "call_id": leg.sip_call_id})
        await self._in_call(leg, n)

    async def _in_call(self, leg, n):
        self.current = leg
        ok = await leg.confirmed
        if not ok:
            self._report_end(leg, n)
            return
        try:
            await asyncio.wait_for(leg.media_active.wait(), 3)
        except asyncio.TimeoutError:
            pass
        rec_path = None
        if self.record_dir and leg.audio is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            rec_path = self.record_dir / f"call-{n}.wav"
            leg.record(rec_path)
        text = self.say.get(leg.local_user) or self.say.get("*")
        if text and leg.audio is not None and leg.direction == "in":
            phrase = self.prompts.synthesise(text, "say")
            leg.play(phrase, loop=True)
            # Tests wait for this instead of guessing how long the phrase takes to be heard.
            asyncio.get_running_loop().call_later(
                wav_duration(phrase), lambda: leg.alive and self.emit({"event": "said", "n": n, "user": leg.local_user})
            )
        press = getattr(self.args, "press_on_answer", None)
        if press and leg.direction == "in":
            # A receptionist who takes every callback the box offers (the demo's desk phones).
            digits, _, after = press.partition("@")
            asyncio.get_running_loop().call_later(
                float(after or 2), lambda: leg.alive and leg.send_dtmf(digits) and None
            )
        self.emit(
            {
                "event": "confirmed",
                "n": n,
                "remote": leg.remote_uri,
                "user": leg.local_user,
                "recording": str(rec_path) if rec_path else None,
            }
        )
        await self._pump_digits(leg)
        if rec_path:
            # The WAV header is written when the parked recorder is freed: report the end after.
            await asyncio.sleep(PARK_S + 0.3)
        self._report_end(leg, n)

    async def _pump_digits(self, leg):
        while leg.alive:
            await leg.digit_event.wait()
            leg.digit_event.clear()
            while leg.digits:
                self.emit({"event": "dtmf", "digit": leg.digits.pop(0)})

    def _report_end(self, leg, n):
        d = leg.disconnected.result() if leg.disconnected.done() else None
        if self.current is leg:
            self.current = None
        self.emit(
            {
                "event": "disconnected",
                "n": n,
                "code": d.code if d else 0,
                "reason": d.reason if d else "",
                "by": d.by if d else "",
            }
        )

    # --- commands ------------------------------------------------------------------------------
    def dtmf(self, digits: str, method: str = "rfc4733"):
        leg = self.current
        if leg is None or not leg.alive:
            self.emit({"event": "error", "error": "no call"})
            return
        if method == "info":
            prm = pj.CallSendDtmfParam()
            prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
            prm.digits = digits
            leg.pj.sendDtmf(prm)
        else:
            leg.send_dtmf(digits)
        self.emit({"event": "sent_dtmf", "digits": digits, "method": method})

    def hangup(self):
        if self.current is not None:
            self.current.hangup()

    def speak(self, text: str):
        """Say ``text`` once into the current call (a caller leaving a message); ``spoke`` after."""
        leg = self.current
        if leg is None or not leg.alive or leg.audio is None:
            self.emit({"event": "error", "error": "no call to speak into"})
            return
        phrase = self.prompts.synthesise(text, "speak")
        player = leg.play(phrase)
        seconds = wav_duration(phrase)

        def done():
            if leg.alive:
                leg.stop(player)
            self.emit({"event": "spoke", "seconds": round(seconds, 2)})

        asyncio.get_running_loop().call_later(seconds + 0.1, done)


async def _json_mode(args):
    phone = Phone(args, emit)
    await phone.start()
    try:
        async for cmd in commands():
            c = cmd.get("cmd")
            if c == "call":
                phone._spawn(phone.call(cmd["uri"]))
            elif c == "dtmf":
                phone.dtmf(cmd["digits"], cmd.get("method", "rfc4733"))
            elif c == "hangup":
                phone.hangup()
            elif c == "speak":
                phone.speak(cmd["text"])
            elif c == "quit":
                break
            else:
                emit({"event": "error", "error": f"unknown command {c!r}"})
    finally:
        await phone.stack.stop()
        emit({"event": "stopped"})


async def _terminal_mode(args):
    """``centralka phone URI``: call, type digits and Enter to send them, 'h' to hang up."""

    def emit(obj):
        ev = obj.get("event")
        if ev == "calling":
            print(f"Dzwonię do {obj['uri']} … (cyfry + Enter = DTMF, h = rozłącz)")
        elif ev == "confirmed":
            print("Połączono." + (f" Nagrywam do {obj['recording']}" if obj.get("recording") else ""))
        elif ev == "disconnected":
            print(
                f"Rozłączono ({obj['code']} {obj['reason']}, rozłączył: "
                f"{'ja' if obj['by'] == 'local' else 'druga strona'})."
            )
        elif ev == "error":
            print(f"Błąd: {obj['error']}", file=sys.stderr)

    phone = Phone(args, emit)
    await phone.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    call = loop.create_task(phone.call(args.uri))
    try:
        while not call.done():
            line_task = loop.create_task(reader.readline())
            done, _ = await asyncio.wait({line_task, call}, return_when=asyncio.FIRST_COMPLETED)
            if line_task not in done:
                line_task.cancel()
                break
            line = line_task.result().decode().strip()
            if not line_task.result() or line.lower() in ("h", "q"):
                phone.hangup()
                await asyncio.wait_for(call, 5)
                break
            digits = "".join(ch for ch in line if ch in "0123456789*#")
            if digits:
                phone.dtmf(digits)
    finally:
        await phone.stack.stop()
    if args.record and phone.record_dir:
        recs = sorted(phone.record_dir.glob("call-*.wav"))
        if recs:
            recs[-1].replace(args.record)
            print(f"Nagranie: {args.record}")
    return 0


def add_arguments(p: argparse.ArgumentParser, *, terminal: bool):
    if terminal:
        p.add_argument("uri", help="whom to call, e.g. sip:48221234567@127.0.0.1:5060")
        p.add_argument("--record", help="save what you heard to this WAV file")
        p.add_argument("--port", type=int, default=0, help="local SIP port (default: any free)")
    else:
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--answer-after", type=float, default=1.0)
        p.add_argument("--say", action="append", help="USER=TEXT spoken when a call to USER is answered")
        p.add_argument("--record-dir")
        p.add_argument("--register", metavar="HOST:PORT", help="register as --user at this registrar")
        p.add_argument("--password", help="password for --register")
        p.add_argument("--expires", type=int, default=60)
        p.add_argument(
            "--press-on-answer", metavar="DIGITS@SECONDS", help="press keys this long after answering (e.g. 1@3)"
        )
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--user", default="phone", help="user part of this phone's address")
    p.add_argument("--rtp-port", type=int, default=0)
    p.add_argument("--voice", default="pl")
    p.add_argument("--cache-dir")
    p.add_argument("--sip-log")


def main_json(argv=None) -> int:
    p = argparse.ArgumentParser(prog="centralka-phone-agent")
    add_arguments(p, terminal=False)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Driven by its parent: Ctrl-C in the parent's terminal must not kill it mid-call; it stops
    # on {"cmd": "quit"} or when its stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_json_mode(args))
    return 0


def run_terminal(args) -> int:
    logging.getLogger("centralka").setLevel(logging.WARNING)  # the person wants the call, not logs
    if args.port == 0:
        args.port = _free_udp_port(args.address)
    args.answer_after = -1
    args.say = []
    args.record_dir = tempfile.mkdtemp(prefix="centralka-phone-") if args.record else None
    return asyncio.run(_terminal_mode(args))


def _free_udp_port(address: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main_json())
