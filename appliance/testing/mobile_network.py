"""The demo's mobile network: the emulated modem's radio side, driven from the command line.

``make demo`` (without ``$CENTRALKA_MODEM``) plugs an emulated modem (appliance/testing/modem/)
into the box; the box's modem supervisor talks AT to it exactly as to a USB stick. This module
is the other side — a patient's mobile phone and the network — reachable on a unix socket so
``centralka demo-gsm …`` can:

* ``call NUMBER [--press 1 --after 8] [--seconds 20] [--wav FILE]`` ring the clinic's mobile
  number, press keys, and keep what the mobile caller heard as a WAV file;
* ``sms NUMBER TEXT`` deliver an SMS to the box;
* ``sent`` show every SMS that left the box's modem, decoded from its PDUs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from .. import jsonline
from ..errors import CentralkaError
from ..media.prompts import write_wav_atomic

log = logging.getLogger("centralka.demo")

RING_EVERY_S = 4.0  # a GSM network repeats RING every few seconds until answered
RING_FOR_S = 60.0


class RadioServer:
    def __init__(self, emulator, socket_path: Path):
        self.emulator = emulator
        self.path = Path(socket_path)
        self._server = None
        self._ringing: asyncio.Task | None = None
        self._heard_from = 0

    async def start(self):
        self._server = await jsonline.serve(self.path, self.handle, mode=0o600)

    def close(self):
        if self._ringing:
            self._ringing.cancel()
        if self._server:
            self._server.close()
        if self.path.exists():
            self.path.unlink()

    async def handle(self, cmd: str, req: dict) -> dict:
        em = self.emulator
        if cmd == "ring":
            if any(c["state"] in (0, 4) for c in em.calls):
                return {"ok": False, "error": "the modem already has a call"}
            self._heard_from = len(em.voice_received)
            self._ringing = asyncio.get_running_loop().create_task(self._ring(str(req["number"])))
            return {"ok": True}
        if cmd == "state":
            return {"ok": True, "calls": em.calls, "answered": any(c["state"] == 0 for c in em.calls)}
        if cmd == "press":
            em.caller_presses(str(req["digits"]))
            return {"ok": True}
        if cmd == "hangup":
            if self._ringing:
                self._ringing.cancel()
            em.hangup_remote()
            return {"ok": True}
        if cmd == "heard":
            pcm = em.voice_received[self._heard_from :]
            write_wav_atomic(Path(req["path"]), np.frombuffer(pcm, dtype="<i2"), 8000)
            return {"ok": True, "seconds": round(len(pcm) / 16000, 2)}
        if cmd == "sms":
            em.deliver_sms(str(req["number"]), str(req["text"]), parts=int(req.get("parts", 1)))
            return {"ok": True}
        if cmd == "sent":
            keep = ("number", "text", "encoding", "udh", "pdu_hex", "mr", "request_status_report", "sent_at")
            return {"ok": True, "sent": [{k: s.get(k) for k in keep} for s in em.sent_sms]}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def _ring(self, number: str):
        deadline = time.monotonic() + RING_FOR_S
        while time.monotonic() < deadline:
            calls = self.emulator.calls
            if any(c["state"] == 0 for c in calls):
                return  # answered
            if calls and not any(c["state"] == 4 for c in calls):
                return  # rejected or gone
            self.emulator.ring(number)
            await asyncio.sleep(RING_EVERY_S)
        self.emulator.hangup_remote()  # the caller gives up


# --- the command line side --------------------------------------------------------------------------
def ask_radio(sock: Path, cmd: str, **fields) -> dict:
    try:
        reply = jsonline.request(sock, cmd, **fields)
    except OSError as exc:
        raise CentralkaError(
            f"the demo's emulated modem is not running (no answer on {sock}: "
            f"{exc.strerror or exc}); start `make demo` without $CENTRALKA_MODEM"
        ) from exc
    if not reply.get("ok"):
        raise CentralkaError(reply.get("error") or "the emulated network refused")
    return reply


def cmd_demo_gsm(args, radio_path: Path) -> int:
    if args.gsm_cmd == "sms":
        ask_radio(radio_path, "sms", number=args.number, text=args.text, parts=args.parts)
        print(f"SMS from {args.number} delivered to the box's modem")
        return 0
    if args.gsm_cmd == "sent":
        for s in ask_radio(radio_path, "sent")["sent"]:
            udh = s.get("udh") or {}
            part = f" part {udh['seq']}/{udh['parts']} ref {udh['ref']}" if udh.get("parts") else ""
            print(f"{s['sent_at'][:19]} to {s['number']} {s['encoding'].upper()}{part}: {s['text']!r}")
            print(f"    PDU {s['pdu_hex']}")
        return 0
    # call
    ask_radio(radio_path, "ring", number=args.number)
    print(f"{args.number} calls the clinic's mobile number…")
    deadline = time.monotonic() + 30
    while not ask_radio(radio_path, "state")["answered"]:
        if time.monotonic() > deadline:
            ask_radio(radio_path, "hangup")
            print("the box did not answer within 30 s")
            return 1
        time.sleep(0.2)
    print("answered")
    started = time.monotonic()
    pressed = not args.press
    while time.monotonic() - started < args.seconds:
        if not pressed and time.monotonic() - started >= args.after:
            ask_radio(radio_path, "press", digits=args.press)
            print(f"pressed {args.press}")
            pressed = True
        if not ask_radio(radio_path, "state")["calls"]:
            print("the box hung up")
            break
        time.sleep(0.2)
    if args.wav:
        seconds = ask_radio(radio_path, "heard", path=str(Path(args.wav).resolve()))["seconds"]
        print(f"what the mobile caller heard: {args.wav} ({seconds} s)")
    ask_radio(radio_path, "hangup")
    return 0


def add_arguments(sub) -> None:
    gsm = sub.add_parser(
        "demo-gsm",
        help="the demo's simulated mobile network: call or text the box's emulated modem, see the SMS it sent",
    ).add_subparsers(dest="gsm_cmd", required=True)
    s = gsm.add_parser("call", help="ring the clinic's mobile number from a simulated mobile phone")
    s.add_argument("number", help="the caller's number, e.g. 600123456")
    s.add_argument("--press", default="", help="keys to press once answered (in-band DTMF)")
    s.add_argument("--after", type=float, default=8.0, help="seconds after answering to press them")
    s.add_argument("--seconds", type=float, default=20.0, help="how long to stay on the line")
    s.add_argument("--wav", help="keep what the caller heard as this WAV file")
    s = gsm.add_parser("sms", help="the network delivers an SMS to the box")
    s.add_argument("number")
    s.add_argument("text")
    s.add_argument("--parts", type=int, default=1)
    gsm.add_parser("sent", help="every SMS that left the box's modem, decoded from its PDUs")
