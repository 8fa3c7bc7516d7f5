"""python-gsmmodem-new, with the defects that matter to Centralka handled around it.

``Modem`` is a thin subclass of ``gsmmodem.modem.GsmModem``: the library still opens the port,
runs its initialisation, parses errors and reads stored SMS. What changes (the library itself is
never patched; see ../shared/ARCHITECTURE.md and tests/test_modem_emulator.py for the defects):

* **Unsolicited lines go to one sink, in order, as lines** — never to a fresh thread per
  notification (the library's threads overlap, and it drops a +CMTI that shares a read with
  another). The supervisor parses them on the thread that owns the port.
* **Unsolicited lines inside a command's reply are taken out of it** (a RING or Huawei's
  ``^RSSI`` arriving while ``AT+CSQ`` runs would otherwise become "the reply").
* **Late replies are drained**: after a timeout the port is "dirty"; before the next command a
  resync pings until one bare ``OK`` arrives and nothing follows it, so a reply that limps in
  after its timeout is thrown away instead of being handed to the next command.
* **``NO CARRIER``/``BUSY`` end ``ATA``/``ATD``** (the library waits for its timeout) and are also
  reported as call ends: on SIMCom and Quectel a caller hanging up before answer says nothing else.
* **SIM busy (CME 14) and 515 are retried a few times, not forever**.
* **Caller IDs**: ``parse_clip`` keeps national numbers national (type 129 → ``600123456``) and
  gives ``+`` only to type 145; the library puts ``+`` in front of everything.
* **Emoji**: outgoing text is handed to the library's UCS-2 encoder as UTF-16 code units (it
  raises ``ValueError`` on characters above U+FFFF); incoming surrogate pairs are joined back.
* **+CSCS is put back to IRA** whenever the library switched it to UCS2 (after which every string
  reply — operator names, +CLIP numbers — arrives hex-encoded).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable

import serial
from gsmmodem.exceptions import CmeError, CmsError, CommandError, PinRequiredError, TimeoutException
from gsmmodem.modem import TERMINATOR, GsmModem
from gsmmodem.pdu import decodeSmsPdu
from gsmmodem.serial_comms import SerialComms

from ..errors import CentralkaError
from .sender import ModemSender

log = logging.getLogger("centralka.gsm.modem")


class ModemError(CentralkaError, RuntimeError):
    """The GSM modem cannot do what was asked."""


class ModemUnavailable(ModemError):
    """There is no working modem right now (absent, recovering, PIN problem)."""


class ModemHung(ModemError, TimeoutError):
    """The modem stopped answering AT commands."""


class PinProblem(ModemError):
    """The SIM wants a PIN we do not have, refused ours, or wants its PUK."""


# The command each model needs to put call audio on its voice port (see the emulator's profiles
# in appliance/testing/modem/ and the vendor manuals): Huawei after ATA/ATD, Quectel any time
# (serial PCM on the NMEA port), SIMCom only once the call is connected.
VOICE_ON = {"huawei": "AT^DDSETEX=2", "quectel": "AT+QPCMV=1,0", "simcom": "AT+CPCMREG=1"}

# Lines a modem sends on its own. Prefixes that are also replies to a command we send are only
# treated as unsolicited while a different command is running.
URC_PREFIXES = (
    "RING",
    "+CRING:",
    "+CLIP:",
    "+CMTI:",
    "+CDSI:",
    "+CMT:",
    "+CDS:",
    "^CEND:",
    "^CONN:",
    "^ORIG:",
    "^CONF:",
    "^RSSI:",
    "^MODE:",
    "^BOOT:",
    "^SRVST:",
    "^SIMST:",
    "^DSFLOWRPT:",
    "VOICE CALL:",
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+CUSD:",
    "+QIND:",
    "+CPIN:",
    "RDY",
    "SMS DONE",
    "PB DONE",
    "+CFUN:",
    "+QUSIM:",
    "MISSED_CALL:",
    "+CIEV:",
)
# A PDU line follows these.
URC_WITH_PDU = ("+CMT:", "+CDS:")
CALL_RESULTS = ("NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE")
_FINAL = re.compile(r"^(OK|ERROR|\+CM[ES] ERROR:.*|COMMAND NOT SUPPORT)$")
_CM_ERROR = re.compile(r"^\+(CM[ES]) ERROR: (\d+)$")
_CLIP = re.compile(r'^\+CLIP:\s*"([^"]*)"\s*(?:,\s*(\d+))?')
_HEX_UCS2 = re.compile(r"^(?:[0-9A-Fa-f]{4})+$")
BUSY_RETRIES = 3


def fix_caller_id(number: str | None, ton: int | None) -> str:
    """The caller's number as the network gave it: ``+`` only for type 145 (international)."""
    number = (number or "").strip()
    if not number:
        return ""
    if ton is not None and ton & 0x70 == 0x10:  # 145 / 0x91: international
        return number if number.startswith("+") else "+" + number
    return number  # 129 unknown, 161 national: keep it as dialled


