"""SIPp against the real box: run one scenario from tests/sipp/ in the foreground and read back
what it saw.

Every scenario writes its outcomes with ``<log message="call=[call_number] key=value"/>``
actions (for instance ``invite=200``, ``bye=200``, ``hold=recvonly``); ``run_sipp`` returns
them parsed, together with SIPp's exit code and its statistics file, and keeps every SIPp
file (screen, error log, message trace) in the test's own directory:

    run = run_sipp(box, "basic_call.xml", workdir, pause_ms=1000)
    assert run.codes("invite") == ["200"]

SIPp does not have to send RTP: the box does not need audio from a caller. The SDP SIPp offers
points at a UDP socket this module keeps open (and never reads), so the box's RTP lands
somewhere instead of raising ICMP errors.

A test module using this helper is skipped, with a clear reason, when ``sipp`` (Debian
``sip-tester``) is not installed.
"""

from __future__ import annotations

import csv
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .sipkit import free_port

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SIPP = shutil.which("sipp")

# SIPp's exit codes (sipp(1)): anything else is a crash or a bad command line.
EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1
_KNOWN_EXITS = {
    0: "all calls successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    253: "fatal error: cannot bind",
    255: "fatal error",
}


NO_SIPP = "sipp is not installed (Debian package sip-tester); the SIP edge tests need it"
needs_sipp = pytest.mark.skipif(SIPP is None, reason=NO_SIPP)


def require_sipp() -> str:
    if SIPP is None:
        pytest.skip(NO_SIPP)
    return SIPP


@dataclass
class SippRun:
    """What one SIPp run saw."""

    rc: int
    cmd: list[str]
    dir: Path
    stdout: str
    stderr: str
    stats: dict[str, str]
    log: list[dict[str, str]]  # one dict per <log> line: {"call": "1", "invite": "200", ...}
    errors: str  # SIPp's error log: unexpected messages, timeouts
    messages: str  # every SIP message sent and received (-trace_msg)

    @property
    def successful(self) -> int:
        return int(self.stats.get("SuccessfulCall(C)", 0) or 0)

    @property
    def failed(self) -> int:
        return int(self.stats.get("FailedCall(C)", 0) or 0)

    def codes(self, key: str) -> list[str]:
        """Every value logged for ``key`` (e.g. ``invite``), in the order SIPp logged them."""
        return [entry[key] for entry in self.log if key in entry]

    def by_call(self) -> dict[int, dict[str, str]]:
        calls: dict[int, dict[str, str]] = {}
        for entry in self.log:
            calls.setdefault(int(entry["call"]), {}).update({k: v for k, v in entry.items() if k != "call"})
        return calls

    def report(self) -> str:
        """Everything needed to see why a run went wrong, for assertion messages."""
        return (
            f"\n--- sipp {' '.join(self.cmd[1:])}\n--- exit {self.rc} ({_KNOWN_EXITS.get(self.rc, '?')}), "
            f"stats: successful={self.stats.get('SuccessfulCall(C)')} failed={self.stats.get('FailedCall(C)')}"
            f"\n--- logged outcomes: {self.log}"
            f"\n--- sipp error log ({self.dir}):\n{self.errors[-4000:] or '(empty)'}"
            f"\n--- sipp stderr:\n{self.stderr[-1500:]}"
            f"\n--- last SIP messages:\n{self.messages[-3000:]}"
        )


