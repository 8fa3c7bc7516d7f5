"""The telephone network between the box's two lines: a SIP provider and a mobile network in
one process, for the self-test call's tests and for ``make demo``.

The box's trunk registers here and places its calls here; the box's GSM modem is an emulated
one (appliance/testing/modem/) whose radio side this process owns. A call from one of the
box's lines to the clinic's number on the other crosses the network as it would in the field:

- the trunk dials the SIM's number: the modem RINGs with the trunk's number as caller ID;
  once the box answers on the modem, the SIP call is answered and the audio is bridged
  (RTP <-> the modem's PCM voice port); keys sent as RFC 4733 reach the modem as in-band tones;
- the modem dials the trunk's number: an INVITE goes to the contact the trunk registered, from
  the SIM's number; AT+VTS keys become RFC 4733 events.

Any other number is a patient's phone: it rings for a moment, answers, and presses
``--callee-presses`` (the demo's patient accepting a callback). ``divert`` makes the network
answer calls to the clinic with its own announcement ("the subscriber is unavailable"), which
is what a self-test must catch.

Run as ``python -m appliance.testing.carrier --box 127.0.0.1:5060 ...``: JSON lines on stdout
(``ready`` with the modem's devices and the ports, then ``call``, ``answered``, ``ended``,
``keys``, ``registered``), commands on stdin (``{"cmd": "divert", "on": true}``, ``quit``).
With ``--radio-socket`` it also serves ``centralka demo-gsm`` (appliance/testing/mobile_network.py).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
import sys
import tempfile
from pathlib import Path

from ..media.prompts import PromptLibrary, read_wav, wav_duration
from ..sip.gsmleg import FRAME_BYTES, SILENCE, GsmLeg
from ..sip.screen import FloodGate
from ..sip.stack import SipStack
from .modem import ModemEmulator
from .stdio import commands, emit

log = logging.getLogger("centralka.carrier")

RING_EVERY_S = 3.0
RING_FOR_S = 60.0
MAX_BACKLOG = 8 * FRAME_BYTES  # the box's audio waiting for the SIP side: beyond, the oldest goes
ANNOUNCEMENT = "Abonent czasowo niedostępny. Prosimy zadzwonić później."
PATIENT = "Halo, słucham?"


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def same_number(a: str, b: str) -> bool:
    """+48221234567, 0048221234567 and 221234567 are one number to the network."""
    first, second = _digits(a), _digits(b)
    if not first or not second:
        return False
    n = min(len(first), len(second), 9)
    return first[-n:] == second[-n:]


class _Registrar(asyncio.DatagramProtocol):
    """The provider's registrar: every REGISTER gets 200 (a trunk trusted by its address)."""

    def __init__(self, carrier: "Carrier"):
        self.carrier = carrier
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        lines = data.decode("utf-8", "replace").split("\r\n")
        if not lines or not lines[0].startswith("REGISTER "):
            return
        keep, contact, expires = [], "", None
        names = {"v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact"}
        for line in lines[1:]:
            if not line:
                break
            name, _, value = line.partition(":")
            name = names.get(name.strip().lower(), name.strip())
            value = value.strip()
            if name.lower() in ("via", "from", "call-id", "cseq"):
                keep.append(f"{name}: {value}")
            elif name.lower() == "to":
                keep.append(f"To: {value}" + ("" if ";tag=" in value else ";tag=reg"))
            elif name.lower() == "contact":
                contact = value
            elif name.lower() == "expires" and value.isdigit():
                expires = int(value)
        if expires is None:
            expires = 300
        reply = "SIP/2.0 200 OK\r\n" + "".join(k + "\r\n" for k in keep)
        if contact:
            reply += f"Contact: {contact.split(';expires')[0]};expires={expires}\r\n"
        reply += f"Expires: {expires}\r\nContent-Length: 0\r\n\r\n"
        self.transport.sendto(reply.encode(), addr)
        self.carrier.registered(contact, expires)


