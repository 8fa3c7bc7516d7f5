"""`centralka hw-test` (R25) against the box with the emulated modem and gpiozero's MockFactory:
one line per check and the JSON report; an unplugged modem turns the modem checks to FAIL with
the reason; parts the box does not have say SKIP, so a healthy demo-like box exits 0."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from appliance.config import load_settings
from appliance.selftest import Check, failed, report
from appliance.selftest.hw import gpio_checks, storage_checks
from appliance.store.db import open_db

from .sipkit import ROOT, wait_for
from .test_gsm_line import emulator, gsm_up, modem_settings  # noqa: F401 — the emulator fixture

NAMES = [
    "core",
    "modem_present",
    "modem_at",
    "sim",
    "signal",
    "network",
    "sms",
    "voice_path",
    "sip_trunk",
    "desk_phones",
    "led",
    "button",
    "storage_space",
    "database",
    "storage_write",
    "clock",
    "call_limit",
]


def hw_test(box, *args):
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "--config", str(box.config), "hw-test", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def by_name(out: str) -> dict:
    return {c["name"]: c for c in json.loads(out)["checks"]}


def test_a_healthy_box_passes_and_an_unplugged_modem_fails_with_the_reason(make_box, staff, emulator):  # noqa: F811
    box = make_box(staff=staff, settings=modem_settings(emulator, "\n[gpio]\nmock = true\n"))
    gsm_up(box)
    done = hw_test(box, "--json", "--sms", "600123456")
    checks = by_name(done.stdout)
    assert list(checks) == NAMES
    assert {c["result"] for c in checks.values()} <= {"PASS", "WARN", "SKIP", "FAIL"}
    for name in ("core", "modem_present", "modem_at", "sim", "signal", "network", "sms", "led", "button"):
        assert checks[name]["result"] == "PASS", checks[name]
    assert "huawei E173" in checks["modem_present"]["why"] and "not a USB device" in checks["modem_present"]["why"]
    assert checks["network"]["why"] == "registered on Plus"
    assert checks["sip_trunk"]["result"] == "SKIP" and checks["voice_path"]["result"] == "SKIP"
    assert done.returncode == 0, done.stdout  # nothing FAILed (the wheel's call limit is a WARN)
    [sms] = wait_for(lambda: list(emulator.sent_sms), 10, "the test SMS")
    assert sms["number"] == "+48600123456" and "test" in sms["text"]

    # The lines a technician reads: one per check, in the same order.
    lines = hw_test(box).stdout.splitlines()
    assert [ln.split()[1] for ln in lines if ln[:4] in ("PASS", "WARN", "FAIL", "SKIP")] == NAMES

    emulator.fault("unplug")
    wait_for(lambda: (box.status().get("gsm") or {}).get("state") != "up", 30, "the box noticing the modem gone")
    gone = hw_test(box, "--json")
    checks = by_name(gone.stdout)
    assert gone.returncode == 1
    assert checks["modem_present"]["result"] == "FAIL" or checks["modem_at"]["result"] == "FAIL"
    failing = [checks[n] for n in ("modem_present", "modem_at") if checks[n]["result"] == "FAIL"]
    assert failing[0]["why"] and failing[0]["fix"]
    for name in ("sim", "signal", "network"):
        assert checks[name]["result"] == "FAIL"
    assert checks["storage_write"]["result"] == "PASS"


def test_without_a_running_core_the_live_checks_fail_and_the_rest_still_run(tmp_path):
    cfg = tmp_path / "centralka.toml"
    cfg.write_text(
        f'[box]\ndata_dir = "{tmp_path}"\n[control]\nsocket = "{tmp_path / "core.sock"}"\n'
        '[modem]\ndevice = "/dev/ttyUSB9"\n[gpio]\nmock = true\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "--config", str(cfg), "hw-test", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    checks = by_name(done.stdout)
    assert done.returncode == 1
    assert checks["core"]["result"] == "FAIL" and "not running" in checks["core"]["why"]
    assert checks["core"]["fix"] == "start it: systemctl start centralka-core"
    assert checks["modem_at"]["result"] == "FAIL" and checks["database"]["result"] == "PASS"


def test_the_led_and_the_button_on_mock_pins():
    settings = load_settings(env={}, gpio={"led_pin": 17, "button_pin": 27, "mock": True})
    factory = MockFactory()
    led, button = gpio_checks(settings, factory)
    assert (led.result, button.result) == ("PASS", "PASS")

    class HeldDown(MockPin):
        """A button held down (or shorted): the pin stays at ground whatever the pull-up."""

        def _set_pull(self, value):
            super()._set_pull(value)
            self.drive_low()

    _, held = gpio_checks(settings, MockFactory(pin_class=HeldDown))
    assert held.result == "WARN" and "pressed" in held.why
    none = load_settings(env={}, gpio={"led_pin": -1, "button_pin": -1})
    assert [c.result for c in gpio_checks(none)] == ["SKIP", "SKIP"]


def test_a_damaged_database_fails_the_storage_check(tmp_path):
    settings = load_settings(env={}, box={"data_dir": str(tmp_path)})
    db = open_db(tmp_path / "centralka.db")
    db.execute("CREATE TABLE t (x)")
    db.execute("CREATE INDEX tx ON t (x)")
    db.execute("INSERT INTO t VALUES (1), (2), (3)")
    db.execute("PRAGMA writable_schema = ON")
    # Point the index at the table's own pages: the btree check finds them wrong.
    db.execute(
        "UPDATE sqlite_master SET rootpage = (SELECT rootpage FROM sqlite_master WHERE name = 't') WHERE name = 'tx'"
    )
    db.execute("PRAGMA writable_schema = OFF")
    db.close()
    checks = {c.name: c for c in storage_checks(settings, open_db(tmp_path / "centralka.db"))}
    assert checks["database"].result == "FAIL" and "integrity check" in checks["database"].why
    assert checks["storage_write"].result == "PASS"


def test_the_report_and_its_exit_rule():
    checks = [Check("a", "PASS", "fine"), Check("b", "WARN", "hm", "look")]
    assert report(checks) == {
        "checks": [
            {"name": "a", "result": "PASS", "why": "fine", "fix": ""},
            {"name": "b", "result": "WARN", "why": "hm", "fix": "look"},
        ]
    }
    assert not failed(checks) and failed(checks + [Check("c", "FAIL", "no")])
    with pytest.raises(ValueError):
        Check("d", "OK", "not a result")
