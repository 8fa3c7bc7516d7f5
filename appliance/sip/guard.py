"""Two pjsip modules of our own, registered through pjsip's C API, around everything pjsua does.

pjsua2 gives Python no hook before pjsua handles a request: an INVITE becomes a call (a call
leg, a media transport, sockets) before ``onIncomingCall`` runs, and a request no module wants
is dropped without an answer. So the stack registers, with ctypes on the wheel's own library:

- the **screen** (priority 15, just before the transaction layer): every request passes
  ``screen.check_request`` and the per-source ``FloodGate`` first. A refused request is answered
  statelessly (or dropped, as the RFCs advise) and never reaches pjsua: no call, no leg, no row.
- the **last word** (priority 96, after every pjsua module): a request nobody handled gets 481
  (a method we speak, but no such dialog or transaction) or 405 with ``Allow`` instead of silence.

The pjsip structures are read at offsets checked against the running library: the layout of
``pjsip_rx_data`` depends on PJSIP_MAX_PKT_LEN, which a build may change, so the first request
calibrates it (``msg_info.msg_buf`` must point into ``pkt_info.packet``). Callbacks run on the
thread that calls ``libHandleEvents`` (the asyncio thread), hold the GIL, and never raise.
"""

from __future__ import annotations

import ctypes
import logging
import time

from ..text import wire_text
from .screen import ALLOW, DIALOG_ONLY, FloodGate, Refusal, check_request, parse_request, warning_headers

log = logging.getLogger("centralka.sip.guard")

PRIORITY_SCREEN = 15  # PJSIP_MOD_PRIORITY_TSX_LAYER - 1
PRIORITY_LAST = 96  # after PJSIP_MOD_PRIORITY_APPLICATION (64), where every pjsua module sits
_QUIET_S = 60.0


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]

    @classmethod
    def of(cls, text: str) -> "_PjStr":
        raw = text.encode("utf-8", "replace")
        return cls(raw, len(raw))


_RX_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _Module(ctypes.Structure):
    # struct pjsip_module (sip_module.h): list member, name, id, priority, 9 callbacks.
    _fields_ = [
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", _PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", _RX_CB),
        ("on_rx_response", ctypes.c_void_p),
        ("on_tx_request", ctypes.c_void_p),
        ("on_tx_response", ctypes.c_void_p),
        ("on_tsx_state", ctypes.c_void_p),
    ]


class _HdrHead(ctypes.Structure):
    # The list head handed to pjsip_endpt_respond_stateless: only prev/next are read.
    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("pad", ctypes.c_char * 64)]


# pjsip_rx_data: tp_info {pool, transport, tp_data, pjsip_rx_data_op_key (34 + 1 pointers)},
# pkt_info {pj_time_val, packet[PJSIP_MAX_PKT_LEN], zero, len, src_addr (28 bytes), src_addr_len,
# src_name[46], src_port}, msg_info {msg_buf, len, ...}. Offsets computed with the C alignment
# rules for this machine's word sizes (LP64 on a 64-bit Pi and on x86_64).
_P = ctypes.sizeof(ctypes.c_void_p)
_LONG = ctypes.sizeof(ctypes.c_long)
_SSIZE = ctypes.sizeof(ctypes.c_ssize_t)
_PACKET_OFF = 3 * _P + 35 * _P + 2 * _LONG
_PKT_ALIGN = max(_LONG, _SSIZE, 4)


