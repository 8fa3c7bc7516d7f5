"""Finding the GSM modem's serial ports without trusting /dev/ttyUSB numbering.

``find_modem(configured)`` looks, in order, at:

1. the configured value — ``$CENTRALKA_MODEM`` / ``modem.device``: ``"AT_PORT"`` or
   ``"AT_PORT,VOICE_PORT"`` (used as given when the AT port exists);
2. ``/dev/centralka-modem-at`` and ``/dev/centralka-modem-voice``, the links our udev rules
   (systemd/99-centralka-modem.rules) make by USB vendor/product and interface number — they
   follow the modem when a reset re-enumerates it under another ttyUSB number;
3. ``/dev/serial/by-id/*`` (udev's own links), matched by the USB ids and interface numbers in
   sysfs, or failing that by the name;
4. a probe of ``/dev/ttyUSB*`` and ``/dev/ttyACM*``: ``ATI`` with a short timeout, the answer
   tells Huawei, SIMCom and Quectel apart; the voice port comes from sysfs (USB interface number)
   or, where sysfs has nothing (an emulator's pty), from the model's usual port layout.

Also here: the sysfs helpers that find a tty's USB device and reset it (``USBDEVFS_RESET``, or
de-authorising and re-authorising the device), the last rung of the supervisor's ladder.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import re
import time
from dataclasses import dataclass

import serial

log = logging.getLogger("centralka.gsm.discovery")

USBDEVFS_RESET = (ord("U") << 8) | 20  # _IO('U', 20) from linux/usbdevice_fs.h


@dataclass(frozen=True)
class ModemPorts:
    at: str
    voice: str | None
    profile: str | None


@dataclass(frozen=True)
class UsbModel:
    profile: str
    name: str
    at_interface: int
    voice_interface: int | None


# USB ids in their "modem" mode (after usb_modeswitch) and which interface is which. Where the
# numbers come from is said per entry; none was checked on hardware here (hw-tests/ does that).
USB_MODELS = {
    # Huawei E173 / E1550 family. Interface 0 is the PPP modem, 1 the voice (PCM) port, 2 the
    # PCUI (AT) port: chan_dongle's documentation pairs data=/dev/ttyUSB2 with audio=/dev/ttyUSB1
    # and its udev examples match ID_USB_INTERFACE_NUM 01 (audio) and 02 (data). 1001 is the
    # classic "modem mode" id, 1436 the E173's (the E173 firmware variants we know use the same
    # interface order — not verified), 140c/1506 later sticks of the same family.
    ("12d1", "1001"): UsbModel("huawei", "Huawei E1550/E173 (1001)", 2, 1),
    ("12d1", "1436"): UsbModel("huawei", "Huawei E173 (1436)", 2, 1),
    ("12d1", "140c"): UsbModel("huawei", "Huawei E173/E1750 (140c)", 2, 1),
    ("12d1", "1506"): UsbModel("huawei", "Huawei (1506)", 2, 1),
    # SIMCom SIM7600: SIMCom's Linux USB user guide lists interface 0 diagnostics, 1 NMEA, 2 AT,
    # 3 PPP modem, 4 audio (PCM after AT+CPCMREG=1), 5 the network interface.
    ("1e0e", "9001"): UsbModel("simcom", "SIMCom SIM7600", 2, 4),
    # Quectel EC25: Quectel's Linux USB driver guide lists interface 0 DM, 1 NMEA, 2 AT, 3 PPP
    # modem, 4 QMI network; AT+QPCMV=1,0 streams call audio on the NMEA port (interface 1).
    ("2c7c", "0125"): UsbModel("quectel", "Quectel EC25", 2, 1),
}

# Where the voice port sits relative to the AT port on one modem when sysfs cannot tell
# (same layout as above: ttyUSB numbers follow interface numbers within one device).
_VOICE_OFFSET = {"huawei": -1, "simcom": 2, "quectel": -1}
_NAME_HINTS = (("huawei", "huawei"), ("simtech", "simcom"), ("simcom", "simcom"), ("quectel", "quectel"))


def profile_from_ati(text: str) -> str | None:
    low = text.lower()
    if "huawei" in low:
        return "huawei"
    if "simcom" in low or "sim7600" in low:
        return "simcom"
    if "quectel" in low or re.search(r"\beg?[cg]2[15]\b", low):
        return "quectel"
    return None


# ------------------------------------------------------------------------------------ sysfs
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _usb_dirs(tty: str, sysfs: str = "/sys") -> tuple[str | None, str | None]:
    """(USB interface dir, USB device dir) in sysfs for a tty path (links resolved)."""
    name = os.path.basename(os.path.realpath(tty))
    node = os.path.realpath(os.path.join(sysfs, "class", "tty", name, "device"))
    interface = None
    for _ in range(6):
        if not node or node == "/" or not os.path.isdir(node):
            return None, None
        if interface is None and os.path.exists(os.path.join(node, "bInterfaceNumber")):
            interface = node
        if os.path.exists(os.path.join(node, "idVendor")):
            return interface, node
        node = os.path.dirname(node)
    return None, None


def usb_info(tty: str, sysfs: str = "/sys") -> dict | None:
    """vendor, product, interface number and USB device dir for a tty; None if not USB."""
    interface, device = _usb_dirs(tty, sysfs)
    if device is None:
        return None
    number = _read(os.path.join(interface, "bInterfaceNumber")) if interface else None
    return {
        "vendor": (_read(os.path.join(device, "idVendor")) or "").lower(),
        "product": (_read(os.path.join(device, "idProduct")) or "").lower(),
        "interface": int(number, 16) if number else None,
        "device": device,
    }


def usb_device_of(tty: str, sysfs: str = "/sys") -> str | None:
    return _usb_dirs(tty, sysfs)[1]


def reset_usb_device(device_dir: str, dev_dir: str = "/dev") -> None:
    """Reset a USB device (a sysfs dir such as /sys/bus/usb/devices/1-1.3): USBDEVFS_RESET on
    its /dev/bus/usb node, or else switch ``authorized`` off and on (both need root)."""
    bus, dev = _read(os.path.join(device_dir, "busnum")), _read(os.path.join(device_dir, "devnum"))
    if bus and dev:
        node = os.path.join(dev_dir, "bus", "usb", f"{int(bus):03d}", f"{int(dev):03d}")
        try:
            fd = os.open(node, os.O_WRONLY)
            try:
                fcntl.ioctl(fd, USBDEVFS_RESET, 0)
                log.warning("USB reset of %s (%s)", device_dir, node)
                return
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("USBDEVFS_RESET on %s failed: %s; trying the authorized switch", node, exc)
    authorized = os.path.join(device_dir, "authorized")
    with open(authorized, "w") as f:
        f.write("0")
    time.sleep(1.0)
    with open(authorized, "w") as f:
        f.write("1")
    log.warning("USB device %s de- and re-authorised", device_dir)


# ------------------------------------------------------------------------------------ probing
def probe(path: str, timeout: float = 0.5) -> str | None:
    """Send ATI; the profile the answer names, or None (no answer, not a modem, busy port)."""
    try:
        with serial.Serial(path, 115200, timeout=timeout, write_timeout=timeout, exclusive=True) as port:
            port.reset_input_buffer()
            port.write(b"ATE0\rATI\r")
            deadline = time.monotonic() + timeout
            got = b""
            while time.monotonic() < deadline:
                got += port.read(256)
                if re.search(rb"\r\n(OK|ERROR)\r\n", got) and profile_from_ati(got.decode("latin-1")):
                    break
    except (serial.SerialException, OSError, ValueError) as exc:
        if getattr(exc, "errno", None) not in (errno.ENOENT, errno.EACCES):
            log.debug("probe %s: %s", path, exc)
        return None
    return profile_from_ati(got.decode("latin-1"))


def _sibling(at: str, profile: str | None, sysfs: str) -> str | None:
    """The voice port of the modem whose AT port is ``at``."""
    info = usb_info(at, sysfs)
    if info is not None:
        model = USB_MODELS.get((info["vendor"], info["product"]))
        if model is None or model.voice_interface is None:
            return None
        for tty in glob.glob(os.path.join(sysfs, "class", "tty", "tty*")):
            other = usb_info("/dev/" + os.path.basename(tty), sysfs)
            if other and other["device"] == info["device"] and other["interface"] == model.voice_interface:
                return os.path.join("/dev", os.path.basename(tty))
        return None
    m = re.match(r"(.*tty(?:USB|ACM))(\d+)$", at)
    if m and profile in _VOICE_OFFSET:
        candidate = f"{m.group(1)}{int(m.group(2)) + _VOICE_OFFSET[profile]}"
        if os.path.exists(candidate):
            return candidate
    return None


def _tty_number(path: str) -> tuple[str, int]:
    m = re.search(r"(\D*)(\d+)$", os.path.basename(path))
    return (m.group(1), int(m.group(2))) if m else (path, 0)


def find_modem(
    configured: str | None, *, dev_dir: str = "/dev", sysfs: str = "/sys", probe_timeout: float = 0.5
) -> ModemPorts | None:
    """The modem's AT and voice ports, or None when there is no modem (never raises for that)."""
    if configured:
        at, _, voice = (p.strip() for p in configured.partition(","))
        if not os.path.exists(at):
            return None
        info = usb_info(at, sysfs)
        model = USB_MODELS.get((info["vendor"], info["product"])) if info else None
        return ModemPorts(at, voice or None, model.profile if model else None)

    link = os.path.join(dev_dir, "centralka-modem-at")
    if os.path.exists(link):
        voice = os.path.join(dev_dir, "centralka-modem-voice")
        info = usb_info(link, sysfs)
        model = USB_MODELS.get((info["vendor"], info["product"])) if info else None
        return ModemPorts(link, voice if os.path.exists(voice) else None, model.profile if model else None)

    for path in sorted(glob.glob(os.path.join(dev_dir, "serial", "by-id", "*"))):
        info = usb_info(path, sysfs)
        if info is not None:
            model = USB_MODELS.get((info["vendor"], info["product"]))
            if model is not None and info["interface"] == model.at_interface:
                return ModemPorts(path, _by_id_voice(path, model, sysfs), model.profile)
            continue
        name = os.path.basename(path).lower()
        hint = next((p for word, p in _NAME_HINTS if word in name), None)
        if hint and re.search(r"-if0?2-port0$", name):
            return ModemPorts(path, None, hint)

    candidates = []
    for pattern in ("ttyUSB*", "ttyACM*"):
        candidates += glob.glob(os.path.join(dev_dir, pattern))
    candidates.sort(key=_tty_number)
    for path in candidates:  # known USB ids first: no need to talk to them
        info = usb_info(path, sysfs)
        model = USB_MODELS.get((info["vendor"], info["product"])) if info else None
        if model is not None and info["interface"] == model.at_interface:
            return ModemPorts(path, _sibling(path, model.profile, sysfs), model.profile)
    present = {(path, _device_id(path)) for path in candidates}
    now = time.monotonic()
    for key in list(_NOT_A_MODEM):
        if key not in present or now - _NOT_A_MODEM[key] > REPROBE_S:
            del _NOT_A_MODEM[key]  # unplugged (or long ago): ask it again
    for path in candidates:
        info = usb_info(path, sysfs)
        if info is not None and (info["vendor"], info["product"]) in USB_MODELS:
            continue  # a known modem's other (non-AT) interface
        key = (path, _device_id(path))
        if key in _NOT_A_MODEM:
            continue  # asked once: the clinic's other serial devices are not asked again and again
        profile = probe(path, probe_timeout)
        if profile is not None:
            return ModemPorts(path, _sibling(path, profile, sysfs), profile)
        _NOT_A_MODEM[key] = now
    return None


# Serial devices that did not answer ATI like a modem, by path and device number (a different
# device plugged in under the same name is probed again), and when they were asked; a modem that
# was merely hung when asked is asked again after REPROBE_S.
_NOT_A_MODEM: dict[tuple[str, int], float] = {}
REPROBE_S = 600.0


def _device_id(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return -1
    return st.st_rdev or st.st_ino


def _by_id_voice(path: str, model: UsbModel, sysfs: str) -> str | None:
    if model.voice_interface is None:
        return None
    # by-id names end in -if<NN>-port0 with NN the interface number (in hex).
    candidate = re.sub(r"-if[0-9a-fA-F]{2}-port0$", f"-if{model.voice_interface:02x}-port0", path)
    if candidate != path and os.path.exists(candidate):
        return candidate
    return _sibling(os.path.realpath(path), model.profile, sysfs)
