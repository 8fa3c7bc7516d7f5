"""What the SIP screen costs per request: the pure-Python checks every request passes before
pjsua sees it (docs/SIP_EDGE.md), timed in-process on typical and hostile messages.

    .venv/bin/python bench/screen.py [--rounds N]

Prints microseconds per request (min / median of the rounds) for each kind of message and the
flood gate's admit(), then one JSON line. The ctypes hop into Python from pjsip is not included
(it is paid by every SIP callback alike); ``make bench`` measures INVITE -> 200 OK of the whole box.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.sip.screen import FloodGate, check_request  # noqa: E402

SDP = (
    "v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def message(method: str, body: str = "", extra: str = "", cseq: str | None = None) -> bytes:
    head = (
        f"{method} sip:48221234567@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK776asdhds;rport\r\n"
        'From: "Jan Kowalski" <sip:600123456@127.0.0.1>;tag=1928301774\r\n'
        "To: <sip:48221234567@127.0.0.1>\r\nCall-ID: a84b4c76e66710@127.0.0.1\r\n"
        f"CSeq: 314159 {cseq or method}\r\nMax-Forwards: 70\r\nContact: <sip:600123456@127.0.0.1:5999>\r\n"
        "User-Agent: bench\r\nAllow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\n" + extra
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body.encode())}\r\n\r\n").encode() + body.encode()


CASES = {
    "INVITE with SDP (passes)": message("INVITE", SDP),
    "OPTIONS (passes)": message("OPTIONS"),
    "BYE (passes)": message("BYE"),
    "INVITE, port 0 (488)": message("INVITE", SDP.replace("40000", "0")),
    "INVITE, CSeq mismatch (400)": message("INVITE", SDP, cseq="BYE"),
    "INVITE, 3 kB of headers (passes)": message("INVITE", SDP, extra="X-Pad: " + "x" * 3000 + "\r\n"),
}


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=5000)
    args = ap.parse_args(argv)
    result = {"bench": "sip_screen", "python": sys.version.split()[0], "us_per_request": {}}
    gate = FloodGate(max_requests=10**9)
    subjects = {name: (lambda d=data: check_request(d)) for name, data in CASES.items()}
    subjects["FloodGate.admit"] = lambda: gate.admit("192.0.2.7", 5060)
    for name, fn in subjects.items():
        runs = [per_call_us(fn, args.per_round) for _ in range(args.rounds)]
        result["us_per_request"][name] = {"min": round(min(runs), 2), "median": round(statistics.median(runs), 2)}
        print(f"{name:36s} {min(runs):8.1f} µs min  {statistics.median(runs):8.1f} µs median")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