# pjsip_msg: type, line (the request line: method {id, name}, uri), hdr (a list head: prev, next,
# type, name, sname, vptr), body. pjsip_msg_body: content_type {type, subtype, param list head
# {prev, next, name, value}}, data, len. Used only after the pointers read check out.
_STR = _P + _SSIZE
_MSG_BODY = _P + (_P + _STR + _P) + (2 * _P + _P + 2 * _STR + _P)
_BODY_DATA = 2 * _STR + 2 * _P + 2 * _STR


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class _Layout:
    """Offsets inside pjsip_rx_data, found on the first request and checked on every one."""

    def __init__(self, max_pkt: int):
        self.max_pkt = max_pkt
        zero = _PACKET_OFF + max_pkt
        self.len = _align(_align(zero, 4) + 4, ctypes.alignment(ctypes.c_ssize_t))
        src_addr = self.len + _SSIZE
        self.src_name = src_addr + 28 + 4
        self.src_port = _align(self.src_name + 46, 4)
        self.msg_buf = _align(_align(self.src_port + 4, _PKT_ALIGN), _P)
        self.msg_len = self.msg_buf + _P

    @classmethod
    def calibrate(cls, rdata: int) -> "_Layout | None":
        packet = rdata + _PACKET_OFF
        # The first word after the packet's text that points into the packet is msg_info.msg_buf;
        # reads stay inside the structure until it is found.
        seen = set()
        for max_pkt in range(max(len(ctypes.string_at(packet)), 64), 1 << 17):
            lay = cls(max_pkt)
            if lay.msg_buf in seen:
                continue
            seen.add(lay.msg_buf)
            buf = ctypes.c_void_p.from_address(rdata + lay.msg_buf).value or 0
            if packet <= buf < packet + max_pkt and lay.valid(rdata):
                # Of the sizes giving these offsets, the largest: the buffer's real size.
                while cls(max_pkt + 1).msg_buf == lay.msg_buf:
                    max_pkt += 1
                return cls(max_pkt)
        return None

    def valid(self, rdata: int) -> bool:
        packet = rdata + _PACKET_OFF
        buf = ctypes.c_void_p.from_address(rdata + self.msg_buf).value or 0
        pkt_len = ctypes.c_ssize_t.from_address(rdata + self.len).value
        msg_len = ctypes.c_int.from_address(rdata + self.msg_len).value
        port = ctypes.c_int.from_address(rdata + self.src_port).value
        return (
            packet <= buf < packet + self.max_pkt
            and 0 < pkt_len <= self.max_pkt
            and 0 < msg_len <= pkt_len
            and 0 <= port < 65536
        )


