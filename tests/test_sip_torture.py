"""Hostile and malformed SIP at the core's own port, as a stranger on the LAN or the provider's
network would send it (issue 9).

The messages are written here after the RFC 4475 torture cases (named after them) and after
what once aborted the whole core: an INVITE whose Content-Length runs past the datagram, a
From display name that is not UTF-8, a 60 kB header while the box was full. Addresses are
loopback (the RFC's use 192.0.2.x). What a caller or an admin would notice is asserted: the
answer each message gets, that nothing answers a broken request with 200, that no call leg or
call row is left behind, that the box's log names every refused message in one line, and that
a real caller still gets through the menu to a human afterwards.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
import uuid

import pytest

from .sipkit import Phone, wait_for
from .sippkit import RawSip, needs_sipp

pytestmark = [pytest.mark.sip, needs_sipp]

# The torture box trusts loopback, so that hundreds of datagrams from one test socket are
# screened one by one instead of being cut off as a flood (test_flood_* keeps the limit on).
TRUSTING = 'trusted_sources = ["127.0.0.1"]'


@pytest.fixture
def tbox(make_box, staff):
    return make_box(staff=staff, settings=TRUSTING)


def sdp(rtp: int, *, audio: str | None = None, conn: str = "IN IP4 127.0.0.1") -> str:
    media = audio or f"m=audio {rtp} RTP/AVP 8 0 101"
    return (
        f"v=0\r\no=torture 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc={conn}\r\nt=0 0\r\n{media}\r\n"
        "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )


class Msg:
    """Hand-written requests to one box from one ``RawSip`` socket, each with a fresh Call-ID."""

    def __init__(self, raw: RawSip):
        self.raw = raw
        self.box = f"127.0.0.1:{raw.box.port}"
        self.me = f"{raw.source}:{raw.port}"
        self.rtp = raw.rtp.getsockname()[1]

    def make(
        self,
        start: str,
        headers: list[str],
        body: str | bytes = "",
        *,
        clen: str | int | None = "auto",
        call_id: str | None = None,
    ) -> tuple[bytes, str]:
        cid = call_id or f"{uuid.uuid4().hex}@torture"
        tag = uuid.uuid4().hex[:10]
        branch = "z9hG4bK" + uuid.uuid4().hex
        fill = {"box": self.box, "me": self.me, "cid": cid, "tag": tag, "branch": branch}
        raw_body = body if isinstance(body, bytes) else body.encode()
        lines = [start.format(**fill)] + [h.format(**fill) for h in headers]
        if clen == "auto":
            lines.append(f"Content-Length: {len(raw_body)}")
        elif clen is not None:
            lines.append(f"Content-Length: {clen}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + raw_body, cid

    def base(self, method: str, *, ctype: bool = True) -> list[str]:
        h = [
            "Via: SIP/2.0/UDP {me};branch={branch};rport",
            'From: "Torture" <sip:600123456@{me}>;tag={tag}',
            "To: <sip:48221234567@{box}>",
            "Call-ID: {cid}",
            f"CSeq: 1 {method}",
            "Max-Forwards: 70",
            "Contact: <sip:torture@{me}>",
        ]
        return h + (["Content-Type: application/sdp"] if ctype else [])

    def named_invite(self, display_name: str) -> tuple[bytes, str]:
        """An INVITE whose From display name is ``display_name``, byte for byte (latin-1)."""
        headers = [h.replace('"Torture"', f'"{display_name}"') for h in self.base("INVITE")]
        return self.make("INVITE sip:48221234567@{box} SIP/2.0", headers, sdp(self.rtp))

    def invite(self, **kw) -> tuple[bytes, str]:
        return self.make("INVITE sip:48221234567@{box} SIP/2.0", self.base("INVITE"), sdp(self.rtp), **kw)


# --- the messages ------------------------------------------------------------------------------


def wellformed(m: Msg) -> dict[str, tuple[bytes, str]]:
    """Odd but valid: each must get the answer a normal request gets (200; 501 for the odd
    method, which is valid syntax that nobody implements)."""
    s = sdp(m.rtp)
    return {
        "wsinv: short tortuous INVITE": m.make(
            "INVITE sip:vivekg@{box};unknownparam SIP/2.0",
            # (The RFC's To carries a tag too; at a user agent that makes it a re-INVITE of an
            # unknown dialog, answered 481: left out so the tortuous rest is really parsed.)
            [
                "TO :\r\n sip:vivekg@{box} ;   unknownparam    = 1918181833n",
                'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@{me}>\r\n  ;\r\n  tag = 98asjd8',
                "MaX-fOrWaRdS: 0068",
                "Call-ID: {cid}",
                "Content-Length   : " + str(len(s)),
                "cseq: 0009\r\n  INVITE",
                "Via  : SIP  /   2.0\r\n /UDP\r\n    {me};branch=0{branch}",
                "s :",
                "NewFangledHeader:   newfangled value\r\n continued newfangled value",
                "UnknownHeaderWithUnusualValue: ;;,,;;,;",
                "Content-Type: application/sdp",
                "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n"
                " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239",
                'm:"Quoted string \\"\\"" <sip:jdrosen@{me}> ; newparam =\r\n      newvalue ;\r\n'
                "  secondparam ; q = 0.33",
            ],
            s,
            clen=None,
        ),
        "intmeth: a method of unusual token characters": m.make(
            "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
            ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@{box} SIP/2.0",
            [
                "Via: SIP/2.0/UDP {me};branch={branch}",
                "To: <sip:48221234567@{box}>",
                "From: <sip:torture@{me}>;tag={tag}",
                "Call-ID: {cid}",
                "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~",
                "Max-Forwards: 255",
            ],
        ),
        "esc01: escaped characters in the Request-URI": m.make(
            "INVITE sip:sips%3Auser%40example.com@{box} SIP/2.0",
            m.base("INVITE")[:2]
            + [
                "To: sip:%61lice@{box}",
                "Call-ID: {cid}",
                "CSeq: 1 INVITE",
                "Max-Forwards: 70",
                "Contact: <sip:torture@{me}>",
                "Content-Type: application/sdp",
            ],
            s,
        ),
        "escnull: escaped nulls in URIs": m.make(
            "INVITE sip:null-%00-null@{box} SIP/2.0",
            [
                "Via: SIP/2.0/UDP {me};branch={branch}",
                "From: sip:null-%00-null@{me};tag={tag}",
                "To: sip:null-%00-null@{box}",
                "Call-ID: {cid}",
                "CSeq: 1 INVITE",
                "Max-Forwards: 70",
                "Contact: <sip:null-%00-null@{me}>",
                "Content-Type: application/sdp",
            ],
            s,
        ),
        "lwsdisp: no space between display name and <": m.make(
            "OPTIONS sip:user@{box} SIP/2.0",
            [
                "To: sip:user@{box}",
                "From: caller<sip:caller@{me}>;tag={tag}",
                "Max-Forwards: 70",
                "Call-ID: {cid}",
                "CSeq: 3882 OPTIONS",
                "Via: SIP/2.0/UDP {me};branch={branch}",
            ],
        ),
        "longreq: long values in header fields": m.make(
            "INVITE sip:48221234567@{box} SIP/2.0",
            [
                'To: "I have a user name of ' + "extreme" * 40 + ' proportion" <sip:48221234567@{box}>',
                "From: sip:torture@{me};tag=" + "12982" * 60 + "424",
                "Call-ID: {cid}",
                "CSeq: 1 INVITE",
                "Max-Forwards: 70",
                "Via: SIP/2.0/UDP {me};branch={branch}" + "bbbb" * 40,
                "Contact: <sip:torture@{me}>",
                "Content-Type: application/sdp",
                "X-Long-Unknown: " + "reallylongvalue" * 60,
            ],
            s,
        ),
        "dblreq: extra octets after the body": m.make(
            "INVITE sip:48221234567@{box} SIP/2.0",
            m.base("INVITE"),
            s.encode() + b"INVITE sip:joe@example.com SIP/2.0\r\nExtra: trailing octets\r\n\r\n",
            clen=len(s),
        ),
        "semiuri: semicolons in the user part": m.make(
            "OPTIONS sip:user;par=u%40example.net@{box} SIP/2.0",
            [
                "To: sip:j_user@{box}",
                "From: sip:caller@{me};tag={tag}",
                "Max-Forwards: 70",
                "Call-ID: {cid}",
                "CSeq: 26 OPTIONS",
                "Via: SIP/2.0/UDP {me};branch={branch}",
            ],
        ),
        "transports: unknown transports further down the Via": m.make(
            "OPTIONS sip:user@{box} SIP/2.0",
            [
                "To: sip:user@{box}",
                "From: <sip:caller@{me}>;tag={tag}",
                "Max-Forwards: 70",
                "Call-ID: {cid}",
                "CSeq: 777 OPTIONS",
                "Via: SIP/2.0/UDP {me};branch={branch}",
                "Via: SIP/2.0/SCTP t1.example.com;branch=z9hG4bKklasjdhf",
                "Via: SIP/2.0/TLS t2.example.com;branch=z9hG4bK2980unddj",
                "Via: SIP/2.0/UNKNOWN t3.example.com;branch=z9hG4bKasd0f3en",
            ],
        ),
        "mpart01: multipart body with SDP": m.make(
            "INVITE sip:48221234567@{box} SIP/2.0",
            m.base("INVITE", ctype=False) + ['Content-Type: multipart/mixed;boundary="7a9cbec02ceef655"'],
            "--7a9cbec02ceef655\r\nContent-Type: application/sdp\r\n\r\n"
            + s
            + "\r\n--7a9cbec02ceef655\r\nContent-Type: text/plain\r\n\r\nHello from a patient.\r\n"
            "--7a9cbec02ceef655--\r\n",
        ),
        "zeromf: Max-Forwards 0 at the user agent": m.make(
            "OPTIONS sip:user@{box} SIP/2.0",
            [
                "To: sip:user@{box}",
                "From: <sip:caller@{me}>;tag={tag}",
                "Max-Forwards: 0",
                "Call-ID: {cid}",
                "CSeq: 14 OPTIONS",
                "Via: SIP/2.0/UDP {me};branch={branch}",
            ],
        ),
        "cparam01: media type with parameters": m.make(
            "INVITE sip:48221234567@{box} SIP/2.0",
            m.base("INVITE", ctype=False) + ["Content-Type: application/sdp; charset=ISO-10646"],
            s,
        ),
        "ncl: no Content-Length over UDP": m.make(
            "INVITE sip:48221234567@{box} SIP/2.0", m.base("INVITE"), s, clen=None
        ),
        "novelsc: a novel scheme in To": m.make(
            "OPTIONS sip:user@{box} SIP/2.0",
            [
                "To: soap.beep://192.0.2.103:3002",
                "From: <sip:caller@{me}>;tag={tag}",
                "Max-Forwards: 70",
                "Call-ID: {cid}",
                "CSeq: 3 OPTIONS",
                "Via: SIP/2.0/UDP {me};branch={branch}",
            ],
        ),
        "hostile display name: bytes that are not UTF-8": m.named_invite("Zdzis\xb3aw \xff\xfe\xc3("),
        "an INVITE with no offer (late offer)": m.make(
            "INVITE sip:48221234567@{box} SIP/2.0", m.base("INVITE", ctype=False), ""
        ),
    }


WELLFORMED_ANSWER = {"intmeth: a method of unusual token characters": 501}


def malformed(m: Msg) -> dict[str, tuple[tuple[bytes, str], set]]:
    """Broken: each with the answers RFC 3261 / 4475 allow (None: dropped unanswered, which is
    right only for what cannot be parsed into a request at all)."""
    s = sdp(m.rtp)
    base = m.base("INVITE")
    inv = "INVITE sip:48221234567@{box} SIP/2.0"
    no_ct = [h for h in base if not h.startswith("Content-Type")]
    return {
        # The three datagrams that once aborted the core.
        "Content-Length 99999999 past the datagram": (m.make(inv, base, s, clen=99999999), {400}),
        "Content-Length 99999999, no body": (m.make(inv, no_ct, "", clen=99999999), {400}),
        "a 60 kB header": (m.make(inv, base + ["X-Padding: " + "x" * 60000], s), {513}),
        # The other findings.
        "garbage SDP: IP9 address, port 99999999": (
            m.make(inv, base, sdp(m.rtp, audio="m=audio 99999999 RTP/AVP 8", conn="IN IP9 zz")),
            {488},
        ),
        "the only stream has port 0": (m.make(inv, base, sdp(m.rtp, audio="m=audio 0 RTP/AVP 8 0")), {488}),
        "unknown media transport": (m.make(inv, base, sdp(m.rtp, audio=f"m=audio {m.rtp} RTP/XYZ 8")), {488}),
        "no common codec": (m.make(inv, base, sdp(m.rtp, audio=f"m=audio {m.rtp} RTP/AVP 18 4")), {488}),
        "sdp01: no audio stream, only video": (
            m.make(inv, base, sdp(m.rtp, audio=f"m=video {m.rtp} RTP/AVP 31")),
            {488},
        ),
        "an SDP body without Content-Type": (m.make(inv, no_ct, s), {400}),
        "a body that is not SDP": (m.make(inv, no_ct + ["Content-Type: text/plain"], "Hello"), {415}),
        "an unknown method": (
            m.make("FOO sip:x@{box} SIP/2.0", [h.replace("1 INVITE", "1 FOO") for h in no_ct]),
            {501},
        ),
        # RFC 4475 §3.1.2, invalid messages.
        "mismatch01: CSeq method disagrees": (m.make(inv.replace("INVITE", "OPTIONS", 1), no_ct), {400}),
        "mismatch02: unknown method, CSeq disagrees": (m.make("NEWMETHOD sip:x@{box} SIP/2.0", base, s), {400}),
        "badvers: SIP/7.0": (
            m.make("OPTIONS sip:t.watson@{box} SIP/7.0", [h.replace("1 INVITE", "1 OPTIONS") for h in no_ct]),
            {505, None},
        ),
        "clerr: Content-Length larger than the message": (m.make(inv, base, s, clen=9999), {400}),
        "scalar02: negative Content-Length": (m.make(inv, base, s, clen=-999), {400, None}),
        "scalarlg: overlarge CSeq": (
            m.make(inv, [h.replace("CSeq: 1 ", "CSeq: 36893488147419103232 ") for h in base], s),
            {400, None},
        ),
        "mcl01: two different Content-Lengths": (m.make(inv, base + ["Content-Length: 3"], s), {400, None}),
        "lwsstart: two spaces in the request line": (
            m.make("INVITE  sip:48221234567@{box} SIP/2.0", base, s),
            {400, None},
        ),
        "trws: a space at the end of the request line": (m.make(inv + " ", base, s), {400, None}),
        "ltgtruri: <> around the Request-URI": (m.make("INVITE <sip:48221234567@{box}> SIP/2.0", base, s), {400, None}),
        "lwsruri: a space inside the Request-URI": (
            m.make("INVITE sip:user@example.com; lr SIP/2.0", base, s),
            {400, None},
        ),
        "escruri: headers in the Request-URI": (
            m.make("INVITE sip:user@{box}?Route=%3Csip:example.com%3E SIP/2.0", base, s),
            {400},
        ),
        "unksm: unknown Request-URI scheme": (m.make("INVITE nobodyhome:sip@{box} SIP/2.0", base, s), {416, 400, None}),
        "quotbal: unterminated quote in the display name": (
            m.make(inv, [h.replace('"Torture"', '"Torture') for h in base], s),
            {400, None},
        ),
        "insuf: no Call-ID, From or To": (
            m.make(inv, [h for h in base if h.split(":")[0] not in ("Call-ID", "From", "To")], s),
            {None},
        ),
        "badinv01: separators galore": (
            m.make(
                inv,
                [
                    "Via: SIP/2.0/UDP {me};;,;,,",
                    "From: <sip:x@{me}>;;,;tag={tag}",
                    "To: <sip:48221234567@{box}>;;,;,,",
                    "Call-ID: {cid}",
                    "CSeq: 1 INVITE",
                    "Max-Forwards: 80",
                    "Content-Type: application/sdp",
                ],
                s,
            ),
            {400, None},
        ),
        "a REGISTER at a user agent": (
            m.make("REGISTER sip:{box} SIP/2.0", [h.replace("1 INVITE", "1 REGISTER") for h in no_ct]),
            {405},
        ),
        "a BYE for no call": (
            m.make(
                "BYE sip:x@{box} SIP/2.0",
                [
                    h.replace("1 INVITE", "1 BYE").replace(
                        "<sip:48221234567@{box}>", "<sip:48221234567@{box}>;tag=nope"
                    )
                    for h in no_ct
                ],
            ),
            {481},
        ),
    }


def log_names(box, call_id: str) -> bool:
    """The box's log has a line naming this refused message (by its Call-ID)."""
    return any(
        call_id in line
        for line in box.stderr_path.read_text(errors="replace").splitlines()
        if re.search(r"refused|dropped|answered|call limit", line)
    )


