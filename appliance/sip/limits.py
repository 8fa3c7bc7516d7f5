"""The pjsua2 build's pools, read or measured at start, and how full they are (issue 13).

Call legs are not the only thing a build runs out of. Measured on pjproject 2.15.1 with 64 call
legs: the 33rd call's media failed with ``PJ_ETOOMANY`` (pjlib's ``PJ_IOQUEUE_MAX_HANDLES``,
64 by default: two sockets per call), and near 60 calls ``PJSUA_MAX_PLAYERS`` ran out and callers
were dropped. So the core knows every pool's size and admits a caller only while all of them
have room for the caller and their transfer:

- call legs: ``pjsua_call_get_max_count()`` (``PJSUA_MAX_CALLS``, and no more than the sockets carry);
- conference ports: ``pjsua_conf_get_max_ports()``;
- ioqueue handles: ``PJ_IOQUEUE_MAX_HANDLES`` from pjlib's own configuration dump
  (``pj_dump_config``, caught through a log function for the moment it runs);
- players and recorders (``PJSUA_MAX_PLAYERS``/``RECORDERS``, in no API): a probe at start makes
  them until pjsua says no or there are as many as the callers the call legs admit could use,
  then lets them go (parked 1.5 s, as every player is: a probe to the build's very end would
  leave the first caller without a player for that time). A count that reached its cap means
  "at least this many", and that pool is not the one that limits the box.

Use is what the stack holds (players and recorders of every leg, shared and parked ones, so
a player kept 1.5 s after it finished still counts) and the bridge's active port count.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pjsua2 as pj

log = logging.getLogger("centralka.sip")

PROBE_CAP = 4096  # never make more than this many players or recorders to count them
IOQUEUE_DEFAULT = 64  # pjlib's own default, when its dump says nothing

# What one admitted caller may hold at once, their transfer included (appliance/flow/engine.py):
# two call legs (theirs and the person's); two players (a prompt and the next, the first kept
# 1.5 s after it ended); a recorder (their voice message); a conference port for each leg, each
# player and a ringback tone; RTP and RTCP sockets for each leg's media.
PER_CALLER = {"calls": 2, "players": 2, "recorders": 1, "conf_ports": 5, "ioqueue_handles": 4}
# Held by the box whatever the calls: the hold music (a player and its port), the self-test
# call's ear (a recorder), the bridge's own port, a GSM call's voice port, the SIP transports'
# sockets (UDP, a TCP listener, connections).
SHARED = {"calls": 0, "players": 1, "recorders": 1, "conf_ports": 3, "ioqueue_handles": 6}


@dataclass(frozen=True)
class Pools:
    calls: int
    players: int
    recorders: int
    conf_ports: int
    ioqueue_handles: int

    def to_json(self) -> dict:
        return asdict(self)


@functools.cache
def pjsua_lib() -> ctypes.CDLL:
    """The wheel's own library, for the few C calls the SWIG layer does not expose."""
    return ctypes.CDLL(pj._pjsua2.__file__)


_LOG_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)


def ioqueue_handles() -> int:
    """``PJ_IOQUEUE_MAX_HANDLES`` of the build, from ``pj_dump_config`` (default 64)."""
    lib = pjsua_lib()
    lines: list[str] = []

    def catch(level, data, length):  # runs inside pj_dump_config, on this thread
        lines.append(data[:length].decode("utf-8", "replace") if data else "")

    func = _LOG_FUNC(catch)
    lib.pj_log_get_log_func.restype = ctypes.c_void_p
    lib.pj_log_get_level.restype = ctypes.c_int
    old_func, old_level = lib.pj_log_get_log_func(), lib.pj_log_get_level()
    try:
        lib.pj_log_set_level(3)
        lib.pj_log_set_log_func(func)
        lib.pj_dump_config()
    finally:
        lib.pj_log_set_log_func(ctypes.c_void_p(old_func))
        lib.pj_log_set_level(old_level)
    for line in lines:
        m = re.search(r"PJ_IOQUEUE_MAX_HANDLES\s*:\s*(\d+)", line)
        if m:
            return int(m.group(1))
    log.warning("pjlib's configuration dump names no PJ_IOQUEUE_MAX_HANDLES; assuming %d", IOQUEUE_DEFAULT)
    return IOQUEUE_DEFAULT


def conf_ports() -> int:
    lib = pjsua_lib()
    lib.pjsua_conf_get_max_ports.restype = ctypes.c_uint
    return int(lib.pjsua_conf_get_max_ports())


def _silence(folder: Path) -> Path:
    path = folder / "probe.wav"
    samples = bytes(320)
    header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data" + struct.pack("<I", len(samples))
    path.write_bytes(header + samples)
    return path


def probe(park, callers: int) -> tuple[int, int, bool]:
    """(players, recorders) the build allows, counted up to what ``callers`` admitted callers
    could use (then: at least that many), and whether a pool was taken to its end (its probe
    objects must be freed before anyone needs one). Every probe object is handed to ``park``."""
    players_cap = min(PROBE_CAP, SHARED["players"] + callers * PER_CALLER["players"] + 1)
    recorders_cap = min(PROBE_CAP, SHARED["recorders"] + callers * PER_CALLER["recorders"] + 1)
    with tempfile.TemporaryDirectory(prefix="centralka-probe-") as tmp:
        folder = Path(tmp)
        wav = _silence(folder)
        players, recorders = [], []
        try:
            while len(players) < players_cap:
                p = pj.AudioMediaPlayer()
                try:
                    p.createPlayer(str(wav), pj.PJMEDIA_FILE_NO_LOOP)
                except pj.Error:
                    break
                players.append(p)
            while len(recorders) < recorders_cap:
                r = pj.AudioMediaRecorder()
                try:
                    r.createRecorder(str(folder / f"r{len(recorders)}.wav"))
                except pj.Error:
                    break
                recorders.append(r)
        finally:
            for obj in players + recorders:
                park(obj)
    return len(players), len(recorders), len(players) < players_cap or len(recorders) < recorders_cap


def in_use(objects) -> dict:
    """How much of each media pool is held now: ``objects`` are every pj object the stack keeps
    (legs' players, tones and recorders, shared players, parked ones not yet freed — a player
    is kept 1.5 s after it ended); conference ports as the bridge counts them."""
    lib = pjsua_lib()
    lib.pjsua_conf_get_active_ports.restype = ctypes.c_uint
    objects = list(objects)
    return {
        "players": sum(1 for o in objects if isinstance(o, pj.AudioMediaPlayer)),
        "recorders": sum(1 for o in objects if isinstance(o, pj.AudioMediaRecorder)),
        "conf_ports": int(lib.pjsua_conf_get_active_ports()),
    }


def callers_room(pools: Pools) -> dict:
    """How many callers each pool can hold at once, each with their transfer."""
    return {name: max(0, (getattr(pools, name) - SHARED[name]) // need) for name, need in PER_CALLER.items()}
