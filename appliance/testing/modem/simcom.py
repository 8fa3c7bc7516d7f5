"""SIMCom SIM7600E-H: LTE module.

AT on ttyUSB2, PCM audio on ttyUSB4 (interface 6) after AT+CPCMREG=1, which it takes only once a
call is connected, and for that call. Answered calls report "VOICE CALL: BEGIN" / "VOICE CALL:
END: <duration>"; a caller who hangs up before we answer only gives "NO CARRIER". AT+CLAC
answers ERROR (python-gsmmodem's own comment: SIMCom modems "don't support AT+CLAC"), so the
library probes commands one by one. AT+CGMR answers with a "+CGMR: " prefix. +DDET is a SIM800
command; we assume the SIM7600 lacks it (unverified).
"""

from __future__ import annotations

from .profile import COMMON_COMMANDS, SIM_COMMANDS, AtError, Call, Profile, int_arg


class Simcom(Profile):
    def connected_urcs(self, call: Call) -> list[str]:
        return ["VOICE CALL: BEGIN"]

    def ended_urcs(self, call: Call, *, duration: int, remote: bool) -> list[str]:
        lines = [f"VOICE CALL: END: {duration:06d}"] if call.answered_at else []
        return lines + super().ended_urcs(call, duration=duration, remote=remote)

    def handle_cpcmreg(self, modem, op, args):
        if op == "read":
            return [f"+CPCMREG: {1 if modem.voice_on else 0}"]
        if op == "test":
            return ["+CPCMREG: (0,1)"]
        enable = int_arg(args[0] if args else "0")
        if enable == 1 and not modem.in_call():
            raise AtError("plain")  # only once a call is connected
        modem.switch_voice(enable == 1, "+CPCMREG")
        return []


SIMCOM = Simcom(
    key="simcom",
    manufacturer="SIMCOM INCORPORATED",
    model="SIMCOM_SIM7600E-H",
    revision="+CGMR: LE20B04SIM7600M22",
    imei="867211034567896",
    usb_name="usb-SimTech__Incorporated_SimTech__Incorporated_0123456789ABCDEF-if02-port0",
    at_port=2,
    voice_port=4,
    commands=COMMON_COMMANDS
    | {"+VTS", "+CEREG", "+CPCMREG", "+CPCMFRM", "+CICCID", "+CPSI", "+CNMP", "+CSDVC", "+CNSMOD"},
    clac=False,
    clac_line_end="",
    not_supported="ERROR",
    access_tech=7,
    charset="IRA",
    charsets='+CSCS: ("IRA","GSM","UCS2")',
    cpms_test='+CPMS: ("ME","MT","SM","SR"),("ME","MT","SM","SR"),("ME","MT","SM","SR")',
    clip_tail=',"",0,"",0',
    voice_command="+CPCMREG",
    boot_lines=("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"),
    sim_commands=SIM_COMMANDS | {"+CICCID"},
)
