"""The screen's rules on their own (no SIP stack): which answer each broken request gets, the
flood gate's bans on a set clock, wire text that can always be stored, and a seeded fuzz that
no byte sequence makes the screen raise. The same rules at a running box: test_sip_torture.py."""

from __future__ import annotations

import random

import pytest

from appliance.sip.screen import FloodGate, check_offer, check_request, parse_request, sip_hosts
from appliance.text import wire_text

SDP = (
    "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def invite(
    body: str = SDP,
    *,
    ctype: str | None = "application/sdp",
    clen=None,
    method: str = "INVITE",
    cseq: str = "1 INVITE",
    start: str | None = None,
    extra: str = "",
) -> bytes:
    head = [
        start or f"{method} sip:48221234567@127.0.0.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKabc",
        "From: <sip:600123456@127.0.0.1>;tag=1",
        "To: <sip:48221234567@127.0.0.1>",
        "Call-ID: screen-1@127.0.0.1",
        f"CSeq: {cseq}",
        "Max-Forwards: 70",
    ]
    if ctype and body:
        head.append(f"Content-Type: {ctype}")
    if extra:
        head.append(extra)
    raw_body = body.encode()
    head.append(f"Content-Length: {len(raw_body) if clen is None else clen}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + raw_body


def code(data: bytes, **kw) -> int | None:
    r = check_request(data, **kw)
    return None if r is None else r.code


def test_a_plain_invite_passes_and_so_does_one_without_an_offer():
    assert code(invite()) is None
    assert code(invite(body="")) is None


@pytest.mark.parametrize(
    "data, expected, why",
    [
        (invite(clen=99999999), 400, "Content-Length 99999999 is past the datagram"),
        (invite(clen="abc"), 400, "Bad Content-Length"),
        (invite(clen=-5), 400, "Bad Content-Length"),
        (invite(ctype=None), 400, "a body without Content-Type"),
        (invite(ctype="text/plain"), 415, "Content-Type text/plain"),
        (invite(cseq="1 BYE"), 400, "does not match"),
        (invite(cseq="99999999999 INVITE"), 400, "too large"),
        (invite(method="FOO", cseq="1 FOO"), 501, "method FOO"),
        (invite(start="INVITE sip:x@127.0.0.1 SIP/7.0"), 505, "version"),
        (invite(start="INVITE  sip:x@127.0.0.1 SIP/2.0"), 400, "request line"),
        (invite(start="INVITE nobodyhome:x@127.0.0.1 SIP/2.0"), 416, "scheme"),
        (invite(SDP.replace("c=IN IP4 127.0.0.1", "c=IN IP9 zz").replace("40000", "99999999")), 488, "bad port"),
        (invite(SDP.replace("40000", "0")), 488, "port 0"),
        (invite(SDP.replace("RTP/AVP", "RTP/XYZ")), 488, "transport RTP/XYZ"),
        (invite(SDP.replace("IN IP4 127.0.0.1\r\nt", "IN IP6 ::1\r\nt")), 488, "address type IP6"),
        (invite(SDP.replace(" 8 0 101", " 18 101")), 488, "no common codec"),
        (invite("v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"), 488, "no audio stream"),
        (invite("this is not a session description\r\n"), 400, "v=0"),
        (invite(extra="X-Big: " + "a" * 20000), 513, "bytes"),
        (invite(extra="this line has no colon"), 400, "header line without a colon"),
        (invite("Signal=5", method="INFO", cseq="2 INFO", ctype="application/dtmf-relay"), 400, "without CRLF"),
        (invite("Signal=5\x00\r\n", method="INFO", cseq="2 INFO", ctype="application/dtmf-relay"), 400, "NUL"),
        (invite("<x/>", method="INFO", cseq="2 INFO", ctype="application/media_control+xml"), 415, "no video"),
        (invite("", method="REFER", cseq="3 REFER", extra="Refer-To: <sip:+48700123456@192.0.2.1>"), 403, "REFER"),
        (invite(extra="Replaces: abc@host;to-tag=1;from-tag=2"), 403, "Replaces"),
    ],
)
def test_broken_requests_get_the_rfc_answer_and_say_why(data, expected, why):
    refusal = check_request(data)
    assert refusal is not None and refusal.code == expected, refusal
    assert why in refusal.detail, refusal


def test_a_datagram_that_filled_pjsips_buffer_is_too_large_whatever_it_says():
    assert code(invite(), truncated=True) == 513


def test_bytes_past_the_content_length_are_discarded_not_refused():
    # RFC 3261 §18.3: the body is what Content-Length says; the rest of the datagram is ignored.
    data = invite() + b"garbage after the body"
    assert code(data) is None


def test_a_dynamic_payload_type_mapped_to_pcma_is_a_common_codec():
    sdp = SDP.replace(" 8 0 101", " 96").replace("a=rtpmap:101", "a=rtpmap:96 PCMA/8000\r\na=x:101")
    assert check_offer(sdp.encode()) is None


def test_compact_folded_and_odd_but_valid_headers_are_read():
    data = (
        b"INVITE sip:1@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n"
        b"f: <sip:a@b>;tag=1\r\nt: <sip:1@127.0.0.1>\r\ni: folded-1\r\nCSeq  :\r\n  7 INVITE\r\n"
        b"c: application/sdp\r\nl: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP.encode()
    )
    req = parse_request(data)
    assert req.call_id == "folded-1" and req.get("cseq") == "7 INVITE" and not req.in_dialog
    assert check_request(data) is None


def test_a_to_tag_puts_a_request_in_a_dialog():
    req = parse_request(invite().replace(b"To: <sip:48221234567@127.0.0.1>", b"To: <sip:x@y>;tag=99"))
    assert req.in_dialog
    # A "tag=" inside the URI is not the header's tag.
    req = parse_request(invite().replace(b"To: <sip:48221234567@127.0.0.1>", b"To: <sip:x@y;tag=99>"))
    assert not req.in_dialog


def test_the_flood_gate_bans_a_source_then_forgives_it_and_never_limits_trusted_ones():
    now = [1000.0]
    gate = FloodGate(window_s=2, max_requests=5, ban_s=60, trusted=["10.0.0.9", "10.0.0.8:5070"], clock=lambda: now[0])
    results = [gate.admit("10.0.0.1", 5060) for _ in range(7)]
    assert [ok for ok, _ in results] == [True] * 5 + [False, False]
    assert "banned 10.0.0.1 for 60 s" in results[5][1]
    assert gate.admit("10.0.0.2", 5060)[0], "another source is not punished"
    assert all(gate.admit("10.0.0.9", p)[0] for p in range(100)), "trusted by address"
    assert all(gate.admit("10.0.0.8", 5070)[0] for _ in range(100)), "trusted by address and port"
    assert not all(gate.admit("10.0.0.8", 5071)[0] for _ in range(100)), "another port of that host is not"
    now[0] += 30
    assert not gate.admit("10.0.0.1", 5060)[0]
    now[0] += 31
    assert gate.admit("10.0.0.1", 5060)[0], "the ban ends"
    # A steady trickle under the rate is never banned.
    for _ in range(50):
        now[0] += 0.5
        assert gate.admit("10.0.0.3", 5060)[0]


def test_the_flood_gate_remembers_a_bounded_number_of_sources():
    gate = FloodGate(max_requests=1, max_sources=100, clock=lambda: 5.0)
    for i in range(5000):
        gate.admit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 5060)
        gate.admit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 5060)
    assert len(gate._seen) <= 100 and len(gate.banned) <= 101