class _RadioVoice:
    """The modem's voice port seen from the network (a ``VoiceStream`` for the bridge): what the
    box wrote to the modem goes to the SIP side, what the SIP side says goes to the modem."""

    def __init__(self, emulator: ModemEmulator):
        self.emulator = emulator
        self.pos = 0
        self.buf = bytearray()

    def start(self) -> None:
        _, self.pos = self.emulator.take_voice(1 << 62)

    def stop(self, wait: bool = True) -> None:
        pass

    def read_frame(self) -> bytes:  # the conference clock thread: nothing here waits long
        data, self.pos = self.emulator.take_voice(self.pos)
        self.buf += data
        if len(self.buf) > MAX_BACKLOG:
            del self.buf[: len(self.buf) - 2 * FRAME_BYTES]
        if len(self.buf) < FRAME_BYTES:
            return SILENCE
        frame = bytes(self.buf[:FRAME_BYTES])
        del self.buf[:FRAME_BYTES]
        return frame

    def write_frame(self, frame: bytes) -> None:
        if self.emulator.caller_backlog() < 4 * FRAME_BYTES:
            self.emulator.caller_says(frame)


class _RadioControl:
    """Call control of the radio leg: the network's side of the modem's call."""

    def __init__(self, emulator: ModemEmulator, call_id: int):
        self.emulator, self.call_id = emulator, call_id

    @staticmethod
    def _done() -> concurrent.futures.Future:
        f: concurrent.futures.Future = concurrent.futures.Future()
        f.set_result(None)
        return f

    def answer(self):
        return self._done()

    def hangup(self):
        self.emulator.hangup_remote(self.call_id)
        return self._done()

    def send_dtmf(self, digits: str):
        self.emulator.caller_presses(digits)
        return self._done()


