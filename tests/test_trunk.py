"""The SIP trunk registers with digest auth and never stops trying (unlike Asterisk's 10 tries).

The provider's registrar is SIPp on loopback, challenging with a real 401 and checking the
digest the box computes from its configured password.
"""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from appliance.testing.demo import demo_flow_text

from .sipkit import free_port

SCENARIO = Path(__file__).with_name("sipp_trunk") / "registrar.xml"

pytestmark = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is installed by make test"
)


class Registrar:
    def __init__(self, workdir: Path, port: int, transport: str = "u1"):
        self.port = port
        self.proc = subprocess.Popen(
            [
                "sipp",
                "-sf",
                str(SCENARIO),
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                transport,
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "60s",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        )
        time.sleep(0.5)

    def finish(self, timeout=10) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -1

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def registrars(workdir):
    started = []

    def start(port, transport="u1"):
        r = Registrar(workdir, port, transport)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def trunk_box(make_box, staff, port, password, transport=""):
    suffix = f";transport={transport}" if transport else ""
    settings = (
        f'\n[trunk]\nenabled = true\nregistrar = "sip:127.0.0.1:{port}{suffix}"\nusername = "clinic"\n'
        f'password = "{password}"\nretry_min_s = 1\nretry_max_s = 2\n'
    )
    return make_box(demo_flow_text(f"127.0.0.1:{staff.port}"), settings=settings)


def wait_trunk(box, check, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = box.status()["trunk"]
        if check(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"trunk state not reached within {timeout} s: {box.status()['trunk']}\n{box.log()}")


def test_trunk_registers_with_digest_auth_and_takes_calls(make_box, staff, registrars, caller):
    port = free_port()
    registrar = registrars(port)
    box = trunk_box(make_box, staff, port, "Trunk-s3cret")
    st = wait_trunk(box, lambda s: s["state"] == "registered")
    assert st["code"] == 200
    assert registrar.finish() == 0  # SIPp verified the digest computed from our password
    states = [r["state"] for r in box.db()["line_events"].rows_where("line = 'trunk'", order_by="id")]
    assert states[-1] == "registered"
    # The provider delivers the clinic's number to the registered account: a trunk call.
    caller.call(box.uri("clinic"))
    caller.wait("confirmed")
    caller.hangup()
    call = box.wait_call_ended()
    assert (call["line"], call["dialled"]) == ("trunk", "clinic")


def test_wrong_password_is_reported_and_retried(make_box, staff, registrars):
    port = free_port()
    registrars(port)
    box = trunk_box(make_box, staff, port, "wrong-password")
    st = wait_trunk(box, lambda s: s["state"] == "failed" and s["code"] == 403)
    assert st["next_retry_at"] is not None
    assert "trunk registration failed (403" in box.log()


def test_trunk_keeps_retrying_until_the_provider_is_back(make_box, staff, registrars):
    # TCP, so a missing registrar fails at once (connection refused) instead of after 32 s.
    port = free_port()
    box = trunk_box(make_box, staff, port, "Trunk-s3cret", transport="tcp")
    st = wait_trunk(box, lambda s: s["failures"] >= 3, timeout=20)
    assert st["state"] in ("failed", "registering")
    registrars(port, transport="t1")
    wait_trunk(box, lambda s: s["state"] == "registered", timeout=15)
    failed = (
        box.db().execute("SELECT count(*) FROM line_events WHERE line = 'trunk' AND state = 'failed'").fetchone()[0]
    )
    assert failed >= 3
