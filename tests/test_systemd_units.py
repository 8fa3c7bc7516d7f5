"""The systemd units (R26) pass `systemd-analyze verify` and keep the hardening they promise.
They name /opt/centralka, where the image installs the box; here the checkout stands in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .sipkit import ROOT

UNITS = sorted(p for p in (ROOT / "systemd").iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [p for p in UNITS if p.suffix == ".service"]

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def test_there_are_units_to_check():
    assert {p.name for p in UNITS} >= {
        "centralka-core.service",
        "centralka-web.service",
        "centralka-kamailio.service",
        "centralka-backup.service",
        "centralka-backup.timer",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_unit_passes_systemd_analyze_verify(unit, tmp_path):
    for p in UNITS:  # a timer is checked with the service it starts beside it
        (tmp_path / p.name).write_text(p.read_text().replace("/opt/centralka", str(ROOT)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit.name)], capture_output=True, text=True, timeout=60
    )
    ours = [ln for ln in (done.stdout + done.stderr).splitlines() if "centralka" in ln]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def keys(unit: Path) -> dict:
    out = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), v.strip())
    return out


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_services_run_hardened_as_their_own_user(unit):
    k = keys(unit)
    assert k["User"] == "centralka" and k["NoNewPrivileges"] == "true"
    assert k["ProtectSystem"] == "strict" and k["ReadWritePaths"].startswith("/var/lib/centralka")
    assert k.get("Restart", "on-failure") == "on-failure"


def test_the_core_is_a_notify_service_with_a_watchdog_and_start_limits():
    k = keys(ROOT / "systemd" / "centralka-core.service")
    assert (k["Type"], k["WatchdogSec"]) == ("notify", "30")
    assert int(k["StartLimitBurst"]) > 1 and int(k["StartLimitIntervalSec"]) > 0
    assert set(k["SupplementaryGroups"].split()) == {"dialout", "gpio"}
