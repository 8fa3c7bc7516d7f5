"""The pjsua2 endpoint, its accounts and call legs — the only module that imports pjsua2.

Threading (ARCHITECTURE.md): pjsua2 runs with no worker threads and ``mainThreadOnly``; an
asyncio task polls ``libHandleEvents`` so every SIP callback runs on the asyncio thread and may
resolve futures directly. Nothing here runs Python on the media clock thread.

Lifetime rules this module enforces so the code above it cannot break them:
- every pj object (call, player, tone, recorder) is referenced by Python until pjsua is done
  with it, then *parked* for a while before it is freed (the bridge removes ports
  asynchronously; freeing early crashes);
- everything is released before ``libDestroy`` (a pj object alive after it aborts the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pjsua2 as pj

from ..errors import CallLimitReached, SipError
from ..numbers import user_part
from ..text import wire_text
from .guard import Guard
from . import limits
from .screen import FloodGate, check_request, parse_request

log = logging.getLogger("centralka.sip")

PARK_S = 1.5
POLL_S = 0.01
EAGER_TURNS = 3  # turns without waiting in pjsip after one that handled events (see _poll)
SWEEP_S = 1.0
STALE_S = 2.0  # a leg younger than this may still be setting up inside pjsua
HANGUP_GIVE_UP_S = 70.0  # 64 x T1 for a missing ACK, then some: pjsip has given up by then
# European ringback (and Polish): 425 Hz, 1 s on, 4 s off.
RINGBACK = (425, 1000, 4000)
DTMF_KEYS = set("0123456789*#ABCD")
URI_TOO_LONG = "-error: uri too long-"
# class pj::Call: vtable pointer, Account &acc, pjsua_call_id id (pjsua2/call.hpp).
_CALL_ID_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p)


@contextlib.contextmanager
def _stdout_silenced():
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def build_call_limit() -> int:
    """The call legs pjsua holds: ``maxCalls`` (the legs the build's sockets carry) clamped at
    libInit to PJSUA_MAX_CALLS, the build's own limit.

    The value is read back through the library's C API, which the SWIG layer does not expose.
    Must be called after ``libInit``.
    """
    lib = limits.pjsua_lib()
    lib.pjsua_call_get_max_count.restype = ctypes.c_uint
    return int(lib.pjsua_call_get_max_count())


@dataclass
class Disconnect:
    code: int
    reason: str
    by: str  # "local" or "remote"


class MediaLeg:
    """What every call leg shares, whatever carries it (a SIP call or the GSM modem's voice
    channel): the state futures the flow engine waits on, received digits, and the audio
    operations on the leg's conference port. Futures resolve on the asyncio thread."""

    line = "sip"

    def __init__(self, stack: "SipStack", direction: str):
        self.stack = stack
        self.direction = direction
        self.loop = stack.loop
        self.confirmed = self.loop.create_future()
        self.disconnected = self.loop.create_future()
        self.media_active = asyncio.Event()
        self.ringing = asyncio.Event()
        self.digits: list[str] = []
        self.digit_event = asyncio.Event()
        self.remote_uri = ""
        self.local_uri = ""
        self.sip_call_id = ""
        self.remote_user = ""
        self.local_user = ""
        self._local_hangup = False
        self._audio = None
        self._players: list = []
        self._links: set = set()  # legs this one is bridged with
        self._sources: set = set()  # shared players (hold music) this leg listens to
        self.owner = None  # whoever handles this leg (a flow session, a phone)
        self.created = time.monotonic()
        self._hung_up_at: float | None = None
        self.source = ""  # "IP:port" the INVITE came from (incoming SIP calls, when known)

    # --- state -----------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return not self.disconnected.done()

    @property
    def audio(self):
        return self._audio

    def _ended(self, code: int, reason: str) -> None:
        """The leg is over (either side): stop its media and resolve its futures."""
        self._stop_all_media()
        self._audio = None
        if not self.confirmed.done():
            self.confirmed.set_result(False)
        if not self.disconnected.done():
            by = "local" if self._local_hangup else "remote"
            self.disconnected.set_result(Disconnect(code, reason, by))
        self.digit_event.set()
        self.stack._leg_ended(self)

    def _set_audio(self, audio) -> None:
        """Give the leg its conference port (again, after a re-INVITE moved the stream)."""
        if self._audio is None or audio.getPortId() != self._audio.getPortId():
            old = self._audio
            self._audio = audio
            if old is not None:
                self._reconnect_media()
        self.media_active.set()

    # --- audio -----------------------------------------------------------------------------
    def play(self, path: str | Path, loop: bool = False):
        """Start a file playing to this leg; returns a handle for ``stop``."""
        if self._audio is None:
            raise SipError("no audio on this call yet")
        player = pj.AudioMediaPlayer()
        try:
            player.createPlayer(str(path), 0 if loop else pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(self._audio)
        except pj.Error as exc:
            self.stack.park(player)
            raise SipError(f"cannot play {path}: {exc.info()}") from exc
        self._players.append(player)
        return player

    def ringback(self):
        if self._audio is None:
            raise SipError("no audio on this call yet")
        tone = pj.ToneGenerator()
        try:
            tone.createToneGenerator(self.stack.clock_rate, 1)
            desc = pj.ToneDesc()
            desc.freq1, desc.on_msec, desc.off_msec = RINGBACK
            desc.freq2 = 0
            vec = pj.ToneDescVector()
            vec.append(desc)
            tone.play(vec, True)
            tone.startTransmit(self._audio)
        except pj.Error as exc:  # e.g. no conference port left: the caller hears no tone, nothing worse
            self.stack.park(tone)
            raise SipError(f"no ringback tone: {exc.info()}") from exc
        self._players.append(tone)
        return tone

    def stop(self, media) -> None:
        """Disconnect a player, tone or recorder from this leg and park it for freeing."""
        if media not in self._players:
            return
        self._players.remove(media)
        try:
            if self._audio is not None:
                if isinstance(media, pj.AudioMediaRecorder):
                    self._audio.stopTransmit(media)
                else:
                    media.stopTransmit(self._audio)
        except pj.Error:
            pass
        self.stack.park(media)

    def record(self, path: str | Path):
        """Record what this leg's remote party sends (what *we* hear)."""
        if self._audio is None:
            raise SipError("no audio on this call yet")
        rec = pj.AudioMediaRecorder()
        rec.createRecorder(str(path))
        self._audio.startTransmit(rec)
        self._players.append(rec)
        return rec

    def listen(self, source) -> bool:
        """Hear a shared source (the one hold-music player all waiting callers share); True when
        this call started it (False: already heard, or no audio to hear it on)."""
        if self._audio is None or source in self._sources:
            return False
        try:
            source.startTransmit(self._audio)
        except pj.Error as exc:
            log.warning("call %s: cannot hear a shared source: %s", self.sip_call_id, exc.info())
            return False
        self._sources.add(source)
        return True

    def unlisten(self, source) -> None:
        if source not in self._sources:
            return
        self._sources.discard(source)
        try:
            if self._audio is not None:
                source.stopTransmit(self._audio)
        except pj.Error:
            pass

    def bridge(self, other: "Leg") -> None:
        """Two-way audio between two legs (caller <-> agent)."""
        if self._audio is None or other._audio is None:
            raise SipError("cannot bridge: a leg has no audio")
        self._audio.startTransmit(other._audio)
        other._audio.startTransmit(self._audio)
        self._links.add(other)
        other._links.add(self)

    def _unbridge_all(self):
        for other in list(self._links):
            for a, b in ((self, other), (other, self)):
                try:
                    if a._audio is not None and b._audio is not None:
                        a._audio.stopTransmit(b._audio)
                except pj.Error:
                    pass
            other._links.discard(self)
        self._links.clear()

    def _stop_all_media(self):
        for p in list(self._players):
            self.stop(p)
        for src in list(self._sources):
            self.unlisten(src)
        self._unbridge_all()

    def _reconnect_media(self):
        for p in self._players:
            try:
                if isinstance(p, pj.AudioMediaRecorder):
                    self._audio.startTransmit(p)
                else:
                    p.startTransmit(self._audio)
            except pj.Error:
                pass
        for src in self._sources:
            try:
                src.startTransmit(self._audio)
            except pj.Error:
                pass
        for other in self._links:
            if other._audio is not None:
                self._audio.startTransmit(other._audio)
                other._audio.startTransmit(self._audio)

    def _on_digit(self, digit: str):
        # SIP INFO carries whatever the sender wrote in Signal=: only real keys are keys.
        digit = wire_text(digit, 4).upper()
        if len(digit) != 1 or digit not in DTMF_KEYS:
            log.warning("ignored DTMF %r on call %s: not a phone key", digit, self.sip_call_id)
            return
        self.digits.append(digit)
        self.digit_event.set()


class Leg(MediaLeg):
    """One SIP call leg (pjsua2 ``Call``)."""

    def __init__(self, stack: "SipStack", direction: str, account: "_Account", call_id: int | None = None):
        super().__init__(stack, direction)
        self.account = account
        self.pj = _Call(self, account, pj.PJSUA_INVALID_ID if call_id is None else call_id)

    def _fill_info(self, invite: bytes = b""):
        try:
            ci = self.pj.getInfo()
        except (pj.Error, AttributeError):
            return
        remote, local = ci.remoteUri, ci.localUri
        if invite and URI_TOO_LONG in remote + local:
            # pjsua prints a From/To longer than its buffer as this marker: read the INVITE's.
            req = parse_request(invite)
            if req is not None:
                remote = req.get("from") if URI_TOO_LONG in remote else remote
                local = req.get("to") if URI_TOO_LONG in local else local
        # Everything here was written by the caller: made safe to log and store first (the
        # user part is taken from the whole text, before it is cut to a storable length).
        remote, local = wire_text(remote, 4096), wire_text(local, 4096)
        self.remote_uri = wire_text(remote)
        self.local_uri = wire_text(local)
        self.sip_call_id = wire_text(ci.callIdString, 120)
        self.remote_user = wire_text(user_part(remote), 64)
        self.local_user = wire_text(user_part(local), 64)

    # --- actions ---------------------------------------------------------------------------
    def answer(self, code: int = 200, reason: str = "") -> None:
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        if reason:
            prm.reason = reason
        try:
            self.pj.answer(prm)
        except pj.Error as exc:
            raise SipError(f"answer {code} failed: {exc.info()}") from exc

    def hangup(self, code: int = 0, reason: str = "") -> None:
        if not self.alive:
            return
        self._local_hangup = True
        if self._hung_up_at is None:
            self._hung_up_at = time.monotonic()
        self._stop_all_media()
        prm = pj.CallOpParam(True)
        if code:
            prm.statusCode = code
        if reason:
            prm.reason = reason
        try:
            self.pj.hangup(prm)
        except pj.Error as exc:
            log.debug("hangup of %s: %s", self.sip_call_id, exc.info())

    def send_dtmf(self, digits: str) -> None:
        try:
            self.pj.dialDtmf(digits)
        except pj.Error as exc:
            raise SipError(f"DTMF {digits!r}: {exc.info()}") from exc

    # --- callbacks from _Call (asyncio thread) ---------------------------------------------
    def _on_state(self):
        try:
            ci = self.pj.getInfo()
        except (pj.Error, AttributeError):
            return
        if not self.sip_call_id:
            self._fill_info()
        state = ci.state
        if state == pj.PJSIP_INV_STATE_EARLY and ci.lastStatusCode in (180, 183):
            self.ringing.set()
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            if not self.confirmed.done():
                self.confirmed.set_result(True)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._ended(ci.lastStatusCode, wire_text(ci.lastReason, 120))

    def _on_media(self):
        try:
            ci = self.pj.getInfo()
        except (pj.Error, AttributeError):
            return
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status in (
                pj.PJSUA_CALL_MEDIA_ACTIVE,
                pj.PJSUA_CALL_MEDIA_REMOTE_HOLD,
            ):
                # A re-INVITE may give the stream a new port: every player/link moves over.
                self._set_audio(self.pj.getAudioMedia(i))
                return


class _Call(pj.Call):
    def __init__(self, leg: Leg, account: "_Account", call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.leg = leg

    def forget_slot(self) -> None:
        """Let go of the pjsua call slot this object was bound to, once its call is over.

        pjsua2's ``Call`` keeps its slot number after DISCONNECTED, and its destructor then
        clears the user data of, and hangs up, whatever call occupies that slot *now*. We keep
        ended calls parked for a while (freeing them at once is unsafe), and pjsua reuses a slot
        at once: measured under a fuzzer, a real caller arriving within that time was dropped
        85 ms into the greeting, and pjsua2 stopped reporting its state. So the slot number in
        the C++ object (``Call::id``, right after the vtable and the account reference) is set
        to PJSUA_INVALID_ID here, after checking it holds the number ``getId()`` reports.
        """
        try:
            slot = self.getId()
        except pj.Error:
            return
        if slot == pj.PJSUA_INVALID_ID:
            return
        field = ctypes.c_int.from_address(int(self.this) + _CALL_ID_OFFSET)
        if field.value != slot:
            log.error(
                "cannot detach an ended call from pjsua slot %d (unexpected pjsua2 layout): a "
                "new call in that slot may be dropped when this one is freed",
                slot,
            )
            return
        field.value = pj.PJSUA_INVALID_ID

    def onCallState(self, prm):
        if self.leg is not None:
            self.leg.stack._guard(self.leg._on_state)

    def onCallMediaState(self, prm):
        if self.leg is not None:
            self.leg.stack._guard(self.leg._on_media)

    def onCallTransferRequest(self, prm):
        # Never follow a REFER (the screen refuses it first): pjsua would dial the Refer-To
        # itself, past the toll-fraud guard.
        prm.statusCode = 603

    def onDtmfDigit(self, prm):
        # Both RFC 4733 events and SIP INFO (application/dtmf-relay) arrive here.
        if self.leg is not None:
            self.leg.stack._guard(self.leg._on_digit, prm.digit)


class _Account(pj.Account):
    def __init__(self, stack: "SipStack", name: str):
        super().__init__()
        self.stack = stack
        self.name = name

    def onIncomingCall(self, prm):
        # An exception here would leave the caller at "100 Trying" for ever: never let one out.
        self.stack._guard(self.stack._incoming, self, prm.callId, prm.rdata.wholeMsg)

    def onRegState(self, prm):
        self.stack._guard(self.stack._reg_state, self, prm.code, wire_text(prm.reason, 120))


class _Endpoint(pj.Endpoint):
    def __init__(self, stack):
        super().__init__()
        self.stack = stack

    def onRejectedIncomingCall(self, prm):
        self.stack._guard(self.stack._rejected_by_pjsua, prm)


@dataclass
class TrunkState:
    state: str = "disabled"  # disabled | registering | registered | failed
    code: int = 0
    reason: str = ""
    since: float = field(default_factory=time.time)
    failures: int = 0
    next_retry_at: float | None = None


class SipStack:
    """One pjsua2 endpoint with UDP/TCP transports, a local account and an optional trunk.

    ``on_incoming(leg, account_name)`` is called for every new inbound call the stack admits;
    it must answer or hang up the leg. ``on_trunk_state(TrunkState)`` reports registration.
    """

    def __init__(
        self,
        *,
        address: str = "127.0.0.1",
        port: int = 5060,
        transports=("udp", "tcp"),
        max_calls: int = 0,
        reserve_transfer_leg: bool = False,
        clock_rate: int = 8000,
        codecs=("PCMA/8000", "PCMU/8000"),
        user: str = "centralka",
        rtp_port: int = 0,
        log_path: str | Path | None = None,
        log_level: int = 3,
        on_incoming=None,
        on_trunk_state=None,
        on_limit=None,
        gate: FloodGate | None = None,
        max_message_bytes: int = 16384,
        screen: bool = True,
        unconfirmed_per_source: int = 1,
    ):
        self.address = address
        self.port = port
        self.transports = tuple(transports)
        self.requested_max_calls = max_calls
        self.reserve_transfer_leg = reserve_transfer_leg
        self.clock_rate = clock_rate
        self.codecs = tuple(codecs)
        self.user = user
        self.rtp_port = rtp_port
        self.log_path = log_path
        self.log_level = log_level
        self.on_incoming = on_incoming
        self.on_trunk_state = on_trunk_state
        self.on_limit = on_limit
        self.gate = gate or FloodGate()
        self.max_message_bytes = max_message_bytes
        self.guard: Guard | None = None
        self.screen = screen  # off only in tests of what happens behind it
        self.unconfirmed_per_source = unconfirmed_per_source
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ep = None
        self.accounts: dict[str, _Account] = {}
        self.legs: set[Leg] = set()
        self.media_legs: set[MediaLeg] = set()  # legs without a pjsua call (GSM): in the bridge only
        self._all_legs: "weakref.WeakSet[Leg]" = weakref.WeakSet()
        self.max_calls = 0
        self.build_limit = 0
        self.trunk = TrunkState()
        self._trunk_cfg = None
        self._trunk_retry: asyncio.TimerHandle | None = None
        self._parked: list[tuple[float, object]] = []
        self._shared: list = []
        self._poller: asyncio.Task | None = None
        self.errors = 0
        self.limit_hits = 0
        self.pools: limits.Pools | None = None
        self.refused_for: str | None = None  # the pool that turned the last caller away

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        ep = _Endpoint(self)
        with _stdout_silenced():
            # pjlib prints its banner to stdout before any log setting applies.
            ep.libCreate()
        self.ep = ep
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        # pjsua opens a call's two media sockets as its INVITE arrives, before we decide: with
        # more call slots than pjlib's ioqueue has sockets for, a burst of INVITEs (even ones we
        # refuse) exhausts the ioqueue and pjlib aborts (an assertion) or fails the media (a 500).
        # So pjsua gets no more call slots than the sockets can carry, and refuses the rest itself
        # with 486 before any socket is made; within that, pjsua clamps to PJSUA_MAX_CALLS.
        sockets = limits.ioqueue_handles()
        socket_legs = max(1, (sockets - limits.SHARED["ioqueue_handles"]) // 2)
        cfg.uaConfig.maxCalls = socket_legs
        cfg.uaConfig.userAgent = "Centralka"
        cfg.logConfig.consoleLevel = 0
        cfg.logConfig.level = self.log_level if self.log_path else 0
        if self.log_path:
            cfg.logConfig.filename = str(self.log_path)
        cfg.medConfig.clockRate = self.clock_rate
        cfg.medConfig.sndClockRate = self.clock_rate
        cfg.medConfig.channelCount = 1
        cfg.medConfig.ecTailLen = 0  # no echo canceller: no sound card, and it costs CPU on a Pi
        cfg.medConfig.noVad = True
        # Never close the (null) sound device: while it is closed the bridge has no clock, so
        # ports removed in that time are never really removed (measured: every prompt player
        # and recorder freed more than ~1 s after its last use leaked a bridge slot and an open
        # file, and recordings never got their WAV header).
        cfg.medConfig.sndAutoCloseTime = -1
        try:
            ep.libInit(cfg)
            self.build_limit = build_call_limit()
            self.max_calls = min(self.requested_max_calls or self.build_limit, self.build_limit)
            for kind in self.transports:
                tcfg = pj.TransportConfig()
                tcfg.port = self.port
                tcfg.boundAddress = self.address
                ttype = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP}[kind]
                ep.transportCreate(ttype, tcfg)
            ep.libStart()
            ep.audDevManager().setNullDev()
            self._set_codecs()
            self._create_local_account()
            admitted = self.max_calls // 2 if self.reserve_transfer_leg else self.max_calls
            players, recorders, exhausted = limits.probe(self.park, admitted)
            self.pools = limits.Pools(
                calls=self.build_limit,
                players=players,
                recorders=recorders,
                conf_ports=limits.conf_ports(),
                ioqueue_handles=sockets,
            )
            if self.screen:
                self._start_guard()
        except pj.Error as exc:
            info = exc.info()
            self._destroy()
            raise SipError(f"SIP stack on {self.address}:{self.port}: {info}") from exc
        if exhausted:
            # The probe took every player (or recorder) the build has: let them go before the
            # first caller or the hold music needs one (parked objects are freed after PARK_S).
            await asyncio.sleep(PARK_S + 0.1)
            self._free_parked()
        if self.requested_max_calls > self.build_limit:
            log.warning(
                "sip.max_calls=%d but this pjsua2 build holds only %d calls (PJSUA_MAX_CALLS)",
                self.requested_max_calls,
                self.build_limit,
            )
        self._poller = self.loop.create_task(self._poll())
        log.info(
            "SIP listening on %s:%d (%s); call limit %d (build %d); pools: %s; callers at once: %d",
            self.address,
            self.port,
            "/".join(self.transports),
            self.max_calls,
            self.build_limit,
            ", ".join(f"{k} {v}" for k, v in self.pools.to_json().items()),
            self.callers_limit(),
        )

    async def hangup_all(self, wait_s: float = 2.0) -> None:
        """End every call and wait (briefly) for pjsua to confirm."""
        for leg in list(self.legs) + list(self.media_legs):
            leg.hangup()
        deadline = time.monotonic() + wait_s
        while self.legs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Hang up, unregister, and destroy the library. Whoever holds a pj object from
        ``shared_player`` must drop it before this (a pj object alive after libDestroy aborts)."""
        if self.ep is None:
            return
        if self._trunk_retry:
            self._trunk_retry.cancel()
        await self.hangup_all()
        for leg in list(self.legs) + list(self.media_legs):
            if leg.alive:
                # E.g. a caller whose Contact we cannot reach: the BYE was never sent, and pjsua
                # would keep the call until its timers give up. Its media must go before the
                # library does (a player alive after libDestroy aborts the process).
                log.warning("call %s did not end when hung up (no BYE could be sent); dropped", leg.sip_call_id)
                leg._ended(0, "box stopped")
        for acc in self.accounts.values():
            try:
                acc.shutdown()
            except pj.Error:
                pass
        # Let the last BYEs and un-REGISTERs go out, and the bridge drop its ports.
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            await asyncio.sleep(0.02)
        if self._poller:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        self._destroy()

    def _start_guard(self):
        guard = Guard(
            limits.pjsua_lib(),
            gate=self.gate,
            codecs=self.codecs,
            max_bytes=self.max_message_bytes,
            admission=self._next_caller_refused_for,
            admission_refused=self._refused_at_screen,
        )
        try:
            guard.register()
        except OSError as exc:
            # The box still takes calls; every refusal then happens in _admit (after pjsua).
            log.error("SIP screen not active: %s", exc)
            return
        self.guard = guard

    def _destroy(self):
        if self.guard is not None and self.ep is not None:
            self.guard.unregister()
            self.guard = None
        for leg in list(self._all_legs):
            leg.pj = None
        self.legs.clear()
        self._free_parked(everything=True)  # (while the bridge's clock still runs: see _release)
        self._shared.clear()
        self.accounts.clear()
        gc.collect()
        if self.ep is not None:
            try:
                self.ep.libDestroy()
            except pj.Error:
                pass
            self.ep = None

    async def _poll(self):
        # Block in pjsip's own select for up to POLL_S: a SIP packet is handled the moment it
        # arrives (no polling delay on INVITE), and asyncio's due work runs between the calls.
        # After a turn that handled events, the next turns only look (no wait): what those events
        # started (admitting a caller, then the call's task answering it) runs a turn or two
        # later, and blocking in between would add POLL_S to every INVITE's answer.
        next_sweep = time.monotonic() + SWEEP_S
        eager = 0
        while True:
            try:
                handled = self.ep.libHandleEvents(0 if eager else int(POLL_S * 1000))
            except Exception:  # noqa: BLE001 — the loop must survive a bad callback
                log.exception("libHandleEvents")
                handled = 0
            eager = EAGER_TURNS if handled > 0 else max(0, eager - 1)
            self._free_parked()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_S
                self._guard(self._sweep_legs)
            await asyncio.sleep(0)

    def _sweep_legs(self):
        """End the legs pjsua has let go of without telling us.

        Seen with hostile input: pjsua hangs a call up itself (its media is gone) but the
        DISCONNECTED never reaches onCallState, or our BYE cannot be sent (an unreachable
        Contact) and pjsua waits for timers that never fire. Such a leg would hold a call slot
        and a flow session for ever."""
        now = time.monotonic()
        for leg in list(self.legs):
            if not leg.alive or now - leg.created < STALE_S:
                continue
            call = leg.pj
            try:
                active = call is not None and call.isActive()
            except pj.Error:
                active = False
            hung_up_long_ago = leg._hung_up_at is not None and now - leg._hung_up_at > HANGUP_GIVE_UP_S
            if not active or hung_up_long_ago:
                log.warning(
                    "call %s from %s: pjsua no longer %s; ending it here",
                    leg.sip_call_id,
                    leg.remote_uri,
                    "holds it" if not active else f"ends it ({HANGUP_GIVE_UP_S:.0f} s after hang-up)",
                )
                leg._ended(0, "ended by the box (pjsua lost the call)")

    def shared_player(self, path: str | Path):
        """A looping player that many legs can listen to (one for all waiting callers, R11)."""
        player = pj.AudioMediaPlayer()
        try:
            player.createPlayer(str(path), 0)
        except pj.Error as exc:
            raise SipError(f"cannot play {path}: {exc.info()}") from exc
        self._shared.append(player)
        return player

    def park(self, obj) -> None:
        self._parked.append((time.monotonic(), obj))

    def _free_parked(self, everything: bool = False):
        if not self._parked:
            return
        now = time.monotonic()
        due = [o for t, o in self._parked if everything or now - t >= PARK_S]
        if due:
            self._parked = [] if everything else [(t, o) for t, o in self._parked if now - t < PARK_S]
            for obj in due:
                _release(obj)

    def _guard(self, fn, *args):
        try:
            fn(*args)
        except Exception:  # noqa: BLE001
            self.errors += 1
            log.exception("error in SIP callback %s", getattr(fn, "__name__", fn))

    # --- configuration ---------------------------------------------------------------------
    def _set_codecs(self):
        wanted = [c.lower() for c in self.codecs]
        for ci in self.ep.codecEnum2():
            cid = ci.codecId
            base = cid.rsplit("/", 1)[0] if cid.count("/") > 1 else cid
            prio = 0
            if base.lower() in wanted:
                prio = 250 - wanted.index(base.lower())
            self.ep.codecSetPriority(cid, prio)

    def _media_transport_config(self, acfg):
        acfg.mediaConfig.transportConfig.boundAddress = self.address
        if self.rtp_port:
            acfg.mediaConfig.transportConfig.port = self.rtp_port
            acfg.mediaConfig.transportConfig.portRange = 1000

    def _create_local_account(self):
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{self.user}@{self.address}:{self.port}"
        self._media_transport_config(acfg)
        acc = _Account(self, "local")
        acc.create(acfg, True)  # the default account: calls to any user at our address land here
        self.accounts["local"] = acc

    def add_trunk(
        self,
        *,
        registrar: str,
        username: str,
        password: str,
        realm: str = "*",
        proxy: str = "",
        expires: int = 300,
        retry_min: float = 2,
        retry_max: float = 300,
        domain: str | None = None,
    ) -> None:
        host = domain or registrar.split(":", 1)[-1].split(";")[0]
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{username}@{host}"
        acfg.regConfig.registrarUri = registrar
        acfg.regConfig.timeoutSec = expires
        # pjsua's own retry gives up on some errors; ours never does (see _reg_state).
        acfg.regConfig.retryIntervalSec = 0
        acfg.regConfig.firstRetryIntervalSec = 0
        if proxy:
            acfg.sipConfig.proxies.append(proxy)
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", realm, username, 0, password))
        self._media_transport_config(acfg)
        self._trunk_cfg = (retry_min, retry_max)
        acc = _Account(self, "trunk")
        self.trunk = TrunkState(state="registering")
        try:
            acc.create(acfg, False)
        except pj.Error as exc:
            raise SipError(f"trunk account {acfg.idUri}: {exc.info()}") from exc
        self.accounts["trunk"] = acc
        self._report_trunk()

    def _reg_state(self, acc: _Account, code: int, reason: str):
        if acc.name != "trunk":
            return
        info = acc.getInfo()
        if info.regIsActive and 200 <= code < 300:
            self.trunk = TrunkState(state="registered", code=code, reason=reason)
        elif code == 200 and not info.regIsActive:
            # Our own un-REGISTER at shutdown.
            self.trunk = TrunkState(state="disabled", code=code, reason="unregistered")
        else:
            failures = self.trunk.failures + 1
            lo, hi = self._trunk_cfg
            delay = min(hi, lo * (2 ** min(failures - 1, 16)))
            self.trunk = TrunkState(
                state="failed", code=code, reason=reason, failures=failures, next_retry_at=time.time() + delay
            )
            if self._trunk_retry:
                self._trunk_retry.cancel()
            self._trunk_retry = self.loop.call_later(delay, self._retry_register)
            log.warning("trunk registration failed (%d %s); retry %d in %.0f s", code, reason, failures, delay)
        self._report_trunk()

    def _retry_register(self):
        self._trunk_retry = None
        acc = self.accounts.get("trunk")
        if acc is None:
            return
        try:
            acc.setRegistration(True)
            self.trunk.state = "registering"
            self.trunk.next_retry_at = None
        except pj.Error as exc:
            # E.g. a transport error before anything was sent: counts as a failure too.
            self._reg_state(acc, 503, exc.info())

    def _report_trunk(self):
        if self.on_trunk_state:
            self._guard(self.on_trunk_state, self.trunk)

    # --- calls -----------------------------------------------------------------------------
    def legs_in_use(self) -> int:
        return len(self.legs)

    def pjsua_calls(self) -> int:
        """Calls pjsua itself still holds (a slot it has not given back shows here)."""
        lib = limits.pjsua_lib()
        lib.pjsua_call_get_count.restype = ctypes.c_uint
        return int(lib.pjsua_call_get_count())

    def legs_status(self) -> list[dict]:
        """Every call leg the box holds, for ``centralka status`` (a leftover shows here)."""
        now = time.monotonic()
        out = []
        for leg in list(self.legs) + list(self.media_legs):
            state = "confirmed" if leg.confirmed.done() and leg.confirmed.result() else "setting up"
            out.append(
                {
                    "call_id": leg.sip_call_id,
                    "direction": leg.direction,
                    "line": leg.line,
                    "remote": leg.remote_uri,
                    "source": leg.source,
                    "state": state if leg.alive else "ended",
                    "age_s": round(now - leg.created, 1),
                }
            )
        return out

    def _incoming(self, acc: _Account, call_id: int, whole_msg: str = ""):
        """pjsua's onIncomingCall: take the call (a referenced Call), decide later.

        Nothing may answer or hang up the call inside this callback. pjsua2 frees its copy of
        the INVITE when the callback returns; a final answer given inside it (an INVITE without
        SDP is answered at once) ends the call and frees that copy first, and pjsua2 then frees
        it again: ``pjsip_rx_data_free_cloned: Assertion 'rdata' failed`` and the whole process
        aborts. So every decision, refusal or admission, runs on the next loop turn.
        """
        leg = Leg(self, "in", acc, call_id)
        self.legs.add(leg)
        self._all_legs.add(leg)
        raw = whole_msg.encode("utf-8", "surrogateescape") if whole_msg else b""
        leg._fill_info(raw)
        self.loop.call_soon(self._guard, self._admit, leg, acc, raw)

    def _unconfirmed_from(self, host: str, new: Leg) -> int:
        """Incoming calls from ``host`` whose ACK is overdue (older than STALE_S and still not
        confirmed: a real caller's ACK comes milliseconds after the 200 OK)."""
        now = time.monotonic()
        return sum(
            1
            for other in self.legs
            if other is not new
            and other.direction == "in"
            and other.alive
            and not other.confirmed.done()
            and now - other.created > STALE_S
            and other.source.rsplit(":", 1)[0] == host
        )

    def _refuse(self, leg: Leg, code: int, reason: str) -> None:
        leg._local_hangup = True
        try:
            leg.answer(code, reason)
        except SipError as exc:
            log.warning("could not refuse call %s with %d: %s", leg.sip_call_id, code, exc)
            leg.hangup(code, reason)

    def _admit(self, leg: Leg, acc: _Account, raw: bytes) -> None:
        # A caller who cancelled before we decided still goes on to ``on_incoming``: a call
        # given up at once is a missed call like any other (the engine records it).
        # The screen refuses malformed INVITEs before pjsua sees them; this is the same check
        # for a build where the screen could not be installed (not repeated when it is there).
        screened = self.guard is not None and self.guard.screening
        refusal = check_request(raw, codecs=self.codecs, max_bytes=1 << 20) if raw and not screened else None
        if refusal is not None and refusal.code and leg.alive:
            log.warning(
                "refused INVITE from %s (Call-ID %s) with %d %s: %s",
                leg.remote_uri,
                leg.sip_call_id,
                refusal.code,
                refusal.reason,
                refusal.detail,
            )
            self._refuse(leg, refusal.code, refusal.reason)
            return
        source = self.guard.source_of(leg.sip_call_id) if self.guard else None
        if source is not None:
            leg.source = f"{source[0]}:{source[1]}"
            if (
                leg.alive
                and not self.gate.is_trusted(*source)
                and self._unconfirmed_from(source[0], leg) >= (self.unconfirmed_per_source)
            ):
                # A stranger's INVITEs that never send the ACK each hold a call leg for half a
                # minute (pjsip's retransmissions): on a 4-leg build two of them would keep the
                # clinic's line busy. One unconfirmed call per address is what a real caller needs.
                log.warning(
                    "refused INVITE from %s (Call-ID %s) with 486: %s already has a call that was never acknowledged",
                    leg.remote_uri,
                    leg.sip_call_id,
                    source[0],
                )
                self._refuse(leg, 486, "Busy Here (unacknowledged call from this address)")
                return
        in_use = len(self.legs)
        # Reserve one leg per admitted caller so each can still be put through to a human.
        # (GSM callers count too: putting them through to a person takes a SIP leg.)
        full = self._full_with(self._callers(), in_use)
        if leg.alive and full:
            self.limit_hits += 1
            self.refused_for = full
            log.warning(
                "call limit reached (%s): %d of %d call legs in use (pjsua2 build limit %d%s); pools: %s; "
                "rejecting call from %s (Call-ID %s) with 486",
                full,
                in_use - 1,
                self.max_calls,
                self.build_limit,
                ", one leg kept free per caller for the transfer" if self.reserve_transfer_leg else "",
                self.pools.to_json() if self.pools else "?",
                leg.remote_uri,
                leg.sip_call_id,
            )
            self._refuse(leg, 486, "Busy Here (call limit reached)")
            if self.on_limit:
                self._guard(self.on_limit, leg.remote_uri, leg.local_uri, leg.sip_call_id)
            return
        if self.on_incoming is None:
            self._refuse(leg, 480, "Temporarily Unavailable")
            return
        try:
            self.on_incoming(leg, acc.name)
        except Exception:  # noqa: BLE001 — one caller refused, never the process
            self.errors += 1
            log.exception(
                "incoming call handler failed for %s (Call-ID %s); refusing it with 500",
                leg.remote_uri,
                leg.sip_call_id,
            )
            if leg.alive:
                self._refuse(leg, 500, "Internal Server Error")

    def _full_with(self, callers: int, legs: int) -> str | None:
        """The pool that cannot hold ``callers`` callers on ``legs`` call legs, each caller with
        their transfer (a leg kept free per caller unless ``reserve_transfer_leg`` is off), or
        None when every pool can."""
        if legs > self.max_calls or (self.reserve_transfer_leg and callers * 2 > self.max_calls):
            return "calls"
        if self.pools is None:
            return None
        for name, room in limits.callers_room(self.pools).items():
            if name != "calls" and callers > room:
                return name
        return None

    def _callers(self) -> int:
        """Callers on the line now (GSM callers too: putting them through takes a SIP leg)."""
        return sum(1 for other in list(self.legs) + list(self.media_legs) if other.direction == "in")

    def _next_caller_refused_for(self) -> str | None:
        """The pool that would turn the next caller away now (None: there is room)."""
        return self._full_with(self._callers() + 1, len(self.legs) + 1)

    def _refused_at_screen(self, req, full: str, host: str, port: int) -> None:
        """A caller turned away by the screen (no call was made): counted, logged, and a missed
        call like any caller refused at the limit."""
        self.limit_hits += 1
        self.refused_for = full
        remote, local = wire_text(req.get("from") or ""), wire_text(req.get("to") or "")
        log.warning(
            "call limit reached (%s): %d call legs in use of %d; pools: %s; rejecting call from %s:%d "
            "(Call-ID %s) with 486 before any media is made",
            full,
            len(self.legs),
            self.max_calls,
            self.pools.to_json() if self.pools else "?",
            host,
            port,
            wire_text(req.call_id),
        )
        if self.on_limit:
            self.loop.call_soon(self._guard, self.on_limit, remote, local, wire_text(req.call_id))

    def callers_limit(self) -> int:
        """How many callers the box admits at once: the tightest pool decides."""
        legs = self.max_calls // 2 if self.reserve_transfer_leg else self.max_calls
        if self.pools is None:
            return legs
        return min([legs] + [r for n, r in limits.callers_room(self.pools).items() if n != "calls"])

    def pools_status(self) -> dict:
        """Each pool's size, use and room, and which one is full now (``centralka status``)."""
        if self.pools is None:
            return {}
        held = [o for leg in list(self.legs) + list(self.media_legs) for o in leg._players]
        used = limits.in_use(held + list(self._shared) + [o for _, o in self._parked])
        used["calls"] = len(self.legs)
        used["ioqueue_handles"] = limits.SHARED["ioqueue_handles"] + 2 * len(self.legs)
        return {
            "limits": self.pools.to_json(),
            "in_use": used,
            "callers": self._callers(),
            "callers_limit": self.callers_limit(),
            "full": self._next_caller_refused_for(),  # the pool that would turn the next caller away
            "last_refused_for": self.refused_for,
        }

    def _rejected_by_pjsua(self, prm):
        req = parse_request(prm.rdata.wholeMsg.encode("utf-8", "surrogateescape"))
        call_id = req.call_id if req else ""
        if prm.statusCode != 486:
            # Not the limit: pjsua refused a request the screen let through (e.g. an SDP it
            # cannot negotiate, a Require it does not support, a merged request).
            log.warning(
                "pjsua refused an INVITE from %s (Call-ID %s) with %d %s",
                wire_text(prm.remoteInfo),
                call_id,
                prm.statusCode,
                wire_text(prm.reason, 120),
            )
            return
        # pjsua itself answers 486 when every call slot of the build is taken; the call never
        # reaches onIncomingCall, so this is the only place that knows a caller was turned away.
        self.limit_hits += 1
        remote = wire_text(prm.remoteInfo)
        log.warning(
            "call limit reached: all %d call legs of the pjsua2 build are in use; pjsua rejected "
            "a call from %s (Call-ID %s) with %d %s",
            self.build_limit,
            remote,
            call_id,
            prm.statusCode,
            wire_text(prm.reason),
        )
        if self.on_limit:
            self._guard(self.on_limit, remote, wire_text(prm.localInfo), call_id)

    def dial(self, uri: str, account: str = "local") -> Leg:
        """Start an outbound call; raises CallLimitReached / SipError when it cannot."""
        if len(self.legs) >= self.max_calls:
            self.limit_hits += 1
            raise CallLimitReached(
                f"no free call leg ({len(self.legs)} of {self.max_calls} in use; pjsua2 build limit {self.build_limit})"
            )
        acc = self.accounts.get(account)
        if acc is None:
            raise SipError(f"no {account} account")
        leg = Leg(self, "out", acc)
        prm = pj.CallOpParam(True)
        try:
            leg.pj.makeCall(uri, prm)
        except pj.Error as exc:
            leg.pj = None
            raise SipError(f"cannot call {uri}: {exc.info()}") from exc
        self.legs.add(leg)
        self._all_legs.add(leg)
        leg._fill_info()
        return leg

    def _leg_ended(self, leg: MediaLeg):
        self.legs.discard(leg)
        self.media_legs.discard(leg)
        if not isinstance(leg, Leg):
            return  # a GSM leg holds no pjsua call
        if leg.pj is not None:
            leg.pj.forget_slot()
        # The pj.Call object stays referenced until pjsua is certainly done with it; the Leg
        # (which sessions may keep for their records) lets go of it now.
        self.park(leg.pj)
        self.loop.call_soon(_release_call, leg)


def _release(obj) -> None:
    """Free a parked pj object. A port whose frame callbacks are Python code (a GSM leg's
    ``_VoicePort``) is destroyed by its ``release_now`` while this reference still holds it:
    the bridge's clock thread calls such a port up to its destructor's last step, and if Python
    had already begun to free the object that call lands in freed memory (SIGSEGV, seen when
    GSM calls ended under load and at stop)."""
    release = getattr(obj, "release_now", None)
    if release is not None:
        try:
            release()
        except Exception:  # noqa: BLE001 — freeing must go on for the rest
            log.exception("releasing a media port")


def _release_call(leg: Leg):
    call, leg.pj = leg.pj, None
    if call is not None:
        call.leg = None  # break the Leg <-> Call cycle; the parked reference keeps it alive