def box_answers_options(box, raw: RawSip) -> int | None:
    """OPTIONS as a user agent sends it: retransmitted (same branch) until answered, 4 s at most."""
    m = Msg(raw)
    text, cid = m.make(
        "OPTIONS sip:check@{box} SIP/2.0", [h.replace("1 INVITE", "1 OPTIONS") for h in m.base("INVITE", ctype=False)]
    )
    for _ in range(8):
        code = raw.send(text, cid, wait=0.5, stop_at_final=True).final_code
        if code is not None:
            return code
    return None


def no_leftover_legs(box, timeout: float = 90.0) -> dict:
    """Every leg is given back. A mutant INVITE whose 200 OK went where the fuzzer does not
    listen (its Via was mutated) is a call nobody acknowledges: pjsip's timers end it (64 x T1
    for the missing ACK, then the BYE's own), which is why the wait is long."""
    deadline = time.monotonic() + timeout
    while True:
        status = box.status()
        if status["legs_in_use"] == 0 and status["calls_active"] == 0 and status["pjsua_calls"] == 0:
            return status
        if time.monotonic() > deadline:
            open_calls = [
                (c, [(j["at"], j["step"], j["node"], j["detail"]) for j in box.journey(c["id"])])
                for c in box.calls()
                if not c["ended_at"]
            ]
            raise AssertionError(f"legs left after {timeout} s: {status['legs']}\nopen calls: {open_calls}")
        time.sleep(0.5)