class Guard:
    """The screen and the last word, for one pjsua endpoint (``SipStack`` owns it)."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        *,
        gate: FloodGate,
        codecs,
        max_bytes: int = 16384,
        clock=time.monotonic,
        admission=None,
        admission_refused=None,
    ):
        # ``admission()``: the pool with no room for one more caller, or None (the stack's).
        self.admission = admission
        self.admission_refused = admission_refused
        self.lib = lib
        self.lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        self.lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pjsip_endpt_unregister_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pjsip_endpt_respond_stateless.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib.pjsip_generic_string_hdr_create.restype = ctypes.c_void_p
        self.lib.pjsip_generic_string_hdr_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.gate = gate
        self.codecs = tuple(codecs)
        self.max_bytes = max_bytes
        self.clock = clock
        self.endpt = None
        self.layout: _Layout | None = None
        self.broken = False
        self.refused = 0
        self.answered_last = 0
        self._quiet: dict[str, float] = {}
        self._sources: dict[str, tuple[str, int]] = {}  # Call-ID of a new INVITE -> its source
        # The callbacks and structures must outlive the registration: pjsip keeps pointers.
        self._screen_cb = _RX_CB(self._on_screen)
        self._last_cb = _RX_CB(self._on_last)
        self._names = [b"mod-centralka-screen", b"mod-centralka-last"]
        self._modules = [
            self._module(self._names[0], PRIORITY_SCREEN, self._screen_cb),
            self._module(self._names[1], PRIORITY_LAST, self._last_cb),
        ]
        self._registered: list[_Module] = []

    @staticmethod
    def _module(name: bytes, priority: int, cb) -> _Module:
        mod = _Module()
        mod.name = _PjStr(name, len(name))
        mod.id = -1
        mod.priority = priority
        mod.on_rx_request = cb
        return mod

    def register(self) -> None:
        """After libStart: put both modules in pjsip's chain."""
        self.endpt = self.lib.pjsua_get_pjsip_endpt()
        for mod in self._modules:
            status = self.lib.pjsip_endpt_register_module(self.endpt, ctypes.byref(mod))
            if status != 0:
                raise OSError(f"pjsip_endpt_register_module({mod.name.ptr.decode()}) failed: {status}")
            self._registered.append(mod)

    def unregister(self) -> None:
        """Before libDestroy: the modules' memory is ours, pjsip must not touch it afterwards."""
        for mod in reversed(self._registered):
            self.lib.pjsip_endpt_unregister_module(self.endpt, ctypes.byref(mod))
        self._registered.clear()

    @property
    def screening(self) -> bool:
        """Every request passes the screen (registered, and this build's layout was read)."""
        return bool(self._registered) and self.layout is not None and not self.broken

    def status(self) -> dict:
        return {
            "refused": self.refused,
            "dropped_flood": self.gate.dropped,
            "unhandled_answered": self.answered_last,
            "banned": sorted(self.gate.banned),
            # False only when this build's pjsip_rx_data could not be read: the screen is off.
            "active": bool(self._registered) and not self.broken,
        }

    # --- reading pjsip_rx_data -------------------------------------------------------------
    def _read(self, rdata: int):
        lay = self.layout
        if lay is None:
            if self.broken:
                return None
            lay = _Layout.calibrate(rdata)
            if lay is None:
                self.broken = True
                log.error(
                    "cannot read pjsip's received messages (unknown pjsip_rx_data layout in this "
                    "build): malformed SIP is left to pjsip alone, no flood limit on the core's port"
                )
                return None
            self.layout = lay
            log.info("SIP screen active (this build's PJSIP_MAX_PKT_LEN is about %d bytes)", lay.max_pkt)
        elif not lay.valid(rdata):
            return None
        buf = ctypes.c_void_p.from_address(rdata + lay.msg_buf).value
        msg_len = ctypes.c_int.from_address(rdata + lay.msg_len).value
        pkt_len = ctypes.c_ssize_t.from_address(rdata + lay.len).value
        data = ctypes.string_at(buf, msg_len)
        host = ctypes.string_at(rdata + lay.src_name).decode("ascii", "replace")
        port = ctypes.c_int.from_address(rdata + lay.src_port).value
        # A datagram that filled the whole buffer lost its end: the kernel cut it off. (Over TCP
        # the buffer holds a stream, which pjsip itself frames and bounds.)
        truncated = msg_len == pkt_len and pkt_len >= lay.max_pkt - 8
        return data, host, port, truncated

    # --- the screen ------------------------------------------------------------------------
    def _on_screen(self, rdata) -> int:
        try:
            return self._screen(rdata)
        except Exception:  # noqa: BLE001 — a bug in the screen must not cost a request its answer
            log.exception("SIP screen failed; passing the request on to pjsua")
            return 0

    def _screen(self, rdata) -> int:
        got = self._read(rdata)
        if got is None:
            return 0
        data, host, port, truncated = got
        req = parse_request(data)
        in_dialog = req.in_dialog if req is not None else False
        method = wire_text(req.method, 20) if req is not None else "?"
        if not in_dialog:
            if not self.gate.allowed(host, port):
                self._quietly(f"allow:{host}", "dropped %s from %s:%d: not in [sip] allow_from", method, host, port)
                return 1
            ok, note = self.gate.admit(host, port)
            if note:
                log.warning("%s", note)
            if not ok:
                return 1
        refusal = check_request(data, codecs=self.codecs, max_bytes=self.max_bytes, truncated=truncated, req=req)
        if refusal is None and req is not None and req.method == "INVITE" and not in_dialog and self.admission:
            # A new call while the box is full: 486 here, statelessly, before pjsua opens the
            # call's media sockets (a burst of them, even refused, would exhaust pjlib's ioqueue).
            full = self.admission()
            if full:
                self.admission_refused(req, full, host, port)
                self._respond(rdata, Refusal(486, "Busy Here (call limit reached)", f"{full} full"))
                return 1
        if refusal is None:
            if req is not None:
                self._clip_body(rdata, data, req)
                if req.method == "INVITE" and not in_dialog:
                    self._remember_source(req.call_id, host, port)
            return 0
        self.refused += 1
        cid = req.call_id if req is not None else ""
        where = f"{method} from {host}:{port}" + (f" (Call-ID {cid})" if cid else "")
        detail = f": {refusal.detail}" if refusal.detail else ""
        if refusal.code == 0 or method == "ACK":
            log.warning("dropped %s, unanswered%s", where, detail)
            return 1
        log.warning("refused %s with %d %s%s", where, refusal.code, refusal.reason, detail)
        self._respond(rdata, refusal)
        return 1

    def _remember_source(self, call_id: str, host: str, port: int) -> None:
        """Where a new call came from: pjsua2 does not tell ``onIncomingCall``."""
        self._sources[call_id] = (host, port)
        while len(self._sources) > 1024:
            self._sources.pop(next(iter(self._sources)))

    def source_of(self, call_id: str) -> tuple[str, int] | None:
        return self._sources.get(call_id)

    def _clip_body(self, rdata: int, data: bytes, req) -> None:
        """RFC 3261 §18.3: bytes of a datagram past the Content-Length are discarded. pjsip
        takes the whole rest of the datagram as the body (RFC 4475 "dblreq" then fails as a bad
        SDP), so the parsed body's length is cut to Content-Length here — only after checking
        that the pointers read are the ones pjsip set for exactly this message."""
        lengths = req.all("content-length")
        if not lengths or not lengths[0].strip().isdigit():
            return
        clen = int(lengths[0])
        full = len(data) - req.body_offset
        if clen >= full:
            return
        lay = self.layout
        msg = ctypes.c_void_p.from_address(rdata + lay.msg_buf + 2 * _P).value
        if not msg:
            return
        body = ctypes.c_void_p.from_address(msg + _MSG_BODY).value
        buf = ctypes.c_void_p.from_address(rdata + lay.msg_buf).value
        if not body:
            return
        body_data = ctypes.c_void_p.from_address(body + _BODY_DATA).value
        body_len = ctypes.c_uint.from_address(body + _BODY_DATA + _P)
        if body_data == buf + req.body_offset and body_len.value == full:
            body_len.value = clen

    # --- the last word ---------------------------------------------------------------------
    def _on_last(self, rdata) -> int:
        try:
            got = self._read(rdata)
            if got is None:
                return 0
            data, host, port, _ = got
            req = parse_request(data)
            if req is None or req.method == "ACK":
                return 0
            if req.method in DIALOG_ONLY:
                refusal = Refusal(481, "Call/Transaction Does Not Exist", "no such call")
            else:
                refusal = Refusal(405, "Method Not Allowed", "", (("Allow", ", ".join(ALLOW)),))
            self.answered_last += 1
            log.info(
                "answered %s from %s:%d (Call-ID %s) with %d %s: nothing here handles it",
                wire_text(req.method, 20),
                host,
                port,
                req.call_id,
                refusal.code,
                refusal.reason,
            )
            self._respond(rdata, refusal)
            return 1
        except Exception:  # noqa: BLE001
            log.exception("SIP last-word module failed")
            return 0

    def _respond(self, rdata: int, refusal: Refusal) -> None:
        pool = ctypes.c_void_p.from_address(rdata).value  # tp_info.pool, the first field
        head = _HdrHead()
        hdrs = []
        keep = []
        for name, value in warning_headers(refusal):
            n, v = _PjStr.of(name), _PjStr.of(value)
            keep += [n, v]
            h = self.lib.pjsip_generic_string_hdr_create(pool, ctypes.byref(n), ctypes.byref(v))
            if h:
                hdrs.append(h)
        # A circular list: head -> h1 -> ... -> hn -> head (pj_list's layout: prev, next first).
        nodes = [ctypes.addressof(head)] + hdrs
        for i, node in enumerate(nodes):
            nxt, prev = nodes[(i + 1) % len(nodes)], nodes[i - 1]
            ctypes.c_void_p.from_address(node + _P).value = nxt
            ctypes.c_void_p.from_address(node).value = prev
        reason = _PjStr.of(refusal.reason)
        status = self.lib.pjsip_endpt_respond_stateless(
            self.endpt, rdata, refusal.code, ctypes.byref(reason), ctypes.addressof(head), None
        )
        if status != 0:
            log.warning("could not send %d %s (pjsip status %d)", refusal.code, refusal.reason, status)

    def _quietly(self, key: str, fmt: str, *args) -> None:
        """Log a repeated event once a minute per key, not once per datagram."""
        now = self.clock()
        if now - self._quiet.get(key, -_QUIET_S) >= _QUIET_S:
            self._quiet[key] = now
            if len(self._quiet) > 4096:
                self._quiet.clear()
            log.warning(fmt, *args)
