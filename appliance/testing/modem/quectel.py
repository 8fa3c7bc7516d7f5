"""Quectel EC25-E: LTE module.

AT on ttyUSB2; AT+QPCMV=1,0 streams call PCM on the USB NMEA port (ttyUSB1), 1,2 on its USB
sound card (not emulated); the setting stays after the call. No call-state URCs at all: the
library falls back to polling AT+CLCC for calls it dials. +CLIP as in the EC25 manual. ATI
answers three bare lines (manufacturer, model, "Revision: …").
"""

from __future__ import annotations

from .profile import COMMON_COMMANDS, SIM_COMMANDS, Profile, int_arg


class Quectel(Profile):
    voice_lasts_one_call = False  # +QPCMV stays set from call to call

    def identification(self) -> list[str]:
        return [self.manufacturer, self.model, f"Revision: {self.revision}"]

    def handle_qpcmv(self, modem, op, args):
        if op == "read":
            return ["+QPCMV: 1,0" if modem.voice_on else "+QPCMV: 0"]
        if op == "test":
            return ["+QPCMV: (0,1),(0-2)"]
        enable = int_arg(args[0] if args else "0")
        port = int_arg(args[1]) if len(args) > 1 else 0
        # Port 0 is the USB NMEA port (our voice pty); 2 is the UAC sound card we do not emulate.
        modem.switch_voice(enable == 1 and port == 0, "+QPCMV")
        return []


QUECTEL = Quectel(
    key="quectel",
    manufacturer="Quectel",
    model="EC25",
    revision="EC25EFAR06A06M4G",
    imei="862412045678905",
    usb_name="usb-Android_Android-if02-port0",
    at_port=2,
    voice_port=1,
    commands=COMMON_COMMANDS
    | {
        "+VTS",
        "+VTD",
        "+CEREG",
        "+QPCMV",
        "+QCCID",
        "+QSPN",
        "+QCFG",
        "+QURCCFG",
        "+QINDCFG",
        "+QTONEDET",
        "+QAUDMOD",
    },
    clac=True,
    clac_line_end="",
    not_supported="ERROR",
    access_tech=7,
    charset="GSM",
    charsets='+CSCS: ("GSM","IRA","UCS2")',
    cpms_test='+CPMS: ("ME","MT","SM","SR"),("ME","MT","SM","SR"),("ME","MT","SM","SR")',
    clip_tail=',"",0,"",0',
    voice_command="+QPCMV",
    boot_lines=("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"),
    sim_commands=SIM_COMMANDS | {"+QCCID"},
)
