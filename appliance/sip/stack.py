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
import re
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pjsua2 as pj

from ..errors import CallLimitReached, SipError
from ..numbers import user_part

log = logging.getLogger("centralka.sip")

PARK_S = 1.5
POLL_S = 0.01
# European ringback (and Polish): 425 Hz, 1 s on, 4 s off.
RINGBACK = (425, 1000, 4000)


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
    """PJSUA_MAX_CALLS of the installed build: pjsua clamps ``maxCalls`` to it at libInit.

    The value is read back through the library's C API, which the SWIG layer does not expose.
    Must be called after ``libInit``.
    """
    lib = ctypes.CDLL(pj._pjsua2.__file__)
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
        tone.createToneGenerator(self.stack.clock_rate, 1)
        desc = pj.ToneDesc()
        desc.freq1, desc.on_msec, desc.off_msec = RINGBACK
        desc.freq2 = 0
        vec = pj.ToneDescVector()
        vec.append(desc)
        tone.play(vec, True)
        tone.startTransmit(self._audio)
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

    def listen(self, source) -> None:
        """Hear a shared source (the one hold-music player all waiting callers share)."""
        if self._audio is None or source in self._sources:
            return
        source.startTransmit(self._audio)
        self._sources.add(source)

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
        self.digits.append(digit)
        self.digit_event.set()