def run_sipp(
    box,
    scenario: str,
    workdir: Path,
    *,
    calls: int = 1,
    limit: int | None = None,
    rate: float | None = None,
    service: str = "48221234567",
    pause_ms: int | None = None,
    timeout: float = 30,
    expect_rc: int | tuple[int, ...] | None = EXIT_ALL_OK,
    extra: tuple[str, ...] = (),
    name: str | None = None,
) -> SippRun:
    """Run ``tests/sipp/<scenario>`` against ``box`` in the foreground and return what it saw.

    ``calls`` is ``-m`` (calls to place, then exit), ``limit`` is ``-l`` (simultaneous calls),
    ``rate`` is ``-r`` (calls per second), ``pause_ms`` is ``-d`` (the length of a bare
    ``<pause/>``), ``timeout`` is SIPp's global ``-timeout`` (and, plus a margin, ours).
    Fails the test with SIPp's error log when the exit code is not ``expect_rc`` (None: any).
    """
    sipp = require_sipp()
    scenario_path = SCENARIOS / scenario
    assert scenario_path.exists(), f"no scenario {scenario_path}"
    name = name or f"sipp-{scenario_path.stem}-{uuid.uuid4().hex[:6]}"
    out = Path(workdir) / name
    out.mkdir(parents=True, exist_ok=True)
    files = {k: out / f"{k}.txt" for k in ("log", "errors", "messages", "screen")}
    stat_file = out / "stat.csv"
    port = free_port()
    cmd = [
        sipp,
        f"127.0.0.1:{box.port}",
        "-sf",
        str(scenario_path),
        "-s",
        service,
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        "u1",
        "-m",
        str(calls),
        "-l",
        str(limit or calls),
        "-r",
        str(rate or 10),
        "-timeout",
        f"{timeout:g}s",
        "-timeout_error",
        "-nostdin",
        "-trace_logs",
        "-log_file",
        str(files["log"]),
        "-trace_err",
        "-error_file",
        str(files["errors"]),
        "-trace_msg",
        "-message_file",
        str(files["messages"]),
        "-trace_screen",
        "-screen_file",
        str(files["screen"]),
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
    ]
    if pause_ms is not None:
        cmd += ["-d", str(pause_ms)]
    cmd += list(extra)
    # The box sends RTP to the port in our SDP: give it a socket that exists.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp_sink:
        rtp_sink.bind(("127.0.0.1", 0))
        cmd += ["-key", "rtp_port", str(rtp_sink.getsockname()[1])]
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, cwd=out, timeout=timeout + 15)
        except subprocess.TimeoutExpired:  # run() has already killed and reaped SIPp
            pytest.fail(
                f"sipp did not finish within {timeout + 15:g} s: {' '.join(cmd)}\n"
                + _read(files["errors"])
                + "\n--- box log:\n"
                + box.log()
            )
    run = SippRun(
        rc=proc.returncode,
        cmd=cmd,
        dir=out,
        stdout=proc.stdout.decode(errors="replace"),
        stderr=proc.stderr.decode(errors="replace"),
        stats=_last_stats(stat_file),
        log=_parse_log(_read(files["log"])),
        errors=_read(files["errors"]),
        messages=_read(files["messages"]),
    )
    (out / "stdout.txt").write_text(run.stdout, encoding="utf-8")
    (out / "stderr.txt").write_text(run.stderr, encoding="utf-8")
    (out / "elapsed.txt").write_text(f"{time.monotonic() - started:.2f}\n", encoding="utf-8")
    if expect_rc is not None:
        wanted = (expect_rc,) if isinstance(expect_rc, int) else tuple(expect_rc)
        if run.rc not in wanted:
            pytest.fail(f"sipp exited with {run.rc}, expected {wanted}" + run.report() + "\n--- box log:\n" + box.log())
    return run


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


_PAIR = re.compile(r"(\w+)=(\S*)")


def _parse_log(text: str) -> list[dict[str, str]]:
    entries = []
    for line in text.splitlines():
        pairs = dict(_PAIR.findall(line))
        if "call" in pairs:
            entries.append(pairs)
    return entries


def _last_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's statistics file (``;``-separated, one header line)."""
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1]))


# --- hand-made datagrams, for requests SIPp would refuse to build -----------------------------


@dataclass
class RawReply:
    lines: list[str] = field(default_factory=list)  # status lines, retransmissions included
    final: str | None = None  # the whole final (non-1xx) response, if any

    @property
    def codes(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines]

    @property
    def final_code(self) -> int | None:
        return int(self.final.split()[1]) if self.final else None