class Carrier:
    def __init__(self, emulator: ModemEmulator, args, emit):
        self.emulator = emulator
        self.args = args
        self.emit = emit
        self.stack: SipStack | None = None
        self.divert = False
        self.contact = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task] = set()
        # modem call id -> what the network does with it
        self.answered_by_box: dict[int, asyncio.Event] = {}
        self.ended_by_box: dict[int, asyncio.Event] = {}
        self.sip_of: dict[int, object] = {}  # modem call id -> the SIP leg it is bridged to
        cache = Path(args.cache_dir or tempfile.gettempdir()) / "centralka-carrier-prompts"
        self.prompts = PromptLibrary(cache, rate=8000)
        self._registrar = None

    async def start(self):
        self.loop = asyncio.get_running_loop()
        self.emulator.network = self
        self.stack = SipStack(
            address="127.0.0.1",
            port=self.args.sip_port,
            transports=("udp",),
            user=_digits(self.args.gsm_number) and "+" + _digits(self.args.gsm_number),
            on_incoming=self.on_incoming,
            reserve_transfer_leg=False,
            gate=FloodGate(max_requests=1_000_000),
            log_path=self.args.sip_log,
            log_level=4 if self.args.sip_log else 0,
        )
        await self.stack.start()
        self._registrar, _ = await self.loop.create_datagram_endpoint(
            lambda: _Registrar(self), local_addr=("127.0.0.1", self.args.registrar_port)
        )

    async def stop(self):
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._registrar is not None:
            self._registrar.close()
        if self.stack is not None:
            await self.stack.hangup_all()
            await self.stack.stop()
        self.emulator.network = None

    def _spawn(self, coro):
        t = self.loop.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def registered(self, contact: str, expires: int):
        self.contact = contact
        self.emit({"event": "registered", "contact": contact, "expires": expires})

    # --- the modem's hooks (emulator threads: hand over, never wait) ----------------------------
    def dialled(self, call_id: int, number: str) -> bool:
        if not same_number(number, self.args.trunk_number):
            return False  # a patient's phone: the emulator's scripted callee answers
        self.answered_by_box[call_id] = asyncio.Event()
        self.ended_by_box[call_id] = asyncio.Event()
        self.loop.call_soon_threadsafe(self._spawn, self._modem_to_trunk(call_id, number))
        return True

    def answered(self, call_id: int) -> None:
        self.loop.call_soon_threadsafe(self._set, self.answered_by_box, call_id)

    def ended(self, call_id: int) -> None:
        self.loop.call_soon_threadsafe(self._set, self.ended_by_box, call_id)

    def keys(self, digits: str) -> None:
        self.loop.call_soon_threadsafe(self._keys_from_modem, digits)

    @staticmethod
    def _set(events: dict, call_id: int) -> None:
        if call_id in events:
            events[call_id].set()

    def _keys_from_modem(self, digits: str) -> None:
        self.emit({"event": "keys", "from": "gsm", "digits": digits})
        for leg in self.sip_of.values():
            if leg.alive:
                leg.send_dtmf(digits)

    # --- a call from the box's trunk ------------------------------------------------------------
    def on_incoming(self, leg, account):
        number = leg.local_user
        self.emit({"event": "call", "from": "trunk", "to": number, "caller": leg.remote_user})
        if same_number(number, self.args.gsm_number):
            self._spawn(self._trunk_to_modem(leg))
        else:
            self._spawn(self._patient(leg))

    async def _trunk_to_modem(self, leg):
        leg.answer(180)
        if self.divert:
            await self._announce_sip(leg)
            return
        em = self.emulator
        call_id = None
        deadline = self.loop.time() + RING_FOR_S
        while leg.alive and self.loop.time() < deadline:
            if any(c["direction"] == 1 and c["state"] == 0 for c in em.calls):
                break
            if call_id is None and any(c["state"] in (0, 4) for c in em.calls):
                leg.answer(486)  # the SIM has a call already: busy
                return
            call_id = em.ring(self.args.trunk_number)
            self.answered_by_box.setdefault(call_id, asyncio.Event())
            self.ended_by_box.setdefault(call_id, asyncio.Event())
            try:
                await asyncio.wait_for(self.answered_by_box[call_id].wait(), RING_EVERY_S)
                break
            except asyncio.TimeoutError:
                if not any(c["id"] == call_id for c in em.calls):
                    break  # the box rejected it
        if call_id is None or not self.answered_by_box[call_id].is_set() or not leg.alive:
            if call_id is not None:
                em.hangup_remote(call_id)
            if leg.alive:
                leg.answer(480)
            return
        leg.answer(200)
        await self._bridge(leg, call_id)

    async def _bridge(self, leg, call_id: int):
        try:
            await asyncio.wait_for(leg.media_active.wait(), 5)
        except asyncio.TimeoutError:
            leg.hangup()
            self.emulator.hangup_remote(call_id)
            return
        radio = GsmLeg(
            self.stack,
            "out",
            _RadioControl(self.emulator, call_id),
            lambda *_: _RadioVoice(self.emulator),
            remote_number=self.args.gsm_number,
        )
        radio.modem_connected()
        leg.bridge(radio)
        self.sip_of[call_id] = leg
        self.emit({"event": "answered", "modem_call": call_id})
        ended = self.ended_by_box[call_id]
        try:
            while leg.alive and not ended.is_set():
                waits = [
                    asyncio.ensure_future(asyncio.shield(leg.disconnected)),
                    asyncio.ensure_future(ended.wait()),
                    asyncio.ensure_future(leg.digit_event.wait()),
                ]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                leg.digit_event.clear()
                while leg.digits:
                    digit = leg.digits.pop(0)
                    self.emit({"event": "keys", "from": "trunk", "digits": digit})
                    self.emulator.caller_presses(digit)
        finally:
            self.sip_of.pop(call_id, None)
            by = "modem" if ended.is_set() else "trunk"
            radio.modem_ended("hung up")
            if leg.alive:
                leg.hangup()
            if not ended.is_set():
                self.emulator.hangup_remote(call_id)
            self.emit({"event": "ended", "modem_call": call_id, "by": by})

    # --- a call from the box's modem ------------------------------------------------------------
    async def _modem_to_trunk(self, call_id: int, number: str):
        em = self.emulator
        if self.divert:
            em.remote_answers(call_id)
            samples, _ = read_wav(self.prompts.synthesise(ANNOUNCEMENT, "announcement"))
            em.caller_says(samples.astype("<i2").tobytes())
            self.emit({"event": "answered", "modem_call": call_id, "by": "network"})
            while em.caller_still_speaking() and any(c["id"] == call_id for c in em.calls):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            em.hangup_remote(call_id)
            self.emit({"event": "ended", "modem_call": call_id, "by": "network"})
            return
        if not self.contact:
            em.hangup_remote(call_id)  # the clinic's trunk is not registered: nobody to ring
            return
        uri = self.contact.strip("<>").split(">")[0]
        try:
            leg = self.stack.dial(uri)
        except Exception as exc:  # noqa: BLE001 — a test double reports, the modem call ends
            self.emit({"event": "error", "error": str(exc)})
            em.hangup_remote(call_id)
            return
        self.emit({"event": "call", "from": "gsm", "to": number, "uri": uri})
        ended = self.ended_by_box[call_id]
        waits = [asyncio.ensure_future(asyncio.shield(leg.confirmed)), asyncio.ensure_future(ended.wait())]
        rang = asyncio.ensure_future(leg.ringing.wait())
        rang.add_done_callback(lambda _: em.remote_alerting(call_id))
        await asyncio.wait(waits, timeout=RING_FOR_S, return_when=asyncio.FIRST_COMPLETED)
        for w in waits + [rang]:
            w.cancel()
        if not (leg.confirmed.done() and leg.confirmed.result()) or ended.is_set():
            leg.hangup()
            em.hangup_remote(call_id)
            return
        em.remote_answers(call_id)
        await self._bridge(leg, call_id)

    # --- everybody else -------------------------------------------------------------------------
    async def _patient(self, leg):
        leg.answer(180)
        await asyncio.sleep(1.0)
        if not leg.alive:
            return
        if not await _answered(leg):
            return
        leg.play(self.prompts.synthesise(PATIENT, "patient"))
        digits, _, after = (self.args.callee_presses or "").partition("@")
        if digits:
            await asyncio.wait([asyncio.ensure_future(asyncio.shield(leg.disconnected))], timeout=float(after or 3))
            if leg.alive:
                leg.send_dtmf(digits)
        await asyncio.shield(leg.disconnected)

    async def _announce_sip(self, leg):
        if not await _answered(leg):
            return
        path = self.prompts.synthesise(ANNOUNCEMENT, "announcement")
        leg.play(path)
        self.emit({"event": "answered", "by": "network"})
        await asyncio.wait([asyncio.ensure_future(asyncio.shield(leg.disconnected))], timeout=wav_duration(path) + 0.5)
        if leg.alive:
            leg.hangup()
        self.emit({"event": "ended", "by": "network"})