class Leg(MediaLeg):
    """One SIP call leg (pjsua2 ``Call``)."""

    def __init__(self, stack: "SipStack", direction: str, account: "_Account", call_id: int | None = None):
        super().__init__(stack, direction)
        self.account = account
        self.pj = _Call(self, account, pj.PJSUA_INVALID_ID if call_id is None else call_id)

    def _fill_info(self):
        try:
            ci = self.pj.getInfo()
        except (pj.Error, AttributeError):
            return
        self.remote_uri = ci.remoteUri
        self.local_uri = ci.localUri
        self.sip_call_id = ci.callIdString
        self.remote_user = user_part(ci.remoteUri)
        self.local_user = user_part(ci.localUri)

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
            self._ended(ci.lastStatusCode, ci.lastReason)

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

    def onCallState(self, prm):
        if self.leg is not None:
            self.leg.stack._guard(self.leg._on_state)

    def onCallMediaState(self, prm):
        if self.leg is not None:
            self.leg.stack._guard(self.leg._on_media)

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
        self.stack._guard(self.stack._reg_state, self, prm.code, prm.reason)


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

    def __init__(self, *, address: str = "127.0.0.1", port: int = 5060, transports=("udp", "tcp"),
                 max_calls: int = 0, reserve_transfer_leg: bool = False, clock_rate: int = 8000,
                 codecs=("PCMA/8000", "PCMU/8000"), user: str = "centralka", rtp_port: int = 0,
                 log_path: str | Path | None = None, log_level: int = 3, on_incoming=None,
                 on_trunk_state=None, on_limit=None):
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
        # Ask for far more than any build has: pjsua clamps to PJSUA_MAX_CALLS, which we read back.
        cfg.uaConfig.maxCalls = 100000
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
        except pj.Error as exc:
            info = exc.info()
            self._destroy()
            raise SipError(f"SIP stack on {self.address}:{self.port}: {info}") from exc
        if self.requested_max_calls > self.build_limit:
            log.warning("sip.max_calls=%d but this pjsua2 build holds only %d calls (PJSUA_MAX_CALLS)",
                        self.requested_max_calls, self.build_limit)
        self._poller = self.loop.create_task(self._poll())
        log.info("SIP listening on %s:%d (%s); call limit %d (build %d)", self.address, self.port,
                 "/".join(self.transports), self.max_calls, self.build_limit)

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

    def _destroy(self):
        for leg in list(self._all_legs):
            leg.pj = None
        self.legs.clear()
        self._parked.clear()
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
        while True:
            try:
                self.ep.libHandleEvents(int(POLL_S * 1000))
            except Exception:  # noqa: BLE001 — the loop must survive a bad callback
                log.exception("libHandleEvents")
            self._free_parked()
            await asyncio.sleep(0)

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

    def _free_parked(self):
        if not self._parked:
            return
        now = time.monotonic()
        keep = [(t, o) for t, o in self._parked if now - t < PARK_S]
        if len(keep) != len(self._parked):
            self._parked = keep

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

    def add_trunk(self, *, registrar: str, username: str, password: str, realm: str = "*",
                  proxy: str = "", expires: int = 300, retry_min: float = 2, retry_max: float = 300,
                  domain: str | None = None) -> None:
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
            self.trunk = TrunkState(state="failed", code=code, reason=reason, failures=failures,
                                    next_retry_at=time.time() + delay)
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

    def _incoming(self, acc: _Account, call_id: int, whole_msg: str = ""):
        leg = Leg(self, "in", acc, call_id)
        self.legs.add(leg)
        self._all_legs.add(leg)
        leg._fill_info()
        problem = _framing_problem(whole_msg)
        if problem:
            # RFC 3261 §18.3: over UDP a Content-Length that disagrees with the datagram is an
            # error; pjsip accepts it, so we refuse the call here rather than guess the body.
            log.warning("rejecting INVITE from %s with 400: %s", leg.remote_uri, problem)
            leg._local_hangup = True
            leg.answer(400, problem)
            return
        in_use = len(self.legs)
        # Reserve one leg per admitted caller so each can still be put through to a human.
        # (GSM callers count too: putting them through to a person takes a SIP leg.)
        callers = sum(1 for l in list(self.legs) + list(self.media_legs) if l.direction == "in")
        needed = callers * 2 if self.reserve_transfer_leg else in_use
        if in_use > self.max_calls or needed > self.max_calls:
            self.limit_hits += 1
            log.warning("call limit reached: %d of %d call legs in use (pjsua2 build limit %d%s); "
                        "rejecting call from %s with 486", in_use - 1, self.max_calls, self.build_limit,
                        ", one leg kept free per caller for the transfer" if self.reserve_transfer_leg else "",
                        leg.remote_uri)
            leg._local_hangup = True
            leg.answer(486, "Busy Here (call limit reached)")
            if self.on_limit:
                self._guard(self.on_limit, leg.remote_uri, leg.local_uri, leg.sip_call_id)
            return
        if self.on_incoming is None:
            leg.answer(480, "Temporarily Unavailable")
            return
        try:
            self.on_incoming(leg, acc.name)
        except Exception:
            log.exception("incoming call handler failed; rejecting with 500")
            leg.answer(500, "Internal Error")
            raise

    def _rejected_by_pjsua(self, prm):
        if prm.statusCode != 486:
            # Not the limit: pjsua refused a broken request (bad SDP and the like).
            log.warning("pjsua rejected an INVITE from %s: %d %s", prm.remoteInfo, prm.statusCode, prm.reason)
            return
        # pjsua itself answers 486 when every call slot of the build is taken; the call never
        # reaches onIncomingCall, so this is the only place that knows a caller was turned away.
        self.limit_hits += 1
        log.warning("call limit reached: all %d call legs of the pjsua2 build are in use; pjsua rejected "
                    "a call from %s with %d %s", self.build_limit, prm.remoteInfo, prm.statusCode, prm.reason)
        if self.on_limit:
            m = re.search(r"^(?:Call-ID|i)\s*:\s*(\S+)", prm.rdata.wholeMsg, re.MULTILINE | re.IGNORECASE)
            self._guard(self.on_limit, prm.remoteInfo, prm.localInfo, m.group(1) if m else "")

    def dial(self, uri: str, account: str = "local") -> Leg:
        """Start an outbound call; raises CallLimitReached / SipError when it cannot."""
        if len(self.legs) >= self.max_calls:
            self.limit_hits += 1
            raise CallLimitReached(f"no free call leg ({len(self.legs)} of {self.max_calls} in use; "
                                   f"pjsua2 build limit {self.build_limit})")
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
        # The pj.Call object stays referenced until pjsua is certainly done with it; the Leg
        # (which sessions may keep for their records) lets go of it now.
        self.park(leg.pj)
        self.loop.call_soon(_release_call, leg)


def _release_call(leg: Leg):
    call, leg.pj = leg.pj, None
    if call is not None:
        call.leg = None  # break the Leg <-> Call cycle; the parked reference keeps it alive


def _framing_problem(whole_msg: str) -> str | None:
    """Why a request's Content-Length does not match its body, or None when it does."""
    if not whole_msg or "\r\n\r\n" not in whole_msg:
        return None
    head, body = whole_msg.split("\r\n\r\n", 1)
    m = re.search(r"^(?:Content-Length|l)\s*:\s*(\S*)\s*$", head, re.MULTILINE | re.IGNORECASE)
    if m is None:
        return None  # allowed over UDP: the body is the rest of the datagram
    if not m.group(1).isdigit():
        return "Bad Content-Length"
    if int(m.group(1)) != len(body.encode("utf-8", "surrogateescape")):
        return "Content-Length does not match the body"
    return None
