"""Alarms: what a person must see (R20). Stored first; notifying (e-mail/SMS) happens later.

``raise_alarm`` only writes the row and logs it, so it is safe from any thread that has its own
database connection; the core's notifier picks up rows with ``notified_at IS NULL``.
"""

from __future__ import annotations

import logging
import re

from .store.db import utcnow

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")


def raise_alarm(db, kind: str, source: str, text: str, *, severity: str = "warning", detail: str = "") -> int:
    """Store one alarm; returns its id. ``kind`` is a short machine word (``line_down``,
    ``line_up``, ``sms_uncertain``, ``modem_pin``...), ``source`` what it is about (``trunk``,
    ``gsm``, ``sms #12``), ``text`` one sentence for a person (in the box's language)."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown alarm severity {severity!r}")
    row = {"at": utcnow(), "kind": kind, "source": source, "severity": severity, "text": text, "detail": detail or None}
    alarm_id = db["alarms"].insert(row).last_pk
    getattr(log, "error" if severity == "critical" else "warning")(
        "alarm #%s [%s] %s: %s", alarm_id, kind, source, text
    )
    return alarm_id


def list_alarms(db, limit: int = 50, *, unacked_only: bool = False) -> list[dict]:
    where = "WHERE acked_at IS NULL " if unacked_only else ""
    return list(db.query(f"SELECT * FROM alarms {where}ORDER BY id DESC LIMIT ?", [limit]))


def ack_alarm(db, alarm_id: int, by: str) -> bool:
    cur = db.execute(
        "UPDATE alarms SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL", [utcnow(), by, alarm_id]
    )
    return cur.rowcount > 0


def pending_notifications(db) -> list[dict]:
    return list(db.query("SELECT * FROM alarms WHERE notified_at IS NULL ORDER BY id"))


def mark_notified(db, alarm_id: int) -> None:
    db.execute("UPDATE alarms SET notified_at = ? WHERE id = ?", [utcnow(), alarm_id])


# The parts of the box that raise alarms (modem supervisor, SMS outbox, lines) word them in
# English for the log; a person reads them in the box's language. Each pattern is a whole
# sentence or reason the code produces; anything unknown stays as it is.
_POLISH = [
    (
        r"The GSM modem stopped working and did not come back after a reset: no GSM calls or SMS until it does\.",
        "Modem GSM przestał odpowiadać i nie wrócił po resecie: do tego czasu nie ma połączeń ani SMS-ów przez GSM.",
    ),
    (r"The GSM modem is working again\.", "Modem GSM znów działa."),
    (
        r"The SIM card needs its PIN and none is configured \(modem\.pin\)\.",
        "Karta SIM wymaga kodu PIN, a w ustawieniach go nie ma (modem.pin).",
    ),
    (
        r"The SIM card refused this PIN before; it is not tried again \(change modem\.pin\)\.",
        "Karta SIM odrzuciła już ten PIN; nie jest wpisywany ponownie (zmień modem.pin).",
    ),
    (
        r"The SIM card refused the PIN \(CME error (\d+)\); it is not tried again, because three wrong PINs "
        r"lock the SIM\.",
        r"Karta SIM odrzuciła PIN (błąd CME \1); nie jest wpisywany ponownie, bo trzy błędne PIN-y blokują kartę.",
    ),
    (
        r"The SIM card is locked and needs its PUK code \(put it in a phone\)\.",
        "Karta SIM jest zablokowana i wymaga kodu PUK (włóż ją do telefonu).",
    ),
    (
        r"The SIM card asks for (.+); Centralka cannot give it\.",
        r"Karta SIM żąda kodu \1; Centralka nie może go podać.",
    ),
    (r"the SMS outbox cannot be opened: (.*)", r"nie można otworzyć kolejki SMS: \1"),
    (
        r"the box stopped while this SMS was being handed to the modem: it may or may not have been sent; not "
        r"resent automatically \(never twice\) — resend or cancel it",
        "centralka zatrzymała się, gdy ten SMS był przekazywany do modemu: mógł zostać wysłany albo nie; nie jest "
        "wysyłany ponownie automatycznie (nigdy dwa razy) — wyślij go ponownie albo anuluj",
    ),
    (r"registration failed: (.*)", r"rejestracja nie powiodła się: \1"),
    (r"registering", "trwa rejestracja"),
    (r"outbound call failed: (.*)", r"połączenie wychodzące nie powiodło się: \1"),
    (r"the trunk refused the call: (.*)", r"trunk odrzucił połączenie: \1"),
    (r"nothing rang within (\S+) s", r"nic nie zadzwoniło w ciągu \1 s"),
    (
        r"the modem is not answering even after a reset; looking for it again every (\S+) s",
        r"modem nie odpowiada nawet po resecie; szukam go co \1 s",
    ),
    (r"the modem's port failed \((.*)\); reconnecting", r"port modemu przestał działać (\1); ponowne łączenie"),
    (r"(.*); reconnecting", r"\1; ponowne łączenie"),
    (r"no modem found at (.*)", r"nie znaleziono modemu pod \1"),
    (r"no modem found", "nie znaleziono modemu"),
    (r"opening (.*)", r"otwieranie \1"),
    (r"registered on (.*)", r"zarejestrowany w sieci \1"),
    (r"not registered on the network", "brak rejestracji w sieci"),
    (r"stopped", "zatrzymany"),
]
_POLISH = [(re.compile(pattern + r"\Z", re.DOTALL), text) for pattern, text in _POLISH]


def localise(text: str, lang: str = "pl") -> str:
    """An alarm sentence or line reason in the box's language (Polish unless ``lang`` is "en")."""
    if lang != "pl" or not text:
        return text
    for pattern, polish in _POLISH:
        m = pattern.match(text)
        if m:
            return m.expand(polish)
    return text