def test_the_allow_list_admits_listed_networks_and_trusted_sources_only():
    gate = FloodGate(allow_from=["192.168.1.0/24"], trusted=["127.0.0.1:5070"])
    assert gate.allowed("192.168.1.20", 5060)
    assert not gate.allowed("203.0.113.5", 5060)
    assert gate.allowed("127.0.0.1", 5070) and not gate.allowed("127.0.0.1", 5071)
    assert FloodGate().allowed("203.0.113.5", 5060), "empty list: everyone"


def test_sip_hosts_reads_literal_addresses_without_a_resolver():
    assert sip_hosts("sip:192.0.2.7:5060;transport=udp") == ["192.0.2.7"]
    assert sip_hosts("sip:trunk@[2001:db8::1]:5060") == ["2001:db8::1"]
    assert sip_hosts("") == []


def test_wire_text_can_always_be_stored_and_logged_on_one_line():
    hostile = b'"\xff\xfe\xc3(" <sip:a@b>\r\nX: y\x00'.decode("utf-8", "surrogateescape")
    text = wire_text(hostile)
    text.encode("utf-8")  # would raise for a lone surrogate
    assert "\n" not in text and "\x00" not in text and "\ufffd" in text
    assert wire_text("x" * 1000, 10) == "x" * 9 + "…"


def test_no_byte_sequence_makes_the_screen_raise():
    rng = random.Random(4475)
    seeds = [
        invite(),
        invite(body=""),
        invite(method="OPTIONS", cseq="2 OPTIONS", body=""),
        invite(method="BYE", cseq="3 BYE", body=""),
    ]
    for i in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 12)):
            op = rng.random()
            pos = rng.randrange(len(data) + 1)
            if op < 0.4 and data:
                data[pos % len(data)] = rng.randrange(256)
            elif op < 0.7:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif op < 0.9:
                del data[pos : pos + rng.randint(1, 40)]
            else:
                data[pos:pos] = rng.choice([b"\r\n", b":", b" ", b";tag=", b"\r\n\r\n", b"%00", b"\xc3"])
        refusal = check_request(bytes(data))
        assert refusal is None or refusal.code in (0, 400, 405, 415, 416, 488, 501, 505, 513), (i, refusal)
