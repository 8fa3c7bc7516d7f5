"""Sending one SMS through python-gsmmodem-new, the way the outbox needs it.

The library's own ``sendSms`` is not used: for a multipart message it keeps only the last part's
message reference (so delivery reports of the other parts match nothing), and it cannot say
whether a part left before an error. Here each part is its own ``AT+CMGS``, and every failure is
classified for the outbox (``SmsSendError``): transient or not, and whether a part may already
have left (the outbox then marks the message uncertain instead of sending it twice).
"""

from __future__ import annotations

from gsmmodem.exceptions import CmsError, CommandError, TimeoutException
from gsmmodem.modem import CTRLZ
from gsmmodem.pdu import encodeSmsSubmitPdu

from .outbox import SmsSendError

# +CMS ERROR codes (3GPP TS 24.011 / 27.005) that retrying will not cure: the number does not
# exist or is barred, the PDU is wrong, the SMSC is unknown. Everything else (congestion, network
# out of order, no service, SIM busy, unknown error) is worth another try later.
PERMANENT_CMS = {1, 8, 10, 21, 29, 30, 50, 96, 97, 98, 99, 111, 300, 301, 302, 303, 304, 305, 330}
PROMPT_TIMEOUT_S = 5
SEND_TIMEOUT_S = 35  # the network can take half a minute to acknowledge a part


class ModemSender:
    """``send(number, text, ucs2=...)`` for :class:`appliance.gsm.outbox.Outbox` over a
    connected ``gsmmodem.modem.GsmModem`` (in PDU mode). One thread at a time."""

    def __init__(self, modem):
        self.modem = modem
        self.concat_ref = 0

    def send(self, number: str, text: str, *, ucs2: bool) -> list[int]:
        # The encoder picks UCS-2 itself whenever the text needs it; the outbox planned the same.
        self.concat_ref = (self.concat_ref + 1) % 256
        try:
            pdus = encodeSmsSubmitPdu(number, text, reference=self.concat_ref, requestStatusReport=True)
        except (ValueError, TypeError) as exc:
            raise SmsSendError(f"cannot encode the text: {exc}", transient=False) from exc
        mrs: list[int] = []
        for pdu in pdus:
            try:
                self.modem.write(f"AT+CMGS={pdu.tpduLength}", timeout=PROMPT_TIMEOUT_S, expectedResponseTermSeq="> ")
            except TimeoutException as exc:
                # No "> " prompt: this part never left.
                raise SmsSendError(
                    f"modem gave no prompt for part {len(mrs) + 1}", transient=True, sent_mrs=mrs
                ) from exc
            except CommandError as exc:
                raise _refused(exc, mrs) from exc
            try:
                lines = self.modem.write(str(pdu), timeout=SEND_TIMEOUT_S, writeTerm=CTRLZ)
            except TimeoutException as exc:
                # The PDU was handed over: the network may have taken it.
                raise SmsSendError(
                    f"no answer after part {len(mrs) + 1} was handed over",
                    transient=True,
                    maybe_sent=True,
                    sent_mrs=mrs,
                ) from exc
            except CommandError as exc:
                raise _refused(exc, mrs) from exc
            line = next((ln for ln in lines if ln.startswith("+CMGS:")), None)
            if line is None:
                raise SmsSendError(
                    f"no +CMGS for part {len(mrs) + 1}: {lines}", transient=True, maybe_sent=True, sent_mrs=mrs
                )
            mrs.append(int(line.split(":", 1)[1].split(",")[0].strip()))
        return mrs


def _refused(exc: CommandError, mrs: list[int]) -> SmsSendError:
    """The modem refused this part (earlier parts did leave)."""
    code = getattr(exc, "code", None)
    permanent = isinstance(exc, CmsError) and code in PERMANENT_CMS
    return SmsSendError(f"modem refused the SMS ({exc})", transient=not permanent, sent_mrs=mrs)
