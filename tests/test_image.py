"""The Pi image recipe (image/): what can run here runs here. The scripts pass shellcheck; the
pool sizes for pjproject come from one number; the system files land in a folder as on the
card and the read-only layout check passes there (and catches a writable root); the first
boot makes a setup code, a certificate and a secret once; the box's settings file loads."""

import os
import shutil
import stat
import subprocess

import pytest

from appliance.config import load_settings

from .sipkit import ROOT

IMAGE = ROOT / "image"
SCRIPTS = sorted(IMAGE.glob("*.sh")) + sorted((IMAGE / "stages").glob("*.sh"))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by make test")
def test_every_script_of_the_recipe_passes_shellcheck():
    done = subprocess.run(["shellcheck", "--shell=sh", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def config_site(calls) -> dict:
    out = subprocess.run([str(IMAGE / "config-site.sh"), str(calls)], capture_output=True, text=True, check=True).stdout
    return {p[1]: int(p[2]) for p in (line.split() for line in out.splitlines()) if p[:1] == ["#define"]}


@pytest.mark.parametrize("calls", [4, 32, 64])
def test_pjproject_limits_all_follow_the_number_of_calls(calls):
    c = config_site(calls)
    assert c["PJSUA_MAX_CALLS"] == calls
    assert c["PJSUA_MAX_PLAYERS"] >= 2 * calls + 2  # two per caller, plus the shared ones
    assert c["PJSUA_MAX_RECORDERS"] >= calls
    # Each call's stream, players, recorders and a ringback tone each need a conference port.
    assert c["PJSUA_MAX_CONF_PORTS"] >= calls + c["PJSUA_MAX_PLAYERS"] + c["PJSUA_MAX_RECORDERS"] + calls
    assert c["PJ_IOQUEUE_MAX_HANDLES"] >= 4 * calls  # RTP + RTCP per call, and then some (was 64)


def test_config_site_refuses_a_number_that_is_no_call_count():
    for bad in ("x", "0", "1000", ""):
        done = subprocess.run([str(IMAGE / "config-site.sh"), bad], capture_output=True, text=True)
        assert done.returncode == 2 and "CALLS must" in done.stderr


def test_the_system_files_make_a_read_only_root_with_a_data_partition(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run([str(IMAGE / "stages" / "10-files.sh"), str(root), str(ROOT)], check=True, capture_output=True)
    check = subprocess.run([str(IMAGE / "layout-check.sh"), str(root)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # The box's settings as written load (a typo would stop the core at the first boot).
    settings = load_settings(root / "etc" / "centralka" / "centralka.toml", env={})
    assert (settings.box.data_dir, settings.kamailio.run_by, settings.web.port) == ("/var/lib/centralka", "systemd", 80)
    # A root mounted writable is caught.
    fstab = root / "etc" / "fstab"
    fstab.write_text(fstab.read_text().replace("ro,noatime ", "rw,noatime "))
    check = subprocess.run([str(IMAGE / "layout-check.sh"), str(root)], capture_output=True, text=True)
    assert check.returncode == 1 and "the root is not mounted read-only" in check.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is installed by make test")
def test_the_first_boot_makes_the_box_s_own_secrets_once(tmp_path):
    env = dict(os.environ, ROOT=str(tmp_path), CENTRALKA_USER="nobody-here")
    run = [str(IMAGE / "firstboot.sh")]
    first = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    data = tmp_path / "var" / "lib" / "centralka"
    code = (data / "setup-code").read_text().strip()
    assert len(code) == 6 and code.isdigit()
    assert stat.S_IMODE((data / "setup-code").stat().st_mode) == 0o640
    assert stat.S_IMODE((data / "tls" / "web.key").stat().st_mode) == 0o640
    assert len((data / "kamailio" / "auth.secret").read_text()) == 32
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(data / "tls" / "web.crt")], capture_output=True, text=True
    ).stdout
    assert "CN = centralka" in subject
    assert code in (tmp_path / "etc" / "issue.d" / "centralka.issue").read_text()
    assert "setup code made" in first
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    again = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    assert "done before" in again
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_first_boot_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "centralka-firstboot.service"
    text = (IMAGE / "rootfs" / "centralka-firstboot.service").read_text()
    unit.write_text(text.replace("/usr/local/sbin/centralka-firstboot", str(IMAGE / "firstboot.sh")))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [ln for ln in (done.stdout + done.stderr).splitlines() if "centralka-firstboot" in ln]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr
