"""Every way the stack refuses a call it has already been handed by pjsua (issue 9).

pjsua2 frees its copy of the INVITE when ``onIncomingCall`` returns; a final answer given inside
that callback (an INVITE without SDP is answered at once) made pjsua2 free it twice and abort
the whole process. These run the bare stack — no screen in front — with INVITEs that carry no
SDP, for each refusal: no handler (480), a handler that raises (500), the call limit (486), a
Content-Length past the datagram (400). The process must answer each and live on.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .sipkit import ROOT
from .sippkit import RawSip

pytestmark = pytest.mark.sip


class BareStack:
    def __init__(self, mode: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.refusing_stack", mode],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), line + self.proc.stderr.read()
        self.port = int(line.split()[1])

    def stop(self) -> tuple[int, str]:
        self.proc.stdin.close()
        rc = self.proc.wait(20)
        return rc, self.proc.stderr.read()


def no_sdp_invite(raw: RawSip, **kw):
    return raw.invite(body="", **kw)


@pytest.mark.parametrize("mode, expected", [("none", 480), ("raise", 500), ("framing", 400), ("limit", 486)])
def test_each_refusal_is_answered_and_the_process_lives(mode, expected):
    stack = BareStack(mode)
    raw = RawSip(stack)
    try:
        if mode == "limit":
            first = raw.send(*no_sdp_invite(raw), wait=2, stop_at_final=False)
            assert 180 in first.codes, first.lines
            text, cid = no_sdp_invite(raw)
        elif mode == "framing":
            text, cid = no_sdp_invite(raw, content_length=99999999)
        else:
            text, cid = no_sdp_invite(raw)
        reply = raw.send(text, cid, wait=3, stop_at_final=True)
        assert reply.final_code == expected, reply.lines
        # Alive and well: the next caller is answered the same way, not by a dead socket.
        again = raw.send(
            *(no_sdp_invite(raw, content_length=99999999) if mode == "framing" else no_sdp_invite(raw)),
            wait=3,
            stop_at_final=True,
        )
        assert again.final_code == expected, again.lines
        assert stack.proc.poll() is None
    finally:
        raw.close()
        rc, err = stack.stop()
    assert rc == 0 and "Assertion" not in err, err[-3000:]
    if mode == "raise":
        assert "incoming call handler failed" in err and "refusing it with 500" in err
