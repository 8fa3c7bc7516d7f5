"""`make demo` itself (``centralka demo``): the box with its simulated clinic — staff phones, two
receptionists' desk phones, an emulated modem and a simulated SIP provider — and the self-test
call against it: the box calls its own numbers over the other line and the greeting PASSes;
the technician's hw-test exits 0 (the demo has every part, emulated)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from appliance.cli import main as cli_main

from .sipkit import free_port, wait_for

pytestmark = pytest.mark.skipif(
    not (shutil.which("kamailio") and shutil.which("espeak-ng")), reason="kamailio and espeak-ng come with make test"
)


@pytest.fixture
def demo(workdir):
    env = dict(os.environ, CENTRALKA_SIP_PORT=str(free_port()), CENTRALKA_DEMO_ANSWER_DELAY="2")
    env.pop("CENTRALKA_MODEM", None)
    env.pop("CENTRALKA_SMTP", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "demo"],
        cwd=workdir,  # the demo keeps its box in ./var/demo
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(workdir / "demo.stderr", "wb"),
        text=True,
    )
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    try:
        wait_for(lambda: any("Centralka demo is running" in line for line in out) or proc.poll() is not None, 60)
        assert proc.poll() is None, (workdir / "demo.stderr").read_text()[-3000:]
        yield workdir / "var" / "demo" / "centralka.toml", out
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
        log = (workdir / "demo.stderr").read_text()
        assert rc == 0 and "Traceback" not in log, log[-3000:]


def test_the_demo_calls_itself_and_its_hw_test_passes(demo, capsys):
    config, out = demo
    assert any("selftest call" in line for line in out)  # the ready text tells how

    def status():
        capsys.readouterr()
        cli_main(["--config", str(config), "status"])
        return capsys.readouterr().out

    wait_for(lambda: '"gsm": {' in status() and '"state": "registered"' in status(), 30, "both lines up")
    for target in ("gsm", "trunk"):
        assert cli_main(["--config", str(config), "selftest", "call", "--target", target]) == 0
        printed = capsys.readouterr().out
        assert "PASS: " in printed and "powitanie się zgadza, klawisz 1 działa" in printed, printed
    assert cli_main(["--config", str(config), "hw-test", "--json"]) == 0
    checks = {c["name"]: c["result"] for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["voice_path"] == checks["sip_trunk"] == checks["modem_present"] == "PASS", checks
    assert "FAIL" not in checks.values()
