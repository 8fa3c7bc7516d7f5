"""What a modem profile is, and the vocabulary its hooks share with the AT machinery.

A profile (huawei.py, simcom.py, quectel.py) is a ``Profile`` instance: its data (identification
strings, the commands the model has, port layout, reply formats) and, in its subclass, what the
model does differently from plain 3GPP TS 27.007: its call-state URCs, its identification
layout, and its own AT commands. ``ModemEmulator`` (emulator.py) runs the shared part and asks
the profile at each point where models differ:

* ``identification()``                 the lines ATI answers
* ``dialling_urcs(call)``              after ATD…; (Huawei ``^ORIG``)
* ``alerting_urcs(call)``              when the callee's phone rings (Huawei ``^CONF``)
* ``connected_urcs(call)``             when a call is answered, either way
* ``ended_urcs(call, duration, remote)``  when a call ends
* ``voice_lasts_one_call``             whether the voice switch resets when the call ends
* ``handle_<command>(modem, op, args)``  the model's own commands (``handle_ddsetex`` for
  ``AT^DDSETEX``), tried before the emulator's 27.007 handlers; like those they return the
  reply lines and raise ``AtError`` for an error result. ``op`` is "exec", "read", "test" or
  "set"; ``args`` the parameters as written (``unquote``, ``int_arg`` read them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

# 27.007/27.005 commands all three models implement.
COMMON_COMMANDS = frozenset(
    """
+CGMI +CGMM +CGMR +CGSN +CIMI +GMI +GMM +GMR +GSN +GCAP +CFUN +CMEE +CPIN +CSQ +CREG +CGREG
+COPS +CMGF +CSCS +CNMI +CLIP +CLIR +COLP +CRC +CSMP +CPMS +CSCA +CMGS +CMGR +CMGL +CMGD +CMGW
+CMSS +CNMA +CSMS +CLCC +CHUP +CNUM +CLVL +CMUT +CUSD +CCFC +CCWA +CHLD +CPBS +CPBR +CPBW
+CLCK +CPWD +CLAC +CVHU +CCLK +CPAS +CEER +CSSN +CTZR +CTZU +CGDCONT +CGATT +CGACT
""".split()
)

# Commands that need the SIM: "+CME ERROR: 11" while it wants its PIN, 14 while it is busy.
# A profile adds its own (its ICCID command) in ``sim_commands``.
SIM_COMMANDS = frozenset(
    """
+CIMI +CPMS +CMGS +CMGR +CMGL +CMGD +CMGW +CMSS +CSCA +CNUM +CPBS +CPBR +CPBW +CUSD
""".split()
)


class AtError(Exception):
    """A command fails: ``kind`` "CME"/"CMS" with ``code``, "plain" (ERROR) or "unknown"
    (the model's own answer to a command it lacks)."""

    def __init__(self, kind: str, code: int = 0):
        super().__init__(kind, code)
        self.kind, self.code = kind, code


class Final(Exception):
    """A command ends with something other than OK (NO CARRIER, the CMGS prompt, nothing)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass
class Call:
    id: int
    direction: int  # 0 mobile originated, 1 mobile terminated (27.007 +CLCC <dir>)
    state: int  # 0 active, 2 dialing, 3 alerting, 4 incoming
    number: str
    ton: int
    answered_at: float | None = None


def int_arg(arg: str, default: int | None = None) -> int:
    """An integer parameter; +CME ERROR: 50 (incorrect parameters) when it is not one."""
    try:
        return int(arg)
    except (TypeError, ValueError):
        if default is not None and arg in ("", None):
            return default
        raise AtError("CME", 50) from None


def unquote(arg: str) -> str:
    return arg[1:-1] if len(arg) >= 2 and arg[0] == arg[-1] == '"' else arg


@dataclass(frozen=True)
class Profile:
    key: str
    manufacturer: str  # AT+CGMI
    model: str  # AT+CGMM
    revision: str  # AT+CGMR (SIMCom prefixes it with "+CGMR: ")
    imei: str
    usb_name: str  # what udev would put in /dev/serial/by-id/
    at_port: int  # ttyUSB index of the AT port on a fresh plug
    voice_port: int  # ttyUSB index of the PCM port
    commands: frozenset
    clac: bool  # answers AT+CLAC with a list
    clac_line_end: str
    not_supported: str  # final result for a command this model lacks
    access_tech: int  # <AcT>: 2 UTRAN (3G stick), 7 E-UTRAN (LTE module)
    charset: str  # +CSCS after power-on
    charsets: str  # AT+CSCS=? list
    cpms_test: str
    clip_tail: str  # what follows "<number>",<type> in +CLIP
    voice_command: str
    boot_lines: tuple
    sim_commands: frozenset = SIM_COMMANDS

    # ^DDSETEX and +CPCMREG last one call; a profile whose voice switch stays says False.
    voice_lasts_one_call: ClassVar[bool] = True

    def identification(self) -> list[str]:
        """What ATI answers."""
        revision = self.revision.split(": ", 1)[-1]
        return [
            f"Manufacturer: {self.manufacturer}",
            f"Model: {self.model}",
            f"Revision: {revision}",
            f"IMEI: {self.imei}",
            "+GCAP: +CGSM,+DS,+ES",
        ]

    def own_handler(self, name: str):
        """The profile's own handler for the extended command ``name`` (e.g. "^DDSETEX"), or None."""
        handler = getattr(self, "handle_" + re.sub(r"\W", "", name).lower(), None)
        return handler if callable(handler) else None

    # Call-state URCs beyond 27.007's RING / +CLIP / NO CARRIER. Plain 27.007 has none of these.

    def dialling_urcs(self, call: Call) -> list[str]:
        """Sent right after the reply to ATD<number>;"""
        return []

    def alerting_urcs(self, call: Call) -> list[str]:
        """Sent when the dialled phone starts ringing."""
        return []

    def connected_urcs(self, call: Call) -> list[str]:
        """Sent when a call is answered (by ATA here, or by the callee)."""
        return []

    def ended_urcs(self, call: Call, *, duration: int, remote: bool) -> list[str]:
        """Sent when a call ends (``remote``: the other party hung up); ``duration`` in seconds."""
        return ["NO CARRIER"] if remote else []
