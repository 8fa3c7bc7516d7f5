"""Outbound calls over the SIP trunk: a technician's test call, the toll-fraud guard on the way,
and what the admin sees when the provider refuses (the GSM side is in tests/test_gsm_line.py).

The provider is SIPp on loopback (tests/sipp_trunk/provider_*.xml): it takes the box's
REGISTER and answers or refuses its INVITEs.
"""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from appliance.cli import main as cli_main

from .sipkit import free_port, wait_for

SCENARIOS = Path(__file__).with_name("sipp_trunk")

pytestmark = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is installed by make test"
)


class Provider:
    """SIPp playing a SIP provider: registrar + the far end of outbound calls."""

    def __init__(self, workdir: Path, scenario: str):
        self.port = free_port()
        self.log = workdir / f"{scenario}.messages"
        self.proc = subprocess.Popen(
            [
                "sipp",
                "-sf",
                str(SCENARIOS / f"{scenario}.xml"),
                "-i",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-mi",
                "127.0.0.1",
                "-mp",
                str(free_port()),
                "-nostdin",
                "-timeout",
                "120s",
                "-trace_msg",
                "-message_file",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        )
        time.sleep(0.5)

    def messages(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def invites(self) -> list[str]:
        return [line.split()[1] for line in self.messages().splitlines() if line.startswith("INVITE ")]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def provider(workdir):
    started = []

    def start(scenario):
        p = Provider(workdir, scenario)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def trunk_settings(port: int, extra: str = "") -> str:
    return (
        f'\n[trunk]\nenabled = true\nregistrar = "sip:127.0.0.1:{port}"\nusername = "clinic"\n'
        f'password = "Trunk-s3cret"\nretry_min_s = 1\nretry_max_s = 2\n{extra}\n'
    )


def test_a_test_call_goes_out_over_the_trunk_in_e164(make_box, staff, provider, capsys):
    p = provider("provider_answers")
    box = make_box(staff=staff, settings=trunk_settings(p.port))
    wait_for(lambda: box.status()["lines"]["trunk"]["state"] == "up", what="trunk up")
    assert cli_main(["--config", str(box.config), "call", "600 123 456"]) == 0
    assert "placed over the trunk line" in capsys.readouterr().out
    call = box.wait_call_ended(timeout=30)
    assert (call["direction"], call["line"], call["caller"], call["outcome"]) == (
        "out",
        "trunk",
        "+48600123456",
        "answered",
    )
    assert p.invites() == [f"sip:+48600123456@127.0.0.1:{p.port}"]
    rows = box.db().execute("SELECT line, outcome FROM outbound_calls").fetchall()
    assert rows == [("trunk", "answered")]


def test_the_guard_refuses_premium_numbers_before_any_line(make_box, staff, provider, capsys):
    p = provider("provider_answers")
    box = make_box(staff=staff, settings=trunk_settings(p.port))
    wait_for(lambda: box.status()["lines"]["trunk"]["state"] == "up", what="trunk up")
    assert cli_main(["--config", str(box.config), "call", "701 234 567"]) != 0
    assert "premium rate number: never dialled" in capsys.readouterr().err
    time.sleep(1)
    assert p.invites() == []


def test_a_refusing_provider_is_reported_and_the_line_degraded(make_box, staff, provider, capsys):
    p = provider("provider_refuses")
    box = make_box(staff=staff, settings=trunk_settings(p.port))
    wait_for(lambda: box.status()["lines"]["trunk"]["state"] == "up", what="trunk up")
    assert cli_main(["--config", str(box.config), "call", "600123456"]) != 0
    err = capsys.readouterr().err
    assert "every line failed" in err and "503 Service Unavailable" in err
    assert box.status()["lines"]["trunk"]["state"] == "degraded"
    alarms = [r["kind"] for r in box.db()["alarms"].rows_where(order_by="id")]
    assert alarms == ["line_degraded"]