def caller_reaches_a_human(box, staff, workdir) -> None:
    """A real pjsua2 caller: greeting, key 0, the operator's phone rings and answers."""
    caller = Phone(workdir, f"caller-{uuid.uuid4().hex[:6]}", answer_after=-1)
    try:
        caller.call(box.uri("600123456"))
        caller.wait("confirmed", timeout=15)
        time.sleep(1.0)
        key_0_reaches_the_operator(caller, staff)
    finally:
        caller.stop()


def key_0_reaches_the_operator(caller, staff) -> None:
    """The caller, in the menu, presses 0: the operator's phone rings and answers; then hang up."""
    staff.forget_past()
    caller.press("0")
    ring = staff.wait("incoming", timeout=30)
    assert ring["user"] == "operator", ring
    staff.wait("confirmed", timeout=15)
    caller.hangup()
    caller.wait("disconnected", timeout=15)


# --- the tests ---------------------------------------------------------------------------------


def test_the_datagrams_that_aborted_the_core_are_refused_and_it_keeps_answering(tbox, staff, workdir):
    raw = RawSip(tbox)
    try:
        m = Msg(raw)
        cases = {
            name: msg
            for name, (msg, _) in malformed(m).items()
            if name
            in ("Content-Length 99999999 past the datagram", "Content-Length 99999999, no body", "a 60 kB header")
        }
        text, cid = m.named_invite("\xff\xfe\xc3(")
        replies = {name: raw.send(t, c, wait=3, stop_at_final=True) for name, (t, c) in cases.items()}
        name_reply = raw.send(text, cid, wait=3, stop_at_final=True)
    finally:
        raw.close()
    assert {n: r.final_code for n, r in replies.items()} == {
        "Content-Length 99999999 past the datagram": 400,
        "Content-Length 99999999, no body": 400,
        "a 60 kB header": 513,
    }
    assert "Warning: 399 centralka" in replies["Content-Length 99999999 past the datagram"].final
    # The caller with a name that is not UTF-8 is a caller like any other: answered, stored.
    assert name_reply.final_code == 200, name_reply.lines
    assert tbox.proc.poll() is None, tbox.log()
    call = tbox.wait_call_ended()
    assert call["caller"] == "+48600123456" and call["ended_by"] == "caller", call
    assert len(tbox.calls()) == 1, tbox.calls()
    caller_reaches_a_human(tbox, staff, workdir)