async def _answered(leg) -> bool:
    """Answer a call; False (and hung up) when no audio comes within 5 s."""
    leg.answer(200)
    try:
        await asyncio.wait_for(leg.media_active.wait(), 5)
    except asyncio.TimeoutError:
        leg.hangup()
        return False
    return True


async def _run(args) -> int:
    presses = None
    if args.callee_presses:
        digits, _, after = args.callee_presses.partition("@")
        presses = (digits, float(after or 3))
    emulator = ModemEmulator(args.profile, callee_answer_delay=args.callee_answer_delay, callee_presses=presses)
    carrier = Carrier(emulator, args, emit)
    radio = None
    try:
        await carrier.start()
        if args.radio_socket:
            from .mobile_network import RadioServer

            radio = RadioServer(emulator, Path(args.radio_socket))
            await radio.start()
        emit(
            {
                "event": "ready",
                "device": emulator.device,
                "voice_device": emulator.voice_device,
                "sip_port": args.sip_port,
                "registrar_port": args.registrar_port,
            }
        )
        async for cmd in commands():
            if cmd.get("cmd") == "divert":
                carrier.divert = bool(cmd.get("on"))
                emit({"event": "divert", "on": carrier.divert})
            elif cmd.get("cmd") == "sent":
                emit({"event": "sent", "sms": [{"number": s["number"], "text": s["text"]} for s in emulator.sent_sms]})
            elif cmd.get("cmd") == "quit":
                break
            else:
                emit({"event": "error", "error": f"unknown command {cmd.get('cmd')!r}"})
    finally:
        if radio is not None:
            radio.close()
        await carrier.stop()
        emulator.close()
        emit({"event": "stopped"})
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.testing.carrier", description=__doc__.split("\n\n")[0])
    p.add_argument("--sip-port", type=int, required=True, help="where the box's trunk sends its calls")
    p.add_argument("--registrar-port", type=int, required=True, help="where the box's trunk registers")
    p.add_argument("--trunk-number", default="+48221234567", help="the clinic's number on the trunk")
    p.add_argument("--gsm-number", default="+48600100200", help="the SIM's number")
    p.add_argument("--profile", default="huawei", help="the emulated modem (huawei, simcom, quectel)")
    p.add_argument("--callee-answer-delay", type=float, default=3.0)
    p.add_argument("--callee-presses", default="", help="DIGITS@SECONDS a called patient presses")
    p.add_argument("--radio-socket", help="serve `centralka demo-gsm` on this unix socket")
    p.add_argument("--cache-dir")
    p.add_argument("--sip-log")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # driven by its parent (stdin closes: it stops)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
