"""The first look at every SIP request that reaches the core's port, before pjsua sees it.

The core's SIP port is reachable by the trunk provider's network and by every device on the
clinic LAN, so what arrives there is written by strangers. pjsip parses it; this module decides,
from the raw bytes, whether the request may go on, and if not, which answer RFC 3261 / RFC 4475
give it: 400 for a malformed request we can still answer, 415 for a body we do not speak, 416
for a URI scheme we do not serve, 488 when no offered audio stream is usable, 501 for a method
nobody implements, 505 for another SIP version, 513 for a message over the size limit, 403 for
a transfer by REFER or a call takeover by Replaces, and 400 for the INFO bodies that abort pjsua.
Requests pjsip could not parse never get here: pjsip drops them, the RFC's advice for those.

Nothing here imports pjsua2: the checks are plain functions over bytes (tested and fuzzed
without a SIP stack), and ``FloodGate`` is the per-source limit that stands in for Kamailio's
pike on the core's own port. ``sip/guard.py`` feeds both from inside pjsip.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..text import wire_text

log = logging.getLogger("centralka.sip.screen")

# Methods pjsua implements (or answers) for a user agent; anything else known gets 405 later.
ALLOW = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "PRACK", "NOTIFY", "MESSAGE")
# Methods that only make sense inside a call or transaction: without one, 481 (RFC 3261 §12.2.2).
DIALOG_ONLY = {"BYE", "CANCEL", "INFO", "UPDATE", "PRACK", "NOTIFY", "ACK"}
# Methods a SIP element may know (RFC 3261 and its extensions): known but not ours means 405.
KNOWN = set(ALLOW) | {"REGISTER", "SUBSCRIBE", "PUBLISH", "REFER"}
# RFC 3261 §7.3.3 compact header names.
COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "b": "referred-by",
    "x": "session-expires",
}
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_DIGITS = re.compile(r"^[0-9]+$")
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+\-.]*):")
SCHEMES = {"sip", "sips", "tel"}
BAD_START_LINE = "<malformed>"
# Static RTP payload types of the codecs we may offer (RFC 3551).
STATIC_PT = {"pcmu/8000": "0", "pcma/8000": "8"}
MEDIA_PROTOCOLS = {"RTP/AVP", "RTP/AVPF"}


@dataclass(frozen=True)
class Refusal:
    """How to answer a request we will not pass on; ``code`` 0 means drop it silently."""

    code: int
    reason: str
    detail: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def warning_headers(refusal: Refusal) -> tuple[tuple[str, str], ...]:
    """The refusal's headers plus a Warning (RFC 3261 §20.43) saying what was wrong."""
    headers = refusal.headers
    if refusal.detail and not any(n.lower() == "warning" for n, _ in headers):
        text = refusal.detail.replace("\\", "/").replace('"', "'")
        headers = headers + (("Warning", f'399 centralka "{text}"'),)
    return headers