class RawSip:
    """One UDP socket that sends hand-written SIP requests to the box and collects the answers
    carrying the request's Call-ID (other calls' retransmissions are ignored)."""

    SDP = (
        "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=centralka raw test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio {rtp} RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )

    def __init__(self, box, source: str = "127.0.0.1"):
        self.box = box
        self.source = source  # another loopback address (127.0.0.2) is another host to the box
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.port = self.sock.getsockname()[1]
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.sdp = self.SDP.format(rtp=self.rtp.getsockname()[1])

    def close(self):
        self.sock.close()
        self.rtp.close()

    def invite(
        self,
        *,
        user: str = "48221234567",
        body: str | None = None,
        content_length=None,
        call_id: str | None = "",
        to: str | None = None,
        drop: tuple[str, ...] = (),
    ) -> tuple[str, str]:
        """A hand-written INVITE (text, Call-ID). ``content_length`` overrides the true length,
        ``call_id=None`` leaves the header out, ``to`` replaces the whole To line, ``drop`` leaves out
        the named headers."""
        tag = uuid.uuid4().hex
        cid = call_id if call_id else f"{tag}@raw"
        body = self.sdp if body is None else body
        headers = [
            f"Via: SIP/2.0/UDP {self.source}:{self.port};branch=z9hG4bK{tag}",
            f"From: <sip:raw@{self.source}:{self.port}>;tag={tag[:10]}",
            to if to is not None else f"To: <sip:{user}@127.0.0.1:{self.box.port}>",
            f"Call-ID: {cid}" if call_id is not None else None,
            "CSeq: 1 INVITE",
            f"Contact: <sip:raw@{self.source}:{self.port}>",
            "Max-Forwards: 70",
            "Content-Type: application/sdp" if body else None,
            f"Content-Length: {len(body.encode()) if content_length is None else content_length}",
        ]
        headers = [h for h in headers if h and h.split(":", 1)[0] not in drop]
        text = f"INVITE sip:{user}@127.0.0.1:{self.box.port} SIP/2.0\r\n" + "\r\n".join(headers) + "\r\n\r\n" + body
        return text, cid

    def send(self, text: str | bytes, call_id: str, wait: float = 1.5, stop_at_final: bool = False) -> RawReply:
        """Send one request; collect the box's answers for ``call_id`` for ``wait`` seconds (or
        until the final one, with ``stop_at_final``). A final answer to an INVITE is
        acknowledged (and a 200 OK also ended with BYE), as a caller would."""
        return self.burst({"one": (text, call_id)}, wait, stop_at_final=stop_at_final)["one"]

    def burst(self, requests: dict, wait: float = 1.5, stop_at_final: bool = False) -> dict[str, RawReply]:
        """Send every ``name: (text, call_id)`` at once; collect each one's answers (matched by
        Call-ID and the request's CSeq method) for ``wait`` seconds. Bytes are sent as they are."""
        replies, by_cid = {}, {}
        for name, (text, call_id) in requests.items():
            data = text if isinstance(text, bytes) else text.encode()
            replies[name] = RawReply()
            by_cid.setdefault(call_id, []).append((name, data, _cseq_method(data)))
            self.sock.sendto(data, ("127.0.0.1", self.box.port))
        for msg in self._responses(
            set(by_cid), wait, stop=lambda: stop_at_final and all(r.final is not None for r in replies.values())
        ):
            call_id, method = _header(msg, "Call-ID"), (_header(msg, "CSeq") or "").split()[-1:]
            for name, data, sent_method in by_cid.get(call_id, ()):
                if method != [sent_method]:
                    continue  # the answer to our own ACK/BYE, or to another request of this call
                reply = replies[name]
                reply.lines.append(msg.split("\r\n", 1)[0])
                if not msg.startswith("SIP/2.0 1") and reply.final is None:
                    reply.final = msg
                    if sent_method == "INVITE":
                        self._acknowledge(data.decode("latin-1"), msg, call_id)
        return replies

    def invite_then_cancel(self, wait: float = 2.0) -> tuple[int | None, int | None]:
        """An INVITE and, back to back, its CANCEL (the caller gives up at once). Returns the
        final codes of the INVITE and of the CANCEL, told apart by CSeq (they share the branch,
        which is why SIPp cannot tell them apart). The INVITE's final answer is acknowledged."""
        text, call_id = self.invite()
        via, frm, to = _header(text, "Via"), _header(text, "From"), _header(text, "To")
        cancel = (
            f"CANCEL {text.split(' ', 2)[1]} SIP/2.0\r\nVia: {via}\r\nFrom: {frm}\r\nTo: {to}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        self.sock.sendto(text.encode(), ("127.0.0.1", self.box.port))
        self.sock.sendto(cancel.encode(), ("127.0.0.1", self.box.port))
        invite_code = cancel_code = None
        for msg in self._responses(call_id, wait):
            code, method = int(msg.split()[1]), (_header(msg, "CSeq") or "").split()[-1]
            if code < 200:
                continue
            if method == "CANCEL" and cancel_code is None:
                cancel_code = code
            elif method == "INVITE" and invite_code is None:
                invite_code = code
                self._acknowledge(text, msg, call_id)
        return invite_code, cancel_code

    def _responses(self, call_id, wait: float, stop=lambda: False):
        """The box's responses for ``call_id`` (one or a set of them) arriving within ``wait``
        seconds (other calls' retransmissions are skipped)."""
        wanted = {call_id} if isinstance(call_id, str) else set(call_id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not stop():
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                return
            msg = data.decode(errors="replace")
            if msg.startswith("SIP/2.0 ") and _header(msg, "Call-ID") in wanted:
                yield msg

    def _acknowledge(self, request: str, response: str, call_id: str):
        to = _header(response, "To")
        frm = _header(response, "From")
        if response.startswith("SIP/2.0 2"):
            # ACK for a 2xx is its own transaction (with the INVITE's CSeq number); then hang up,
            # so the call ends at once.
            m = re.match(r"\s*(\d+)", _header(response, "CSeq") or "")
            number = int(m.group(1)) if m else 1
            for cseq, method in ((number, "ACK"), (number + 1, "BYE")):
                self.sock.sendto(self._in_dialog(method, cseq, frm, to, call_id).encode(), ("127.0.0.1", self.box.port))
        else:
            via = _header(request, "Via")
            ack = (
                f"ACK sip:x@127.0.0.1:{self.box.port} SIP/2.0\r\nVia: {via}\r\nFrom: {frm}\r\nTo: {to}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            self.sock.sendto(ack.encode(), ("127.0.0.1", self.box.port))

    def _in_dialog(self, method: str, cseq: int, frm: str, to: str, call_id: str) -> str:
        return (
            f"{method} sip:centralka@127.0.0.1:{self.box.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.source}:{self.port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: {frm}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )


def _cseq_method(data: bytes) -> str | None:
    m = re.search(rb"^(?:CSeq)\s*:\s*\d+\s+(\S+)", data, re.M | re.I)
    return m.group(1).decode("latin-1") if m else None


def _header(msg: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}\s*:\s*(.*?)\r?$", msg, re.M | re.I)
    return m.group(1).strip() if m else None
