"""The core as systemd runs it: readiness, watchdog, clean stop, clear errors on bad setup."""

import socket
import subprocess
import sys
import time

import pytest

from appliance.testing.demo import demo_flow_text

from .sipkit import ROOT, free_port


@pytest.fixture
def notify(workdir):
    """A NOTIFY_SOCKET as systemd gives one: what the core reports arrives here."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(workdir / "notify.sock"))
    sock.settimeout(10)
    yield sock
    sock.close()


def notify_env(workdir) -> dict:
    return {"NOTIFY_SOCKET": str(workdir / "notify.sock"), "WATCHDOG_USEC": "1000000"}


def test_core_reports_ready_and_pings_the_watchdog(make_box, staff, notify, workdir):
    box = make_box(demo_flow_text(f"127.0.0.1:{staff.port}"), env=notify_env(workdir))
    messages = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and messages.count("WATCHDOG=1") < 3:
        messages.append(notify.recv(256).decode())
    assert "READY=1" in messages
    assert messages.count("WATCHDOG=1") >= 3
    assert box.status()["calls_active"] == 0


def test_a_core_whose_loop_is_stuck_stops_the_watchdog_pings_and_they_resume_after(
    make_box, staff, notify, caller, workdir
):
    """systemd restarts a core that stops pinging within WatchdogSec: the pings come from the
    loop that handles SIP events, so a callback that blocks it stops them (here for 4 s)."""
    box = make_box(demo_flow_text(f"127.0.0.1:{staff.port}"), env=notify_env(workdir), hang_at=("menu", 4))
    while notify.recv(256).decode() != "READY=1":
        pass
    caller.call(box.uri())
    pings = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (pings and pings[-1] - pings[0] > 8):
        if notify.recv(256).decode() == "WATCHDOG=1":
            pings.append(time.monotonic())
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # Pings every half second or so, one gap as long as the hang, then pings again.
    assert max(gaps) > 3.5 and sorted(gaps)[-2] < 2.0, gaps
    assert "calls_active" in box.status()  # the control socket answers again


def _run_core(config, timeout=20):
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_bad_setting_is_one_clear_line(tmp_path):
    cfg = tmp_path / "centralka.toml"
    cfg.write_text('[sip]\nport = "piec tysiecy"\n')
    proc = _run_core(cfg)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"centralka: {cfg}: sip.port: expected int, got 'piec tysiecy'")


def test_busy_sip_port_is_one_clear_line(make_box, staff, workdir, tmp_path):
    box = make_box(demo_flow_text(f"127.0.0.1:{staff.port}"))
    cfg = tmp_path / "second.toml"
    cfg.write_text(box.config.read_text().replace(str(workdir / "core.sock"), str(tmp_path / "second.sock")))
    proc = _run_core(cfg)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"centralka: SIP stack on 127.0.0.1:{box.port}:") and "in use" in last


def test_core_without_a_flow_says_what_to_do(tmp_path):
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(
        f'[box]\ndata_dir = "{tmp_path}"\n[sip]\nport = {free_port()}\n[control]\nsocket = "{tmp_path / "c.sock"}"\n'
    )
    proc = _run_core(cfg)
    assert proc.returncode == 1
    assert "no call flow in the database: import one with `centralka flow import FILE`" in proc.stderr