@dataclass
class Request:
    method: str
    uri: str
    version: str
    headers: list[tuple[str, str]]  # (lower-case full name, value), in order, folded lines joined
    body: bytes
    size: int
    had_body_separator: bool
    body_offset: int = 0  # where the body starts in the datagram
    bad_lines: list[str] = field(default_factory=list)  # header lines without a colon

    def get(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def call_id(self) -> str:
        return wire_text(self.get("call-id") or "", 120)

    @property
    def in_dialog(self) -> bool:
        """A To tag means the request belongs to a dialog (RFC 3261 §12.2.2)."""
        to = self.get("to") or ""
        params = to.rsplit(">", 1)[1] if ">" in to else to
        return re.search(r";\s*tag\s*=", params, re.IGNORECASE) is not None


def parse_request(data: bytes) -> Request | None:
    """The request line, headers and body of a SIP request; None for a response or garbage."""
    text = data.decode("latin-1")  # one char per byte: offsets stay byte offsets
    lead = len(text) - len(text.lstrip("\r\n"))  # RFC 3261 §7.5: CRLFs before the start line
    text = text[lead:]
    body_offset = len(data)
    for sep in ("\r\n\r\n", "\n\n"):
        cut = text.find(sep)
        if cut >= 0:
            head, body = text[:cut], text[cut + len(sep) :]
            body_offset = lead + cut + len(sep)
            had_sep = True
            break
    else:
        head, body, had_sep = text, "", False
    lines = re.split(r"\r?\n", head)
    start = lines[0]
    if start.startswith("SIP/") or " " not in start:
        return None  # a response, or not SIP at all
    parts = start.split(" ")
    if len(parts) == 3:
        method, uri, version = parts
    else:
        # Extra or trailing spaces in the request line (RFC 4475 lwsstart, trws): answerable.
        method, uri, version = parts[0], " ".join(parts[1:-1]), BAD_START_LINE
    headers: list[tuple[str, str]] = []
    bad_lines: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            # Folded header line (RFC 3261 §7.3.1): part of the previous value.
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        if ":" not in line:
            bad_lines.append(line)  # pjsip skips such a line and keeps the message: we answer 400
            continue
        name, value = line.split(":", 1)
        name = name.strip().lower()
        headers.append((COMPACT.get(name, name), value.strip()))
    return Request(
        method=method,
        uri=uri,
        version=version,
        headers=headers,
        body=body.encode("latin-1"),
        size=len(data),
        had_body_separator=had_sep,
        body_offset=body_offset,
        bad_lines=bad_lines,
    )


def check_request(
    data: bytes,
    *,
    transport: str = "udp",
    codecs=("PCMA/8000", "PCMU/8000"),
    max_bytes: int = 16384,
    truncated: bool = False,
    req: Request | None = None,
) -> Refusal | None:
    """None when the request may go on to pjsua; otherwise how to refuse it.

    ``truncated`` says the datagram filled pjsip's whole receive buffer (what did not fit is
    lost), which is an oversized message whatever its headers say. ``req`` is ``data`` already
    parsed (the screen parses once).
    """
    req = req or parse_request(data)
    if req is None:
        return Refusal(0, "unparseable", "not a SIP request line")
    if truncated:
        return Refusal(513, "Message Too Large", f"larger than the {req.size}-byte receive buffer")
    if req.size > max_bytes:
        return Refusal(513, "Message Too Large", f"{req.size} bytes, at most {max_bytes}")
    if not _TOKEN.match(req.method):
        return Refusal(400, "Bad Request", "method is not a token")
    if req.version == BAD_START_LINE:
        return Refusal(400, "Bad Request", "malformed request line (spaces)")
    if req.version != "SIP/2.0":
        return Refusal(505, "Version Not Supported", f"version {wire_text(req.version, 20)!r}")
    if req.bad_lines:
        return Refusal(400, "Bad Request", f"header line without a colon: {wire_text(req.bad_lines[0], 40)!r}")
    problem = _cseq_problem(req)
    if problem:
        return Refusal(400, "Bad Request", problem)
    if req.method not in KNOWN:
        return Refusal(501, "Not Implemented", f"method {wire_text(req.method, 20)}", (("Allow", ", ".join(ALLOW)),))
    problem = _framing_problem(req, transport)
    if problem:
        return Refusal(400, "Bad Request", problem)
    if req.body.strip() and req.get("content-type") is None:
        return Refusal(400, "Bad Request", "a body without Content-Type")  # RFC 3261 §7.4.1
    if req.method == "REFER":
        # pjsua accepts a transfer by default and dials the Refer-To itself: anyone in a call
        # could make the box call any number, past the toll-fraud guard. The box transfers by
        # bridging; it never follows a REFER.
        return Refusal(403, "Forbidden", "call transfer by REFER is not accepted here")
    if req.method == "INVITE":
        if req.get("replaces") is not None:
            # RFC 3891: an INVITE with Replaces takes over an existing call — a stranger who
            # learnt a patient's Call-ID and tags could hijack it.
            return Refusal(403, "Forbidden", "Replaces is not accepted here")
        return _check_invite(req, codecs)
    if req.method == "INFO":
        return _check_info(req)
    return None


def _check_info(req: Request) -> Refusal | None:
    """pjsua reads a dtmf-relay body as a C string and steps past its first line's CRLF
    unchecked: "Signal=5" with no CRLF after it, or a NUL byte, makes a length negative and
    pjlib aborts the process (``pj_strstr: Assertion 'str->slen >= 0'``, found by the torture
    suite). Media-control XML is for video, which the box has none of."""
    mtype = (req.get("content-type") or "").split(";", 1)[0].strip().lower()
    if mtype == "application/media_control+xml":
        return Refusal(415, "Unsupported Media Type", "no video here", (("Accept", "application/dtmf-relay"),))
    if mtype != "application/dtmf-relay" or not req.body:
        return None
    if b"\x00" in req.body:
        return Refusal(400, "Bad Request", "a NUL byte in the dtmf-relay body")
    text = req.body.lstrip(b"\r\n")
    if text and not re.match(rb"^[^\r\n]*\r\n", text):
        return Refusal(400, "Bad Request", "a dtmf-relay line without CRLF")
    return None


def _cseq_problem(req: Request) -> str | None:
    cseqs = req.all("cseq")
    if len(cseqs) != 1:
        return "no CSeq header" if not cseqs else "more than one CSeq header"
    parts = cseqs[0].split()
    if len(parts) != 2 or not _DIGITS.match(parts[0]):
        return "malformed CSeq"
    if int(parts[0]) >= 2**31:
        return "CSeq number too large"
    if parts[1] != req.method:
        return f"CSeq method {wire_text(parts[1], 20)} does not match the request's {wire_text(req.method, 20)}"
    return None


def _framing_problem(req: Request, transport: str) -> str | None:
    """RFC 3261 §18.3: over UDP a body shorter than its Content-Length is an error (400);
    bytes past it are discarded. Stream transports are framed by pjsip itself."""
    lengths = req.all("content-length")
    if not lengths:
        return None  # allowed over UDP: the body is the rest of the datagram
    if len({v.strip() for v in lengths}) != 1:
        return "Content-Length given twice with different values"
    value = lengths[0].strip()
    if not _DIGITS.match(value) or len(value) > 9:
        return "Bad Content-Length"
    if transport == "udp" and int(value) > len(req.body):
        return f"Content-Length {int(value)} is past the datagram (a {len(req.body)}-byte body)"
    req.body = req.body[: int(value)]
    return None


def _check_invite(req: Request, codecs) -> Refusal | None:
    m = _URI_SCHEME.match(req.uri)
    if m is None:
        return Refusal(400, "Bad Request", "Request-URI has no scheme")
    if m.group(1).lower() not in SCHEMES:
        return Refusal(416, "Unsupported URI Scheme", f"scheme {wire_text(m.group(1), 20)}")
    if "?" in req.uri:
        # RFC 3261 §19.1.5: headers in a SIP URI are for building a request, never in one.
        return Refusal(400, "Bad Request", "Request-URI carries headers")
    body = req.body
    if not body.strip():
        return None  # no offer: we make one in the 200 OK (a late-offer caller)
    ctype = req.get("content-type") or ""
    encoding = (req.get("content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", ""):
        return Refusal(
            415,
            "Unsupported Media Type",
            f"Content-Encoding {wire_text(encoding, 30)}",
            (("Accept-Encoding", "identity"), ("Accept", "application/sdp")),
        )
    mtype = ctype.split(";", 1)[0].strip().lower()
    if mtype == "multipart/mixed":
        sdp = _sdp_part(body, ctype)
        if sdp is None:
            return Refusal(
                415,
                "Unsupported Media Type",
                "multipart body without application/sdp",
                (("Accept", "application/sdp"),),
            )
        body = sdp
    elif mtype != "application/sdp":
        return Refusal(
            415, "Unsupported Media Type", f"Content-Type {wire_text(mtype, 40)}", (("Accept", "application/sdp"),)
        )
    return check_offer(body, codecs)


def _sdp_part(body: bytes, ctype: str) -> bytes | None:
    m = re.search(r';\s*boundary\s*=\s*"?([^";]+)"?', ctype, re.IGNORECASE)
    if m is None:
        return None
    boundary = b"--" + m.group(1).strip().encode("latin-1")
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        if re.search(rb"content-type\s*:\s*application/sdp", head, re.IGNORECASE):
            return content.rstrip(b"\r\n") + b"\r\n"
    return None


@dataclass
class _Media:
    kind: str
    port: str
    proto: str
    formats: list[str]
    connection: str | None = None
    rtpmap: dict[str, str] = field(default_factory=dict)


def check_offer(sdp: bytes, codecs=("PCMA/8000", "PCMU/8000")) -> Refusal | None:
    """400 for a body that is not SDP; 488 (with the reason) when no audio stream can be used."""
    try:
        text = sdp.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(400, "Bad Request", "SDP is not UTF-8")
    lines = [ln for ln in re.split(r"\r?\n", text) if ln.strip()]
    if not lines or lines[0].strip() != "v=0":
        return Refusal(400, "Bad Request", "SDP does not start with v=0")
    session_c: str | None = None
    media: list[_Media] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            return Refusal(400, "Bad Request", f"SDP line {wire_text(line, 40)!r}")
        key, value = line[0], line[2:].strip()
        if key == "m":
            f = value.split()
            if len(f) < 4:
                return Refusal(400, "Bad Request", f"SDP media line {wire_text(value, 40)!r}")
            media.append(_Media(f[0].lower(), f[1], f[2], f[3:]))
        elif key == "c":
            if media:
                media[-1].connection = value
            else:
                session_c = value
        elif key == "a" and media and value.lower().startswith("rtpmap:"):
            pt, _, enc = value[7:].partition(" ")
            media[-1].rtpmap[pt.strip()] = enc.strip().lower()
    audio = [m for m in media if m.kind == "audio"]
    if not audio:
        return Refusal(
            488,
            "Not Acceptable Here",
            "no audio stream offered",
            (("Warning", '304 centralka "no audio stream offered"'),),
        )
    wanted = [c.lower() for c in codecs]
    reasons = []
    for m in audio:
        why = _unusable(m, session_c, wanted)
        if why is None:
            return None
        reasons.append(why)
    detail = "; ".join(dict.fromkeys(reasons))
    return Refusal(
        488, "Not Acceptable Here", f"no usable audio stream ({detail})", (("Warning", f'305 centralka "{detail}"'),)
    )


def _unusable(m: _Media, session_c: str | None, wanted: list[str]) -> str | None:
    port = m.port.split("/", 1)[0]
    if not _DIGITS.match(port) or not 0 <= int(port) <= 65535:
        return f"bad port {wire_text(m.port, 12)}"
    if int(port) == 0:
        return "stream rejected (port 0)"
    if m.proto not in MEDIA_PROTOCOLS:
        return f"transport {wire_text(m.proto, 20)} not supported"
    conn = m.connection or session_c
    if conn is None:
        return "no connection address"
    f = conn.split()
    if len(f) < 3 or f[0] != "IN":
        return f"connection {wire_text(conn, 40)!r} not understood"
    if f[1] != "IP4":
        return f"address type {wire_text(f[1], 8)} not supported"
    try:
        ipaddress.IPv4Address(f[2].split("/", 1)[0])
    except ValueError:
        return f"connection address {wire_text(f[2], 40)!r} is not an IPv4 address"
    for pt in m.formats:
        enc = m.rtpmap.get(pt)
        if enc is None:
            enc = next((name for name, num in STATIC_PT.items() if num == pt), None)
        if enc is not None and "/".join(enc.split("/")[:2]) in wanted:
            return None
    return "no common codec"


class FloodGate:
    """Pike's rule for the core's own port: a source that sends more than ``max_requests`` new
    requests within ``window_s`` seconds is banned for ``ban_s`` seconds (its new requests are
    dropped unanswered; requests inside a dialog it already has still pass, so a call in
    progress is not cut). Trusted sources (the trunk provider, our Kamailio) are never limited.
    Memory is bounded: at most ``max_sources`` sources are remembered."""

    def __init__(
        self,
        *,
        window_s: float = 2.0,
        max_requests: int = 30,
        ban_s: float = 300.0,
        trusted=(),
        allow_from=(),
        clock=time.monotonic,
        max_sources: int = 4096,
    ):
        self.window_s = window_s
        self.max_requests = max_requests
        self.ban_s = ban_s
        self.clock = clock
        self.max_sources = max_sources
        self._trusted_hosts: set[str] = set()
        self._trusted_pairs: set[tuple[str, int]] = set()
        for entry in trusted:
            self.trust(entry)
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow_from]
        self._seen: OrderedDict[str, list[float]] = OrderedDict()  # source -> [window start, count]
        self.banned: dict[str, float] = {}  # source -> ban ends at
        self.dropped = 0

    def trust(self, entry: str, port: int | None = None) -> None:
        """Trust a source: ``"1.2.3.4"`` (any port) or ``"1.2.3.4:5070"`` / ``port``."""
        host, _, p = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if port is None and p.isdigit():
            port = int(p)
        host = host or entry
        if port:
            self._trusted_pairs.add((host, int(port)))
        else:
            self._trusted_hosts.add(host)

    def is_trusted(self, host: str, port: int) -> bool:
        return host in self._trusted_hosts or (host, port) in self._trusted_pairs

    def allowed(self, host: str, port: int) -> bool:
        """The allow-list ([sip] allow_from): empty means every source may call."""
        if not self.allow or self.is_trusted(host, port):
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.allow)

    def admit(self, host: str, port: int) -> tuple[bool, str | None]:
        """(pass?, a log line when something changed: a ban starts)."""
        if self.is_trusted(host, port):
            return True, None
        now = self.clock()
        ends = self.banned.get(host)
        if ends is not None:
            if now < ends:
                self.dropped += 1
                return False, None
            del self.banned[host]
        slot = self._seen.get(host)
        if slot is None or now - slot[0] >= self.window_s:
            slot = [now, 0]
            self._seen[host] = slot
        self._seen.move_to_end(host)
        slot[1] += 1
        while len(self._seen) > self.max_sources:
            self._seen.popitem(last=False)
        if slot[1] > self.max_requests:
            self.banned[host] = now + self.ban_s
            self._seen.pop(host, None)
            if len(self.banned) > self.max_sources:
                oldest = min(self.banned, key=self.banned.get)
                del self.banned[oldest]
            self.dropped += 1
            return False, (
                f"banned {host} for {self.ban_s:.0f} s: more than {self.max_requests} new "
                f"requests in {self.window_s:g} s"
            )
        return True, None


def sip_hosts(uri: str, timeout: float = 3.0) -> list[str]:
    """The IP addresses behind a SIP URI's host (``sip:sip.operator.pl:5060;transport=udp``).

    Resolved once, at start, within ``timeout`` (a dead resolver must not hold up the box);
    a provider whose addresses change is better listed in ``[sip] trusted_sources``."""
    m = re.match(r"^\s*(?:sips?:)?(?:[^@]*@)?(\[[^\]]+\]|[^:;>\s]+)", uri or "")
    if not m:
        return []
    host = m.group(1).strip("[]")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    got: dict = {}

    def resolve():
        try:
            got["infos"] = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
        except OSError as exc:
            got["error"] = exc

    # A daemon thread: a resolver that never answers must not hold up the box, nor its exit.
    worker = threading.Thread(target=resolve, name="resolve-trunk", daemon=True)
    worker.start()
    worker.join(timeout)
    if "infos" not in got:
        why = got.get("error") or f"no answer within {timeout:g} s"
        log.warning("cannot resolve %s (%s): its requests are limited like anyone's", host, why)
        return []
    return sorted({info[4][0] for info in got["infos"]})