def test_wellformed_but_odd_messages_still_work(tbox, staff, workdir):
    raw = RawSip(tbox)
    try:
        messages = wellformed(Msg(raw))
        # One at a time: each INVITE becomes a call (the flow answers it; we hang up at once).
        replies = {name: raw.send(text, cid, wait=4, stop_at_final=True) for name, (text, cid) in messages.items()}
        wait_for(
            lambda: tbox.status()["legs_in_use"] == 0 and all(c["ended_at"] for c in tbox.calls()), 15, "calls ended"
        )
    finally:
        raw.close()
    wrong = {n: r.lines for n, r in replies.items() if r.final_code != WELLFORMED_ANSWER.get(n, 200)}
    assert not wrong, f"odd but valid messages answered wrongly: {wrong}\n{tbox.log()}"
    invites = [n for n, (t, _) in messages.items() if t.startswith(b"INVITE")]
    calls = tbox.calls()
    assert len(calls) == len(invites), calls
    assert all(c["answered_at"] and c["ended_by"] == "caller" for c in calls), calls
    assert tbox.proc.poll() is None


def test_malformed_requests_get_the_rfc_answer_and_leave_nothing_behind(tbox, staff, workdir):
    raw = RawSip(tbox)
    try:
        cases = malformed(Msg(raw))
        replies = raw.burst({name: msg for name, (msg, _) in cases.items()}, wait=3)
        assert box_answers_options(tbox, raw) == 200
    finally:
        raw.close()
    wrong = {n: (r.lines, sorted(cases[n][1], key=str)) for n, r in replies.items() if r.final_code not in cases[n][1]}
    assert not wrong, f"answered otherwise than the RFCs say (got, allowed): {wrong}"
    assert not [n for n, r in replies.items() if any(c == 100 or 200 <= c < 300 for c in r.codes)], (
        "a broken request was taken for a call"
    )
    status = no_leftover_legs(tbox, timeout=5)
    assert status["calls_active"] == 0 and status["sip_guard"]["active"] is True, status["sip_guard"]
    assert tbox.calls() == [], "a refused request left a call row"
    # (pjsip's own 481 for a request in a dialog that does not exist is routine, not logged.)
    unnamed = [n for n, r in replies.items() if r.final_code not in (None, 481) and not log_names(tbox, cases[n][0][1])]
    assert not unnamed, f"refused without a log line naming it: {unnamed}\n{tbox.log()}"
    caller_reaches_a_human(tbox, staff, workdir)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    # Mostly one change: a message pjsip can still parse reaches the screen and pjsua.
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        pos = rng.randrange(len(out) + 1)
        op = rng.random()
        if op < 0.3 and out:
            out[pos % len(out)] = rng.randrange(256)
        elif op < 0.5:
            out[pos:pos] = rng.choice(
                [
                    b"\r\n",
                    b"\r\n\r\n",
                    b":",
                    b";",
                    b",",
                    b" ",
                    b"<",
                    b">",
                    b'"',
                    b"%00",
                    b"\xff\xfe",
                    b"\xc3\xb3",
                    b";tag=x",
                    b"0" * rng.randint(1, 30),
                    b"Content-Length: 99999\r\n",
                    b"m=audio 0 RTP/AVP 8\r\n",
                ]
            )
        elif op < 0.7:
            del out[pos : pos + rng.randint(1, 60)]
        elif op < 0.85:
            # Duplicate a line somewhere else.
            lines = bytes(out).split(b"\r\n")
            if len(lines) > 2:
                lines.insert(rng.randrange(len(lines)), rng.choice(lines))
                out = bytearray(b"\r\n".join(lines))
        else:
            # Swap two lines.
            lines = bytes(out).split(b"\r\n")
            if len(lines) > 2:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                out = bytearray(b"\r\n".join(lines))
    return bytes(out)