def parse_clip(line: str, *, ucs2: bool = False) -> tuple[str, int | None] | None:
    """(caller, type of number) from a +CLIP line; caller "" when withheld. None if not +CLIP."""
    m = _CLIP.match(line.strip())
    if not m:
        return None
    number, ton = m.group(1), (int(m.group(2)) if m.group(2) else None)
    if ucs2 and number.startswith("00") and _HEX_UCS2.match(number):  # +CSCS was left at UCS2
        try:
            number = bytes.fromhex(number).decode("utf-16-be")
        except ValueError:
            pass
    return fix_caller_id(number, ton), ton


def join_surrogates(text: str | None) -> str:
    """Text decoded by the library from UCS-2 keeps emoji as two surrogates; join them (SQLite
    cannot store a lone surrogate), and replace any half pair left by a split."""
    if not text:
        return text or ""
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")


def utf16_units(text: str) -> str:
    """Characters above U+FFFF as their two UTF-16 surrogates, which the library's UCS-2 encoder
    packs as two 16-bit units (what a phone expects) instead of raising ``ValueError``."""
    if all(ord(c) <= 0xFFFF for c in text):
        return text
    raw = text.encode("utf-16-be", "surrogatepass")
    return "".join(chr(int.from_bytes(raw[i : i + 2], "big")) for i in range(0, len(raw), 2))


def guess_profile(manufacturer: str | None, model: str | None = None) -> str | None:
    text = f"{manufacturer or ''} {model or ''}".lower()
    for key, words in (
        ("huawei", ("huawei",)),
        ("simcom", ("simcom", "simtech", "sim7")),
        ("quectel", ("quectel", "ec25", "eg25", "ec21")),
    ):
        if any(w in text for w in words):
            return key
    return None


def decode_pdu(pdu: str) -> dict:
    """The library's PDU decoder, with texts made storable."""
    data = decodeSmsPdu(pdu)
    if "text" in data:
        data["text"] = join_surrogates(data["text"])
    return data


class _OpenOnce(SerialComms):
    # GsmModem.connect() opens the port itself; Modem opens it first (to ping and to enter the
    # PIN exactly once), so the library's open becomes a no-op on an open port.
    def connect(self):
        if getattr(self, "alive", False):
            return
        super().connect()


