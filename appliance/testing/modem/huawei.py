"""Huawei E173: 3G stick, firmware 11.126.x.

The PCUI (AT) port is ttyUSB2 and the voice port ttyUSB1, as chan_dongle's documentation has
them (data=/dev/ttyUSB2, audio=/dev/ttyUSB1). Unknown commands answer "COMMAND NOT SUPPORT" and
+CLAC lists one command per line ending in a stray CR, both as in the E1752 transcript (same
firmware family) kept in python-gsmmodem's test/fakemodems.py. No +VTS: DTMF goes through
^DTMF. Call progress comes as ^ORIG / ^CONF / ^CONN / ^CEND (the E1752 transcript again), and
^CEND replaces NO CARRIER. Call audio goes on with AT^DDSETEX=2, for one call.
"""

from __future__ import annotations

from .profile import COMMON_COMMANDS, SIM_COMMANDS, AtError, Call, Profile, unquote


class Huawei(Profile):
    def dialling_urcs(self, call: Call) -> list[str]:
        return [f"^ORIG:{call.id},0"]

    def alerting_urcs(self, call: Call) -> list[str]:
        return [f"^CONF:{call.id}"]

    def connected_urcs(self, call: Call) -> list[str]:
        return [f"^CONN:{call.id},0"]

    def ended_urcs(self, call: Call, *, duration: int, remote: bool) -> list[str]:
        # ^CEND:<call id>,<duration>,<end status>,<cc cause>; 16 = normal clearing.
        return [f"^CEND:{call.id},{duration},104,16"]

    def handle_cvoice(self, modem, op, args):
        if op == "read":
            # voice enabled, 8000 Hz, 16 bit, 20 ms frames (what chan_dongle checks for)
            return ["^CVOICE:0,8000,16,20"]
        return []

    def handle_ddsetex(self, modem, op, args):
        if op == "set" and args and args[0] == "2":
            modem.switch_voice(True, "^DDSETEX=2")
        return []

    def handle_dtmf(self, modem, op, args):  # AT^DTMF=<call id>,<digit>
        if op != "set" or len(args) < 2:
            return []
        if not modem.in_call():
            raise AtError("CME", 3)
        modem.keys_sent(unquote(args[1]))
        return []


HUAWEI = Huawei(
    key="huawei",
    manufacturer="huawei",
    model="E173",
    revision="11.126.85.00.209",
    imei="861234012345677",
    usb_name="usb-HUAWEI_Technology_HUAWEI_Mobile-if02-port0",
    at_port=2,
    voice_port=1,
    commands=COMMON_COMMANDS
    | {
        "^CVOICE",
        "^DDSETEX",
        "^DTMF",
        "^USSDMODE",
        "^CURC",
        "^SYSINFO",
        "^SYSCFG",
        "^HWVER",
        "^CARDMODE",
        "^ICCID",
        "^SN",
    },
    clac=True,
    clac_line_end="\r",
    not_supported="COMMAND NOT SUPPORT",
    access_tech=2,
    charset="IRA",
    charsets='+CSCS: ("IRA","UCS2","GSM")',
    cpms_test='+CPMS: ("ME","MT","SM","SR"),("ME","MT","SM","SR"),("ME","MT","SM","SR")',
    clip_tail=",,,,0",
    voice_command="^DDSETEX",
    boot_lines=(),  # the E173 says nothing at power-up on the PCUI port
    sim_commands=SIM_COMMANDS | {"^ICCID"},
)
