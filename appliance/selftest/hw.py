"""The hardware checks of `centralka hw-test` (R25), in the order a technician works through them.

``run(settings, db, ask)`` returns :class:`~appliance.selftest.Check` results. ``ask(cmd,
**fields)`` talks to the running core (``cli.ask_core``; a test may hand in its own) and raises
``CoreNotRunning`` when there is none: the modem, line and call-limit checks then FAIL with that
reason, the rest still run. Nothing here changes the box except the SMS a technician asks for
(``sms_to``) and a small file written and removed on the data partition.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import CentralkaError, CoreNotRunning
from ..store.db import integrity_problems
from ..store.phones import list_phones
from . import Check

MIN_FREE_MB, LOW_FREE_MB = 200, 1024  # FAIL below the first, WARN below the second
SMS_WAIT_S = 90.0
USB_IDS = {"12d1": "Huawei", "1e0e": "SIMCom", "2c7c": "Quectel"}


def run(settings, db, ask, *, sms_to: str | None = None, gpio_factory=None) -> list[Check]:
    checks: list[Check] = []
    try:
        status = ask("status")["status"]
    except CoreNotRunning as exc:
        status = None
        checks.append(Check("core", "FAIL", str(exc), "start it: systemctl start centralka-core"))
    else:
        checks.append(Check("core", "PASS", f"running (pid {status['pid']}, up {status['uptime_s']:.0f} s)"))
    checks += modem_checks(settings, status, ask)
    checks.append(sms_check(settings, db, ask, status, sms_to))
    checks.append(voice_path_check(status, ask))
    checks.append(trunk_check(settings, status))
    checks.append(desk_phone_check(settings, db, status))
    if status is not None and (status.get("panel") or {}).get("led") is not None and gpio_factory is None:
        checks += panel_checks(settings, ask)  # the core holds the pins: it switches and reads them
    else:
        checks += gpio_checks(settings, gpio_factory)
    checks += storage_checks(settings, db)
    checks.append(clock_check())
    checks.append(call_limit_check(status))
    return checks


def voice_path_check(status, ask) -> Check:
    """The self-test call (appliance/selftest/call.py): the box calls its own number over the
    other line, hears its greeting and presses a menu key — the voice path both ways."""
    if status is None:
        return Check("voice_path", "FAIL", "the core is not running: it places the test call", "start the core first")
    targets = (status.get("selftest") or {}).get("targets") or []
    if not targets:
        return Check(
            "voice_path",
            "SKIP",
            "needs both lines and the public number of one ([trunk] number, [modem] number)",
            "set the numbers to have the box call itself",
        )
    try:
        reply = ask("selftest-call", trigger="hw-test", timeout=180)
    except CoreNotRunning as exc:
        return Check("voice_path", "FAIL", str(exc), "start the core first")
    if not reply.get("ok"):
        return Check("voice_path", "FAIL", f"the self-test call did not run: {reply.get('error')}", "try again")
    if reply["result"] == "PASS":
        return Check("voice_path", "PASS", f"self-test call: {reply['reason']}")
    if reply["result"] == "SKIP":
        return Check("voice_path", "SKIP", f"self-test call: {reply['reason']}")
    return Check(
        "voice_path",
        "FAIL",
        f"self-test call: {reply['reason']}",
        f"listen to {reply.get('recording') or 'the recording'}; `centralka selftest list`",
    )


# --- the modem ----------------------------------------------------------------------------------
def modem_checks(settings, status, ask) -> list[Check]:
    names = ("modem_present", "modem_at", "sim", "signal", "network")
    if not settings.modem.get("device"):
        return [Check(n, "SKIP", "no GSM modem is configured ([modem] device)") for n in names]
    if status is None:
        return [Check(n, "FAIL", "the core is not running: it owns the modem", "start the core first") for n in names]
    h = status.get("gsm") or {}
    device = h.get("device") or settings.modem.device
    out = []
    gone = not os.path.exists(h.get("device") or device)
    if h.get("state") in (None, "absent") or not h.get("model") or gone:
        why = str(h.get("reason") or "no answer from a modem")
        out.append(Check("modem_present", "FAIL", f"no modem at {device}: {why}", "plug the modem in; check `lsusb`"))
        out += [Check(n, "FAIL", "no modem", "see modem_present") for n in names[1:]]
        return out
    usb = usb_id(h.get("device") or "")
    maker = USB_IDS.get((usb or "").split(":")[0], "")
    where = f"USB {usb}{' (' + maker + ')' if maker else ''}" if usb else "not a USB device (an emulated modem?)"
    model = " ".join(str(x) for x in (h.get("profile"), h.get("model")) if x)
    out.append(Check("modem_present", "PASS", f"{model} at {h.get('device')}, {where}"))
    try:
        reply = ask("modem-probe", timeout=30)
    except CoreNotRunning as exc:
        reply = {"ok": False, "error": str(exc)}
    if reply.get("ok"):
        out.append(Check("modem_at", "PASS", f"answered AT in {reply['seconds'] * 1000:.1f} ms"))
    else:
        out.append(
            Check("modem_at", "FAIL", f"no answer to AT: {reply.get('error')}", "replug the modem; `centralka status`")
        )
        # What the core last heard is stale now: the rest cannot be told.
        return out + [Check(n, "FAIL", "the modem does not answer", "see modem_at") for n in names[2:]]
    sim = h.get("sim")
    if sim == "READY":
        out.append(Check("sim", "PASS", "SIM ready (PIN accepted or not needed)"))
    else:
        out.append(
            Check(
                "sim",
                "FAIL",
                f"SIM state {sim or 'unknown'}",
                "insert the SIM; set [modem] pin; PUK: unlock it in a phone",
            )
        )
    signal = h.get("signal")
    weak = int(settings.modem.get("weak_signal", 5))
    if signal is None or signal == 99:
        out.append(Check("signal", "FAIL", "no signal reading", "check the antenna and the coverage here"))
    elif signal < weak:
        out.append(Check("signal", "WARN", f"weak: {signal}/31 (below {weak})", "move the modem or fit an antenna"))
    else:
        out.append(Check("signal", "PASS", f"{signal}/31 (about {-113 + 2 * signal} dBm)"))
    if h.get("registered"):
        out.append(Check("network", "PASS", f"registered on {h.get('operator') or 'the network'}"))
    else:
        out.append(Check("network", "FAIL", "not registered on a network", "check the SIM's service and the coverage"))
    return out


def usb_id(device: str) -> str | None:
    """``vendor:product`` of the USB device behind a tty (``/dev/ttyUSB2``), from sysfs."""
    name = Path(os.path.realpath(device)).name if device else ""
    node = Path("/sys/class/tty") / name / "device"
    try:
        here = node.resolve()
    except OSError:
        return None
    for parent in [here, *here.parents]:
        vid, pid = parent / "idVendor", parent / "idProduct"
        if vid.exists() and pid.exists():
            return f"{vid.read_text().strip()}:{pid.read_text().strip()}"
    return None


def sms_check(settings, db, ask, status, sms_to: str | None) -> Check:
    from ..gsm.outbox import get_sms, queue_sms

    if not sms_to:
        return Check("sms", "SKIP", "no number given (centralka hw-test --sms NUMBER sends one)")
    if status is None or not status.get("gsm"):
        return Check("sms", "FAIL", "the modem is not running", "see the modem checks")
    try:
        sms_id = queue_sms(db, sms_to, "Centralka: test SMS / SMS testowy.", kind="selftest", settings=settings)
    except CentralkaError as exc:
        return Check("sms", "FAIL", f"not sent: {exc}", "give a mobile number the box may text")
    try:
        ask("sms-wake")
    except CoreNotRunning:
        pass
    deadline = time.monotonic() + SMS_WAIT_S
    row = get_sms(db, sms_id)
    while row["state"] in ("queued", "sending") and time.monotonic() < deadline:
        time.sleep(0.5)
        row = get_sms(db, sms_id)
    if row["state"] in ("sent", "delivered"):
        return Check("sms", "PASS", f"#{sms_id} to {row['number']} {row['state']}")
    return Check(
        "sms",
        "FAIL",
        f"#{sms_id} to {row['number']}: {row['state']} {row['error'] or ''}".strip(),
        "see `centralka sms list`",
    )


# --- SIP ----------------------------------------------------------------------------------------
def trunk_check(settings, status) -> Check:
    if not settings.trunk.get("enabled"):
        return Check("sip_trunk", "SKIP", "no SIP trunk is configured ([trunk] enabled = false)")
    if status is None:
        return Check("sip_trunk", "FAIL", "the core is not running", "start the core first")
    t = status["trunk"]
    if t["state"] == "registered":
        return Check("sip_trunk", "PASS", f"registered at {settings.trunk.registrar}")
    why = f"{t['state']}: {t.get('code') or ''} {t.get('reason') or ''}".strip()
    return Check("sip_trunk", "FAIL", why, "check [trunk] username/password and the provider's status")


def desk_phone_check(settings, db, status) -> Check:
    if not settings.kamailio.get("enabled"):
        return Check("desk_phones", "SKIP", "no desk phone registrar ([kamailio] enabled = false)")
    phones = list_phones(db)
    if status is None or not (status.get("desk_phones") or {}).get("running"):
        return Check("desk_phones", "FAIL", "the registrar (Kamailio) is not running", "start the core; see its log")
    if not phones:
        return Check("desk_phones", "WARN", "no desk phone is configured", "centralka phones add 201")
    where = status["desk_phones"]["registrar"]
    return Check("desk_phones", "PASS", f"registrar at {where}, {len(phones)} desk phone(s) configured")


# --- the LED and the button -----------------------------------------------------------------------
def gpio_checks(settings, factory=None) -> list[Check]:
    g = settings.sections.get("gpio") or {}
    led_pin, button_pin = g.get("led_pin"), g.get("button_pin")
    if factory is None and g.get("mock"):
        from gpiozero.pins.mock import MockFactory

        factory = MockFactory()
    out = []
    for name, pin, probe in (("led", led_pin, _led), ("button", button_pin, _button)):
        if pin in (None, "", -1):
            out.append(Check(name, "SKIP", f"no {name} pin configured ([gpio] {name}_pin)"))
            continue
        try:
            out.append(probe(int(pin), factory))
        except Exception as exc:  # noqa: BLE001 — gpiozero raises many kinds; say which
            out.append(
                Check(
                    name,
                    "FAIL",
                    f"GPIO{pin}: {type(exc).__name__}: {exc}",
                    "on the Pi: check the wiring and the pin number; elsewhere set [gpio] mock = true",
                )
            )
    return out


def panel_checks(settings, ask) -> list[Check]:
    """The LED and button through the running core (a pin belongs to one process at a time)."""
    try:
        reply = ask("panel-test")
    except CoreNotRunning as exc:
        reply = {"ok": False, "error": str(exc)}
    if not reply.get("ok"):
        return [
            Check(n, "FAIL", f"the core could not test it: {reply.get('error')}", "see the core's log")
            for n in ("led", "button")
        ]
    out = []
    led, button = reply.get("led"), reply.get("button")
    if led is None:
        out.append(Check("led", "SKIP", "no LED pin configured ([gpio] led_pin), or the core could not claim it"))
    elif led["followed"]:
        out.append(Check("led", "PASS", f"{led['pin']} switched on and off (by the core)"))
    else:
        out.append(Check("led", "FAIL", f"{led['pin']} did not follow on/off", "check the LED's wiring"))
    if button is None:
        out.append(
            Check("button", "SKIP", "no button pin configured ([gpio] button_pin), or the core could not claim it")
        )
    elif button["pressed"]:
        out.append(
            Check("button", "WARN", f"{button['pin']} reads pressed", "release the button, or check for a short")
        )
    else:
        out.append(Check("button", "PASS", f"{button['pin']} readable (released, read by the core)"))
    return out


def _led(pin: int, factory) -> Check:
    from gpiozero import LED

    led = LED(pin, pin_factory=factory)
    try:
        led.on()
        lit = led.is_lit
        led.off()
        if not lit or led.is_lit:
            return Check("led", "FAIL", f"GPIO{pin} did not follow on/off", "check the LED's wiring")
        return Check("led", "PASS", f"GPIO{pin} switched on and off")
    finally:
        led.close()


def _button(pin: int, factory) -> Check:
    from gpiozero import Button

    button = Button(pin, pin_factory=factory)
    try:
        if button.is_pressed:
            return Check("button", "WARN", f"GPIO{pin} reads pressed", "release the button, or check for a short")
        return Check("button", "PASS", f"GPIO{pin} readable (released)")
    finally:
        button.close()


# --- storage, clock, the call limit ----------------------------------------------------------------
def storage_checks(settings, db) -> list[Check]:
    data = Path(settings.box.data_dir)
    out = []
    free_mb = shutil.disk_usage(data).free / 2**20
    if free_mb < MIN_FREE_MB:
        out.append(Check("storage_space", "FAIL", f"{free_mb:.0f} MB free on {data}", "delete old recordings"))
    elif free_mb < LOW_FREE_MB:
        out.append(Check("storage_space", "WARN", f"only {free_mb:.0f} MB free on {data}", "free some space soon"))
    else:
        out.append(Check("storage_space", "PASS", f"{free_mb / 1024:.1f} GB free on {data}"))
    problems = integrity_problems(db)
    if problems:
        out.append(
            Check("database", "FAIL", f"integrity check: {problems[0]}", "restore the last backup (centralka restore)")
        )
    else:
        out.append(Check("database", "PASS", "integrity check ok"))
    probe = data / f".hw-test-{os.getpid()}"
    try:
        payload = os.urandom(4096)
        with open(probe, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        ok = probe.read_bytes() == payload
        out.append(
            Check("storage_write", "PASS" if ok else "FAIL", f"wrote and read back 4 kB on {data}")
            if ok
            else Check("storage_write", "FAIL", "read back differs", "replace the SD card")
        )
    except OSError as exc:
        out.append(Check("storage_write", "FAIL", f"cannot write on {data}: {exc}", "check the data partition"))
    finally:
        probe.unlink(missing_ok=True)
    return out


def clock_check() -> Check:
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("clock", "WARN", f"cannot tell whether the clock is synchronised ({exc})", "check NTP")
    if out.returncode != 0:
        why = (out.stderr or out.stdout).strip().splitlines()[:1] or ["timedatectl failed"]
        return Check("clock", "WARN", f"cannot tell whether the clock is synchronised: {why[0]}", "check NTP")
    if out.stdout.strip() == "yes":
        return Check("clock", "PASS", "synchronised by NTP")
    return Check("clock", "WARN", "not synchronised by NTP", "check the network and systemd-timesyncd")


def call_limit_check(status) -> Check:
    if status is None:
        return Check("call_limit", "FAIL", "the core is not running", "start the core first")
    limit, build = status["call_limit"], status["build_call_limit"]
    callers = max(1, limit // 2)
    why = f"{limit} call legs (build {build}): {callers} callers at once, each with a leg for the transfer"
    if build <= 4:
        return Check("call_limit", "WARN", why, "the PyPI pjsua2 wheel: the Pi image builds pjproject with more")
    return Check("call_limit", "PASS", why)