class Modem(GsmModem, _OpenOnce):
    """One open AT port. Every method runs on the thread that owns it, except ``_handleLineRead``
    (the library's reader thread), which only hands lines over."""

    def __init__(
        self,
        port: str,
        *,
        on_urc: Callable[[tuple[str, ...]], None],
        on_fatal: Callable[[Exception], None] | None = None,
        ping_timeout: float = 2.0,
        drain_s: float = 0.3,
        baudrate: int = 115200,
    ):
        # ds=2 (4th CNMI field): status reports are stored on the modem and announced with +CDSI,
        # so a report that arrives while the core is down is read at the next connect; mt=1:
        # SMS stored, +CMTI.
        super().__init__(
            port,
            baudrate,
            AT_CNMI="2,1,0,2,0",
            requestDelivery=True,
            fatalErrorCallbackFunc=on_fatal or (lambda exc: None),
        )
        self.timeout = 0.1  # pyserial read timeout: how fast close() gets the reader thread back
        self.on_urc = on_urc
        self.ping_timeout = ping_timeout
        self.drain_s = drain_s
        self.dirty = False  # a reply may still be on its way: resync before the next command
        self._sms_input = False  # a timed-out AT+CMGS may have left the modem waiting for a PDU
        self._pending: str | None = None
        self._urc_continues: list[str] | None = None
        self._stray = 0
        self.profile: str | None = None
        self.manufacturer_name: str | None = None
        self.model_name: str | None = None

    # -- reader thread ---------------------------------------------------------------------------
    def _is_urc(self, line: str) -> bool:
        if not line.startswith(URC_PREFIXES):
            return False
        pending = self._pending
        if pending is None:
            return True
        prefix = line.split(":", 1)[0].strip().upper()
        # "+CREG: 0,1" is the reply to AT+CREG?, "+CPIN: READY" to AT+CPIN?.
        return not (prefix.startswith(("+", "^")) and pending.upper().startswith("AT" + prefix))

    def _handleLineRead(self, line, checkForResponseTerm=True):
        if self._urc_continues is not None:  # the PDU line after +CMT: / +CDS:
            lines, self._urc_continues = tuple(self._urc_continues + [line]), None
            self.on_urc(lines)
            return
        waiting = self._responseEvent is not None and not self._responseEvent.is_set()
        if waiting and self._pending and line.strip() == self._pending.strip():
            return  # echo (ATZ and a power cycle turn it back on)
        if checkForResponseTerm and line in CALL_RESULTS:
            pending = (self._pending or "").upper()
            if waiting and pending.startswith(("ATA", "ATD", "ATH", "AT+CHUP")):
                self._response.append(line)
                self._responseEvent.set()
            self.on_urc((line,))  # a call ended (or never started): the supervisor decides
            return
        if checkForResponseTerm and self._is_urc(line):
            if line.startswith(URC_WITH_PDU):
                self._urc_continues = [line]
            else:
                self.on_urc((line,))
            return
        if waiting:
            self._response.append(line)
            if not checkForResponseTerm or _FINAL.match(line):
                self._responseEvent.set()
            return
        # Nothing asked for this: a reply that arrived after its command timed out.
        self._stray += 1
        log.debug("drained a stray line: %r", line)

    def _handleModemNotification(self, lines):  # not reached: _handleLineRead routes everything
        self.on_urc(tuple(lines))

    # -- commands --------------------------------------------------------------------------------
    def write(
        self,
        data,
        waitForResponse=True,
        timeout=10,
        parseError=True,
        writeTerm=TERMINATOR,
        expectedResponseTermSeq=None,
    ):
        if not waitForResponse:
            return SerialComms.write(self, data + writeTerm, waitForResponse=False)
        if self.dirty:
            self.resync()
        for attempt in range(BUSY_RETRIES + 1):
            lines = self._exchange(data, writeTerm, timeout, expectedResponseTermSeq)
            status = lines[-1] if lines else ""
            m = _CM_ERROR.match(status)
            if parseError and m and int(m.group(2)) in (14, 515) and attempt < BUSY_RETRIES:
                time.sleep(0.2 * (attempt + 1))  # SIM busy / still initialising: a few tries only
                continue
            break
        if parseError:
            if m:
                code = int(m.group(2))
                raise (CmeError if m.group(1) == "CME" else CmsError)(data, code)
            if "ERROR" in status or status == "COMMAND NOT SUPPORT":
                raise CommandError(f"{data} ({status})")
            if status in CALL_RESULTS:
                raise CommandError(f"{data} ({status})")
        return lines

    def _exchange(self, data, writeTerm, timeout, expected):
        self._pending = data
        if writeTerm != TERMINATOR:
            self._sms_input = False  # Ctrl-Z ends the PDU input whatever the reply
        elif expected == "> ":
            self._sms_input = True
        try:
            lines = SerialComms.write(
                self, data + writeTerm, waitForResponse=True, timeout=timeout, expectedResponseTermSeq=expected
            )
        except TimeoutException:
            self.dirty = True
            raise
        finally:
            self._pending = None
        if expected == "> " and lines and lines[-1].strip() != ">":
            self._sms_input = False  # refused: no prompt
        return lines

    def resync(self, tries: int = 2) -> None:
        """Throw away whatever a timed-out command still sends; ModemHung if nothing answers."""
        self.dirty = False
        if self._sms_input:
            # A modem left at the "> " prompt takes everything as PDU text: ESC cancels it.
            SerialComms.write(self, "\x1b\r", waitForResponse=False)
            time.sleep(self.drain_s)
            self._sms_input = False
        for _ in range(tries):
            before = self._stray
            try:
                lines = self._exchange("AT", TERMINATOR, self.ping_timeout, None)
            except TimeoutException:
                continue
            time.sleep(self.drain_s)
            if lines == ["OK"] and self._stray == before:
                self.dirty = False
                return
            log.info("resync: drained a late reply (%s)", lines)
        self.dirty = True
        raise ModemHung("the modem does not answer AT")

    def ping(self, timeout: float | None = None) -> None:
        try:
            self.write("AT", timeout=timeout or self.ping_timeout)
        except TimeoutException as exc:
            raise ModemHung("no answer to AT") from exc

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, pin_handler: Callable[["Modem", str], None]) -> None:
        """Open the port, make sure the modem answers, unlock the SIM through ``pin_handler``
        (called with the +CPIN state when it is not READY), then the library's initialisation."""
        try:
            _OpenOnce.connect(self)
        except (serial.SerialException, OSError) as exc:
            raise ModemUnavailable(f"cannot open {self.port}: {exc}") from exc
        self.dirty = True  # whatever the modem said before we opened is not ours
        self.resync()
        self.write("ATE0", timeout=self.ping_timeout)
        self.write("AT+CMEE=1", timeout=self.ping_timeout, parseError=False)
        state = self.sim_state()
        if state != "READY":
            pin_handler(self, state)
        try:
            GsmModem.connect(self, pin=None)
        except PinRequiredError as exc:
            raise PinProblem("the SIM asks for its PIN again") from exc
        # The library leaves these alone: IRA so string replies are plain text; +CREG
        # unsolicited so losing the network is noticed between polls.
        self.write('AT+CSCS="IRA"', timeout=self.ping_timeout, parseError=False)
        self._smsEncoding = "IRA"
        self.write("AT+CREG=1", timeout=self.ping_timeout, parseError=False)
        self.manufacturer_name = self._first("AT+CGMI")
        self.model_name = self._first("AT+CGMM")
        self.profile = guess_profile(self.manufacturer_name, self.model_name)

    def close(self) -> None:
        try:
            if getattr(self, "alive", False) or hasattr(self, "rxThread"):
                self.alive = False
                thread = getattr(self, "rxThread", None)
                if thread is not None and thread is not threading.current_thread():
                    thread.join(2)
            if hasattr(self, "serial"):
                self.serial.close()
        except Exception:  # the port may be gone already
            log.debug("closing %s", self.port, exc_info=True)

    # -- queries ---------------------------------------------------------------------------------
    def _first(self, command: str) -> str | None:
        try:
            lines = self.write(command, timeout=self.ping_timeout)
        except CommandError:
            return None
        return next((ln for ln in lines if ln != "OK"), None)

    def sim_state(self) -> str:
        """+CPIN state: READY, SIM PIN, SIM PUK…; SIM BUSY / NO SIM from the error it gives."""
        try:
            lines = self.write("AT+CPIN?", timeout=self.ping_timeout)
        except CmeError as exc:
            return {10: "NO SIM", 13: "SIM FAILURE", 14: "SIM BUSY", 11: "SIM PIN", 12: "SIM PUK"}.get(
                exc.code, f"CME {exc.code}"
            )
        line = next((ln for ln in lines if ln.startswith("+CPIN:")), "")
        return line.split(":", 1)[1].strip().strip('"') if line else "UNKNOWN"

    def signal(self) -> int | None:
        line = next((ln for ln in self.write("AT+CSQ", timeout=self.ping_timeout) if ln.startswith("+CSQ:")), "")
        m = re.match(r"\+CSQ:\s*(\d+)", line)
        if not m or int(m.group(1)) == 99:
            return None
        return min(int(m.group(1)), 31)

    def registered(self) -> bool:
        lines = self.write("AT+CREG?", timeout=self.ping_timeout)
        line = next((ln for ln in lines if ln.startswith("+CREG:")), "")
        fields = [f.strip() for f in line.split(":", 1)[-1].split(",")]
        return len(fields) >= 2 and fields[1] in ("1", "5")

    def operator(self) -> str | None:
        lines = self.write("AT+COPS?", timeout=self.ping_timeout)
        m = next((re.match(r'\+COPS:\s*\d+,\d+,"([^"]*)"', ln) for ln in lines if ln.startswith("+COPS:")), None)
        if not m:
            return None
        name = m.group(1)
        if _HEX_UCS2.match(name) and name.startswith("00"):  # +CSCS left at UCS2 by someone
            try:
                name = bytes.fromhex(name).decode("utf-16-be")
            except ValueError:
                pass
        return name

    def list_stored(self) -> list[tuple[int, str]]:
        """(index, PDU) of every message in the read memory (PDU mode, AT+CMGL=4)."""
        out, index = [], None
        for line in self.write("AT+CMGL=4", timeout=10):
            m = re.match(r"\+CMGL:\s*(\d+),", line)
            if m:
                index = int(m.group(1))
            elif index is not None and line != "OK":
                out.append((index, line))
                index = None
        return out

    def read_stored(self, index: int, memory: str | None = None) -> str | None:
        """The PDU stored at ``index`` (None if the slot is empty)."""
        self._setSmsMemory(readDelete=memory)
        try:
            lines = self.write(f"AT+CMGR={index}", timeout=10)
        except CmsError as exc:
            if exc.code == 321:  # invalid memory index: already read and deleted
                return None
            raise
        return lines[1] if len(lines) >= 3 else None

    def delete_stored(self, index: int, memory: str | None = None) -> None:
        self._setSmsMemory(readDelete=memory)
        self.write(f"AT+CMGD={index},0", timeout=10)

    # -- SMS through the library's own sendSms (the outbox uses ModemSmsSender instead) --------
    def sendSms(self, destination, text, *args, **kwargs):
        try:
            return super().sendSms(destination, utf16_units(text), *args, **kwargs)
        finally:
            if self._smsEncoding == "UCS2":
                try:
                    self.write('AT+CSCS="IRA"', timeout=self.ping_timeout, parseError=False)
                    self._smsEncoding = "IRA"
                except (TimeoutException, serial.SerialException, ModemHung):
                    pass


class ModemSmsSender(ModemSender):
    """The outbox's sender; emoji go out as UTF-16 surrogate pairs instead of raising."""

    def send(self, number: str, text: str, *, ucs2: bool) -> list[int]:
        return super().send(number, utf16_units(text), ucs2=ucs2)
