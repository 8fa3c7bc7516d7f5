"""The pty modem emulator: a Huawei E173, a SIMCom SIM7600 or a Quectel EC25 on pseudo-terminals.

    emulator.py   ModemEmulator: ptys and plugging, AT parsing and dispatch, the 27.007/27.005
                  commands, calls, SMS storage, faults, the voice port (``main``: the CLI)
    profile.py    Profile (data + hooks where models differ), AtError, Call, argument helpers
    huawei.py, simcom.py, quectel.py   one model each: its data and its quirks
    pdu.py        SMS PDU codec (23.040/23.038), independent of the library's
    pcm.py        the voice port's audio format and in-band DTMF

``python -m appliance.testing.modem --profile quectel`` runs one from the command line.
"""

from .emulator import CTRL_Z, ESC, FAULT_KINDS, PROFILES, ModemEmulator, main
from .huawei import HUAWEI
from .pcm import DTMF_FREQUENCIES, FRAME_BYTES, FRAME_SECONDS, SAMPLE_RATE, dtmf_pcm
from .pdu import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    decode_submit_pdu,
    encode_deliver_pdus,
    encode_status_report_pdu,
    gsm7_septets,
    gsm7_text,
    pack7,
    unpack7,
)
from .profile import COMMON_COMMANDS, SIM_COMMANDS, Profile
from .quectel import QUECTEL
from .simcom import SIMCOM

__all__ = [
    "COMMON_COMMANDS",
    "CTRL_Z",
    "DTMF_FREQUENCIES",
    "ESC",
    "FAULT_KINDS",
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "HUAWEI",
    "PROFILES",
    "QUECTEL",
    "SAMPLE_RATE",
    "SIMCOM",
    "SIM_COMMANDS",
    "ModemEmulator",
    "Profile",
    "decode_submit_pdu",
    "dtmf_pcm",
    "encode_deliver_pdus",
    "encode_status_report_pdu",
    "gsm7_septets",
    "gsm7_text",
    "main",
    "pack7",
    "unpack7",
]