def fuzz_seeds(m: Msg) -> list[bytes]:
    """Valid INVITE, ACK, BYE, CANCEL, OPTIONS, INFO and re-INVITE messages to mutate."""
    s = sdp(m.rtp)
    dialog = [h.replace("<sip:48221234567@{box}>", "<sip:48221234567@{box}>;tag=fuzz") for h in m.base("INVITE")]
    no_ct = [h for h in m.base("INVITE") if not h.startswith("Content-Type")]

    def as_(method, headers, cseq="2"):
        return [h.replace("CSeq: 1 INVITE", f"CSeq: {cseq} {method}") for h in headers]

    info = "Signal=5\r\nDuration=160\r\n"
    return [
        m.invite()[0],
        m.make("ACK sip:48221234567@{box} SIP/2.0", as_("ACK", [h for h in dialog if "Content-Type" not in h], "1"))[0],
        m.make("BYE sip:48221234567@{box} SIP/2.0", as_("BYE", [h for h in dialog if "Content-Type" not in h]))[0],
        m.make("CANCEL sip:48221234567@{box} SIP/2.0", as_("CANCEL", no_ct, "1"))[0],
        m.make("OPTIONS sip:48221234567@{box} SIP/2.0", as_("OPTIONS", no_ct))[0],
        m.make(
            "INFO sip:48221234567@{box} SIP/2.0",
            as_("INFO", [h for h in dialog if "Content-Type" not in h]) + ["Content-Type: application/dtmf-relay"],
            info,
        )[0],
        m.make("INVITE sip:48221234567@{box} SIP/2.0", as_("INVITE", dialog), s)[0],
    ]


def open_dialog(raw: RawSip) -> tuple[str, str, str] | None:
    """A real call from the fuzzer's socket: INVITE, its 200 OK, the ACK. Returns From, To,
    Call-ID; None when the box is full (486: mutants' calls still hold the legs)."""
    text, cid = raw.invite()
    raw.sock.setblocking(True)
    raw.sock.sendto(text.encode(), ("127.0.0.1", raw.box.port))
    final = next((m for m in raw._responses(cid, 5) if not m.startswith("SIP/2.0 1")), None)
    if final is None:
        return None
    if not final.startswith("SIP/2.0 200"):
        raw._acknowledge(text, final, cid)
        return None
    ok = final
    frm = re.search(r"^From:\s*(.*?)\r$", ok, re.M).group(1)
    to = re.search(r"^To:\s*(.*?)\r$", ok, re.M).group(1)
    raw.sock.sendto(raw._in_dialog("ACK", 1, frm, to, cid).encode(), ("127.0.0.1", raw.box.port))
    return frm, to, cid


def in_dialog_seeds(raw: RawSip, m: Msg, dialog: tuple[str, str, str]) -> list[bytes]:
    """INFO (DTMF), re-INVITE, UPDATE and BYE inside a call the box really has: the mutants
    reach pjsua's in-dialog handlers (a dtmf-relay body without CRLF once aborted the core)."""
    frm, to, cid = dialog

    def req(method: str, cseq: int, ctype: str = "", body: str = "") -> bytes:
        head = raw._in_dialog(method, cseq, frm, to, cid)
        if body:
            head = head.replace("Content-Length: 0\r\n", f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n")
        return head.encode() + body.encode()

    return [
        req("INFO", 2, "application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
        req("INFO", 3, "application/dtmf-relay", "Signal=#\r\nDuration=100\r\n"),
        req("INVITE", 4, "application/sdp", sdp(m.rtp).replace("a=rtpmap:101", "a=sendonly\r\na=rtpmap:101")),
        req("UPDATE", 5, "application/sdp", sdp(m.rtp)),
        req("BYE", 6),
    ]


@pytest.mark.long
def test_a_seeded_mutation_fuzzer_never_takes_the_box_down(tbox, staff, workdir):
    rng = random.Random(20261203)
    raw = RawSip(tbox)
    sent = 0
    answered_2xx = []
    try:
        m = Msg(raw)
        seeds = fuzz_seeds(m)
        raw.sock.setblocking(False)
        for burst in range(60):
            # Bursts of 50: a bigger one overflows the box's socket buffer in the kernel, and what
            # is dropped there tests nothing. The OPTIONS after each burst paces the next. Every
            # third burst also mutates requests inside a real call.
            dialog = open_dialog(raw) if burst % 3 == 0 else None
            pool = seeds + (in_dialog_seeds(raw, m, dialog) * 2 if dialog else [])
            raw.sock.setblocking(False)
            for _ in range(50):
                data = mutate(rng, rng.choice(pool))
                raw.sock.sendto(data, ("127.0.0.1", tbox.port))
                sent += 1
                # Read what came back so far: acknowledge and hang up any call a mutant started.
                answered_2xx += drain(raw, tbox)
            raw.sock.setblocking(True)
            if dialog:
                frm, to, cid = dialog
                raw.sock.sendto(raw._in_dialog("BYE", 100, frm, to, cid).encode(), ("127.0.0.1", tbox.port))
            assert tbox.proc.poll() is None, f"the box died in burst {burst}:\n{tbox.log()}"
            assert box_answers_options(tbox, raw) == 200, f"no OPTIONS answer after burst {burst}"
            if burst == 29:
                # Half way: every leg given back, and a real caller reaches a human.
                no_leftover_legs(tbox)
                caller_reaches_a_human(tbox, staff, workdir)
            raw.sock.setblocking(False)
        raw.sock.setblocking(True)
    finally:
        raw.close()
    assert sent == 3000
    status = no_leftover_legs(tbox)
    # Each message the screen refused or dropped is one line of the box's log, naming it.
    log_lines = tbox.stderr_path.read_text(errors="replace").splitlines()
    refusal_lines = [
        ln for ln in log_lines if "centralka.sip.guard: refused " in ln or "centralka.sip.guard: dropped " in ln
    ]
    assert status["sip_guard"]["refused"] == len(refusal_lines) > 100, (status["sip_guard"], len(refusal_lines))
    assert all(" from 127.0.0.1:" in ln for ln in refusal_lines)
    # Only a mutant that is still a valid INVITE may have become a call; none is left open.
    assert all(c["ended_at"] for c in tbox.calls()), tbox.calls()
    caller_reaches_a_human(tbox, staff, workdir)


def drain(raw: RawSip, box) -> list[str]:
    """Responses waiting on the socket; a 200 to an INVITE is acknowledged and hung up."""
    got = []
    while True:
        try:
            data, _ = raw.sock.recvfrom(65535)
        except (BlockingIOError, socket.timeout):
            return got
        msg = data.decode("latin-1")
        if msg.startswith("SIP/2.0 2") and re.search(r"^CSeq:\s*\d+\s+INVITE", msg, re.M | re.I):
            cid = re.search(r"^Call-ID:\s*(\S+)", msg, re.M | re.I)
            if cid:
                raw._acknowledge("", msg, cid.group(1))
                got.append(cid.group(1))


def test_the_screen_answers_over_tcp_too(tbox, staff, workdir):
    """The same rules on a TCP connection (pjsip frames the stream; the screen sees each message)."""
    with socket.create_connection(("127.0.0.1", tbox.port), timeout=5) as conn:
        me = "127.0.0.1:%d" % conn.getsockname()[1]

        def request(method: str, cseq_method: str | None = None, extra: str = "") -> str:
            cid = f"{uuid.uuid4().hex}@tcp"
            msg = (
                f"{method} sip:48221234567@127.0.0.1:{tbox.port};transport=tcp SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP {me};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:600123456@{me}>;tag=t1\r\nTo: <sip:48221234567@127.0.0.1>\r\n"
                f"Call-ID: {cid}\r\nCSeq: 1 {cseq_method or method}\r\nMax-Forwards: 70\r\n{extra}"
                "Content-Length: 0\r\n\r\n"
            )
            conn.sendall(msg.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65535)
            return data.decode("latin-1").split("\r\n", 1)[0]

        assert request("FOO") == "SIP/2.0 501 Not Implemented"
        assert request("OPTIONS", "INVITE").startswith("SIP/2.0 400")
        assert request("OPTIONS") == "SIP/2.0 200 OK"
    assert tbox.proc.poll() is None


def test_dtmf_info_with_hostile_signals_is_ignored_and_a_real_key_still_works(tbox, staff, workdir):
    """SIP INFO carries whatever its sender wrote after Signal=: bytes that are not UTF-8, words,
    nothing. None of it may raise or count as a key; a real key afterwards still works."""
    raw = RawSip(tbox)
    try:
        frm, to, cid = open_dialog(raw)
        answers = []
        bodies = [
            b"Signal=\xff\xfe\r\nDuration=160\r\n",
            b"Signal=hello\r\n",
            b"Signal=\r\n",
            b"Signal=5",
            b"Signal=\x00\r\nDuration=160",
            b"Signal=5\x00\r\n",
            b"\r\n\r\nSignal= = 7\r\n",
            b"Signal=0\r\nDuration=160\r\n",
        ]
        # (pjsua itself answers 400 to "Signal= = 7"; the screen to the three that would abort it.)
        expected = ["200", "200", "200", "400", "400", "400", "400", "200"]
        for n, body in enumerate(bodies, start=2):
            info = (
                raw._in_dialog("INFO", n, frm, to, cid)
                .encode()
                .replace(
                    b"Content-Length: 0\r\n\r\n",
                    b"Content-Type: application/dtmf-relay\r\nContent-Length: %d\r\n\r\n" % len(body),
                )
            )
            raw.sock.sendto(info + body, ("127.0.0.1", tbox.port))
            answers.append(next((m.split()[1] for m in raw._responses(cid, 3) if f"{n} INFO" in m), None))
        # The real key 0 (the last INFO) takes the caller to the operator.
        assert staff.wait("incoming", timeout=30)["user"] == "operator"
        raw.sock.sendto(raw._in_dialog("BYE", 20, frm, to, cid).encode(), ("127.0.0.1", tbox.port))
    finally:
        raw.close()
    # "Signal=5" with no CRLF, or a NUL, once aborted the whole core inside pjsua: now a 400.
    assert answers == expected, answers
    call = tbox.wait_call_ended()
    keys = [json.loads(s["detail"] or "{}").get("key") for s in tbox.journey(call["id"]) if s["step"] == "choice"]
    assert keys == ["0"], keys  # no junk became a key ("Signal= = 7" is not one either)
    assert "ignored DTMF" in tbox.log() and tbox.proc.poll() is None


def test_a_refer_inside_a_call_is_refused_and_the_box_dials_nobody(tbox, staff, workdir):
    """Toll fraud by transfer: a caller sends REFER to a premium number. pjsua would dial it
    itself; the box refuses (403) and no call leaves it. Nor may an INVITE with Replaces take
    over the call."""
    raw = RawSip(tbox)
    try:
        frm, to, cid = open_dialog(raw)
        refer = (
            raw._in_dialog("REFER", 2, frm, to, cid)
            .replace("Content-Length: 0", f"Refer-To: <sip:+48700123456@127.0.0.1:{staff.port}>\r\nContent-Length: 0")
            .encode()
        )
        raw.sock.sendto(refer, ("127.0.0.1", tbox.port))
        answer = next((m.split()[1] for m in raw._responses(cid, 3) if "2 REFER" in m), None)
        m = Msg(raw)
        hijack, hcid = m.invite()
        hijack = hijack.replace(
            b"Max-Forwards: 70", f"Replaces: {cid};to-tag=x;from-tag=y\r\nMax-Forwards: 70".encode()
        )
        replaced = raw.send(hijack, hcid, wait=3, stop_at_final=True).final_code
        status = tbox.status()
        raw.sock.sendto(raw._in_dialog("BYE", 3, frm, to, cid).encode(), ("127.0.0.1", tbox.port))
    finally:
        raw.close()
    assert answer == "403" and replaced == 403, (answer, replaced)
    assert [leg["direction"] for leg in status["legs"]] == ["in"], status["legs"]
    assert not staff.has("incoming"), "the box dialled the REFER's target"
    assert "call transfer by REFER is not accepted here" in tbox.log()
