"""E-mail from the box: alarms (R20, R21) and incoming SMS forwarded to the clinic (issue 5).

Three parts, each usable alone:

- :class:`Mailer` hands messages to the clinic's mail server with smtplib (``[mail]`` settings,
  documented in appliance/data/default.toml). Every failure comes out as one :class:`MailError`
  saying what went wrong and where (DNS, connection refused, TLS, login, sender or recipients
  refused, message rejected) — never a raw socket/ssl/smtplib exception.
- :func:`alarm_message`, :func:`alarm_digest` and :func:`incoming_sms_message` build the
  e-mails a person reads, in Polish or English (``box.language``).
- :class:`Notifier` is the worker the core calls now and then: ``run_once()`` e-mails every
  alarm not yet notified and every incoming SMS not yet forwarded. A row is marked only after
  the server accepted the message, so a mail outage loses nothing: the rows stay pending and
  are retried with growing pauses. ``run_once`` never raises.

E-mails for people (callback requests, voice messages) go through the mail outbox
(appliance/store/mail_outbox.py): :func:`enqueue_mail` stores one for a team's addresses
(``[mail] teams``, else ``[mail] recipients``) and ``run_once`` delivers it after the alarms and
SMS, each row with its own recipients and attachments (the files are read when it is sent). A
transient error (a 4xx reply, a dropped connection, no server listening) retries that row with
growing pauses of its own (``attempts`` and ``last_error`` say what happened); a permanent
refusal (5xx) marks it ``failed`` with the server's reply and raises a ``mail_refused`` alarm,
and the other rows still go; a server that cannot be reached at all is also an outage like for
alarms (one backoff, one ``mail_failing`` alarm). A recipient put off (4xx) while the others were
accepted stays owed the e-mail: the row stays pending for that address alone. Bad input to
:func:`enqueue_mail` (no key, no subject, an attachment without a path) raises
:class:`MailInputError` before anything is stored. :func:`callback_request_message` and
:func:`voicemail_message` write those e-mails.

Delivery guarantee — **at least once** (unlike the SMS outbox, which is at most once)
------------------------------------------------------------------------------------
A row is marked ``sent`` only after the server's "250 OK" to the message. If the box dies
between that reply and the write that marks the row (kill -9, a power cut, the database
failing), or the connection drops after the server took the message but before its reply
arrived, the e-mail goes out again on the next round. The Message-ID is derived from the row
(not random; for the outbox from its key and creation time), the same on every try, so mail
clients that fold duplicates (Gmail does) show it once; the window is one SMTP reply wide.
Alarms and forwarded SMS follow the same rule (their Message-ID comes from their row).

Why not at most once, as appliance/gsm/outbox.py does for SMS: that choice protects patients
(a duplicate SMS confuses an elderly patient, a resend loop costs the clinic money) and its
price — an SMS in doubt is held for a person to decide — is cheap because the callback lives
on anyway. Here the readers are the clinic's own staff: a duplicate costs them a glance (and
usually not even that, with the same Message-ID), while an e-mail held back is a callback
request or a voice message that nobody hears of. SMTP itself is at least once (RFC 5321, 6.1:
a lost "250" leads to duplicates), so an at-most-once promise could not be kept anyway. The
price is a possible duplicate per crash in that window; a process killed again and again right
after each "250" would resend once per restart (the core restarts after 2 s, the notifier's
first round is 5 s later). Nothing in sending kills the process — smtplib runs in the
notifier's own thread, every error is caught and the round retried with growing pauses, a row is
tried at most once a round — so that loop needs a fault outside this code, and then shows.
Enqueueing is exactly once per ``key`` (like ``dedupe_key`` for SMS): queueing the same key
twice is one row and one e-mail, whatever state the first is in.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import random
import re
import smtplib
import socket
import ssl
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path

import phonenumbers

from ..alarms import mark_notified, pending_notifications, raise_alarm
from ..clock import parse_stamp, stamp
from ..errors import CentralkaError, ConfigError
from ..messages import CATALOG, msg, plural_pl
from ..store import inbox, mail_outbox, notifications
from ..store.db import transaction

log = logging.getLogger("centralka.mail")

SECURITY_PORTS = {"none": 25, "starttls": 587, "tls": 465}
SUBJECT_PREVIEW = 60  # characters of an SMS shown in the subject line


class MailError(CentralkaError, ConnectionError):
    """An e-mail was not accepted by the mail server; ``stage`` says where it failed.

    Stages: ``config``, ``dns``, ``connect``, ``timeout``, ``tls``, ``auth``, ``sender``,
    ``recipients``, ``message``, ``server``. ``transient``: the same attempt may succeed later
    without anyone changing the settings (a network outage, a 4xx reply).
    """

    def __init__(self, stage: str, message: str, *, transient: bool = True, code: int | None = None):
        self.stage = stage
        self.transient = transient
        self.code = code
        super().__init__(message)


class MailInputError(CentralkaError, ValueError):
    """:func:`enqueue_mail` was given something that cannot become an e-mail (no key, no subject,
    an attachment without a path...); nothing was queued. The message names the field."""


# --- sending -------------------------------------------------------------------------------------
def _addresses(value, where: str) -> list[str]:
    """A list of e-mail addresses from the settings (one address alone is taken as a list)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of e-mail addresses, got {value!r}")
    found = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        if not isinstance(item, str) or "@" not in parseaddr(item)[1]:
            raise ConfigError(f"{where}: {item!r} is not an e-mail address")
        found.append(item.strip())
    return found


def team_addresses(settings) -> dict[str, list[str]]:
    """``[mail] teams`` checked: team name -> its addresses (raises ConfigError when malformed)."""
    teams = settings.mail.get("teams") or {}
    if not isinstance(teams, dict):
        raise ConfigError(f'mail.teams: expected a table such as {{ rejestracja = ["a@b.pl"] }}, got {teams!r}')
    return {str(team): _addresses(value, f"mail.teams.{team}") for team, value in teams.items()}


def recipients_for(settings, team: str | None) -> list[str]:
    """Who gets a team's e-mail: its ``[mail] teams`` entry, else ``[mail] recipients`` (a team
    with an empty list counts as no entry). Raises ConfigError for a malformed address."""
    return list(team_addresses(settings).get(team or "") or _addresses(settings.mail.recipients, "mail.recipients"))


def subject_prefix(settings) -> str:
    """``[mail] subject_prefix`` as it starts a subject line: ``"[Centralka] "`` (or nothing)."""
    prefix = settings.mail.subject_prefix.strip()
    return f"{prefix} " if prefix else ""


def _reply_text(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(text.split())}"


class Mailer:
    """Sends e-mail through the ``[mail]`` server. ``enabled`` is False (and ``why_disabled``
    says why) when no host or no recipient is configured; ``send`` then raises MailError."""

    def __init__(self, settings):
        mail = settings.mail
        self.host = mail.host.strip()
        self.security = mail.security.strip().lower()
        if self.security not in SECURITY_PORTS:
            raise ConfigError(f"mail.security: {mail.security!r} is not one of none, starttls, tls")
        self.port = int(mail.port) or SECURITY_PORTS[self.security]
        if not 0 < self.port < 65536:
            raise ConfigError(f"mail.port: {mail.port} is not a port number")
        self.username = mail.username
        self.password = mail.password
        self.timeout_s = float(mail.timeout_s)
        self.verify_tls = bool(mail.verify_tls)
        self.ca_file = mail.ca_file.strip()
        self.recipients = _addresses(mail.recipients, "mail.recipients")
        self.teams = team_addresses(settings)
        sender = mail.from_address.strip() or (self.username if "@" in self.username else "")
        self.from_address = sender or f"centralka@{socket.gethostname()}"
        self.from_name = mail.from_name
        self.where = f"{self.host}:{self.port}"
        if not self.host:
            self.why_disabled = "no mail server (mail.host) is configured"
        elif not self.recipients and not any(self.teams.values()):
            self.why_disabled = "no recipient (mail.recipients) is configured"
        else:
            self.why_disabled = ""
        if self.enabled and self.username and self.security == "none" and not self._loopback():
            log.warning(
                "mail: the password for %s goes over the network unencrypted "
                '(mail.security = "none"); use starttls or tls',
                self.where,
            )

    @property
    def enabled(self) -> bool:
        return not self.why_disabled

    def _loopback(self) -> bool:
        return self.host in ("localhost", "127.0.0.1", "::1")

    def _tls_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise MailError("config", f"mail.ca_file {self.ca_file}: cannot load: {exc}", transient=False) from exc
        if not self.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, message: EmailMessage, recipients: list[str] | None = None) -> dict:
        """Send one message to ``recipients`` (default: mail.recipients); From/To are filled in
        when missing. Returns the recipients the server refused while it accepted others (empty
        when all were accepted); raises MailError for everything else."""
        with self.session() as session:
            return session.send(message, recipients)

    @contextmanager
    def session(self):
        """``with mailer.session() as s: s.send(msg)...`` — several messages over one connection."""
        if not self.enabled:
            raise MailError("config", f"e-mail is off: {self.why_disabled}", transient=False)
        smtp = self._connect()
        try:
            yield _Session(self, smtp)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _connect(self) -> smtplib.SMTP:
        where = self.where
        # getfqdn() (smtplib's default EHLO name) can hang on reverse DNS when the clinic's
        # network has none; the plain host name is enough for EHLO.
        local = socket.gethostname() or "centralka"
        smtp = None
        try:
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    self.host, self.port, local_hostname=local, timeout=self.timeout_s, context=self._tls_context()
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, local_hostname=local, timeout=self.timeout_s)
            smtp.ehlo()
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    # Never fall back to plain text: the password and patients' SMS would leak.
                    raise MailError(
                        "tls",
                        f'{where} does not offer STARTTLS (mail.security = "starttls"); '
                        "check mail.port and mail.security",
                        transient=False,
                    )
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if self.username:
                self._login(smtp)
            return smtp
        except BaseException as exc:
            if smtp is not None:
                smtp.close()
            if isinstance(exc, MailError) or not isinstance(exc, Exception):
                raise
            raise _convert(exc, where, "connect") from exc

    def _login(self, smtp: smtplib.SMTP) -> None:
        where = self.where
        if not smtp.has_extn("auth"):
            raise MailError(
                "auth",
                f"{where} offers no login (AUTH) here; check mail.security and mail.port, or leave mail.username empty",
                transient=False,
            )
        try:
            if (self.username + self.password).isascii():
                smtp.login(self.username, self.password)
                return
            # smtplib encodes credentials as ASCII, so "hasło" would never leave the box;
            # AUTH PLAIN carries UTF-8 (RFC 4616), which is what servers expect for such passwords.
            if "PLAIN" not in smtp.esmtp_features.get("auth", "").upper().split():
                raise MailError(
                    "auth",
                    f"{where} does not offer AUTH PLAIN, the only way to send a password "
                    "with non-ASCII letters; change the password",
                    transient=False,
                )
            token = f"\0{self.username}\0{self.password}".encode("utf-8")
            code, reply = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(token).decode("ascii"))
            if code != 235:
                raise smtplib.SMTPAuthenticationError(code, reply)
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(
                "auth",
                f"{where} refused the login of {self.username!r}: {_reply_text(exc)}",
                transient=exc.smtp_code < 500,
                code=exc.smtp_code,
            ) from exc


class _Session:
    def __init__(self, mailer: Mailer, smtp: smtplib.SMTP):
        self.mailer = mailer
        self.smtp = smtp

    def send(self, message: EmailMessage, recipients: list[str] | None = None) -> dict:
        m = self.mailer
        recipients = list(recipients or m.recipients)
        if "From" not in message:
            message["From"] = formataddr((m.from_name, m.from_address)) if m.from_name else m.from_address
        if "To" not in message:
            message["To"] = ", ".join(recipients)
        try:
            refused = self.smtp.send_message(message, m.from_address, recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{rcpt}: {code} {' '.join(_decode(text).split())}" for rcpt, (code, text) in exc.recipients.items()
            )
            raise MailError(
                "recipients",
                f"{m.where} refused every recipient ({detail}); check mail.recipients and mail.teams",
                transient=all(400 <= c < 500 for c in codes),
                code=max(codes, default=None),
            ) from exc
        except smtplib.SMTPSenderRefused as exc:
            raise MailError(
                "sender",
                f"{m.where} refused the sender {m.from_address!r}: {_reply_text(exc)}; check mail.from_address",
                transient=exc.smtp_code < 500,
                code=exc.smtp_code,
            ) from exc
        except smtplib.SMTPDataError as exc:
            raise MailError(
                "message",
                f"{m.where} rejected the message: {_reply_text(exc)}",
                transient=exc.smtp_code < 500,
                code=exc.smtp_code,
            ) from exc
        except Exception as exc:
            raise _convert(exc, m.where, "server") from exc
        for rcpt, (code, text) in refused.items():
            log.warning("mail: %s refused recipient %s: %s %s", m.where, rcpt, code, _decode(text))
        return refused


def _server_reply(exc: MailError) -> str:
    """The server's own words in a MailError (``552 5.3.4 Message too big``), else the error."""
    cause = exc.__cause__
    if isinstance(cause, smtplib.SMTPResponseException):
        return _reply_text(cause)
    return str(exc)


def _decode(text) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _convert(exc: Exception, where: str, stage: str) -> MailError:
    """One MailError for everything smtplib, ssl and the socket layer may raise."""
    if isinstance(exc, socket.gaierror):
        return MailError(
            "dns",
            f"cannot resolve the mail server name {where.rsplit(':', 1)[0]!r} "
            f"({exc.strerror or exc}); check mail.host and the box's DNS",
        )
    if isinstance(exc, ConnectionRefusedError):
        return MailError(
            "connect", f"{where} refused the connection (no mail server listening there; check mail.host and mail.port)"
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return MailError("timeout", f"{where} did not answer within the time limit (mail.timeout_s)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MailError(
            "tls",
            f"{where}: the server's certificate is not trusted ({exc.verify_message}); "
            "set mail.ca_file to its CA, or mail.verify_tls = false",
            transient=False,
        )
    if isinstance(exc, ssl.SSLError):
        return MailError(
            "tls", f"{where}: TLS failed ({exc.reason or exc}); check mail.security and mail.port", transient=False
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return MailError(stage, f"{where} closed the connection ({exc or 'no reason given'})")
    if isinstance(exc, smtplib.SMTPResponseException):
        return MailError(
            stage, f"{where} answered {_reply_text(exc)}", transient=exc.smtp_code < 500, code=exc.smtp_code
        )
    if isinstance(exc, OSError):
        return MailError("connect", f"cannot reach {where}: {exc.strerror or exc}")
    return MailError(stage, f"{where}: unexpected {type(exc).__name__}: {exc}")


# --- the messages a person reads -----------------------------------------------------------------
TEXTS = {
    "pl": {
        "severity": {"critical": "alarm krytyczny", "warning": "ostrzeżenie", "info": "informacja"},
        "subject_alarm": "{prefix}{Severity}: {text}",
        "alarm_intro": "Centralka zgłasza: {severity}.",
        "level": "Poziom",
        "source": "Dotyczy",
        "kind": "Rodzaj",
        "when": "Kiedy",
        "detail": "Szczegóły",
        "alarm_no": "Numer alarmu",
        "alarm_footer": "Alarm pozostaje na liście alarmów w panelu centralki, dopóki ktoś go nie potwierdzi.",
        "digest_subject": "{prefix}{n} {new} {alarms}",
        "digest_intro": "Centralka zgłasza {n} {new} {alarms}, od najstarszego:",
        "digest_worst": "Najpoważniejszy: {severity}.",
        "digest_footer": "Alarmy pozostają na liście alarmów w panelu centralki, dopóki ktoś ich nie potwierdzi.",
        "sms_subject": "{prefix}SMS od {sender}: {preview}",
        # "od numer zastrzeżony" would be wrong: the withheld case needs its own genitive phrase.
        "sms_subject_withheld": "{prefix}SMS z numeru zastrzeżonego: {preview}",
        "sms_intro": "Na numer centralki przyszedł SMS.",
        "from": "Od",
        "sent": "Wysłany",
        "received": "Odebrany",
        "parts": "Części",
        "incomplete": ("Uwaga: nie dotarły wszystkie części tej wiadomości; brakujące fragmenty oznaczono „[…]”."),
        "sms_footer": (
            "Odpowiedź na ten e-mail nie trafi do nadawcy SMS-a. Aby odpowiedzieć, "
            "zadzwoń lub wyślij SMS na numer {sender}."
        ),
        "withheld": "numer zastrzeżony",
        "empty": "(pusta wiadomość)",
        "sources": {"trunk": "łącze SIP (trunk)", "gsm": "modem GSM", "mail": "poczta e-mail"},
        # Callback requests (R12). The caller's sex is unknown: impersonal forms ("poproszono"),
        # "osoba dzwoniąca", never "dzwonił"/"prosił".
        "cb_subject": "{prefix}Oddzwonić: {number}",
        "cb_subject_topic": "{prefix}Oddzwonić: {number} — {topic}",
        "cb_intro": "Osoba dzwoniąca prosi o oddzwonienie.",
        "number": "Numer",
        "number_kinds": {"mobile": "komórkowy", "fixed": "stacjonarny"},
        "patient": "Pacjent",
        "topic": "Temat",
        "waited": "Oczekiwanie w kolejce",
        "promise": "Obiecano oddzwonić",
        "promise_until": "{promise} (najpóźniej {until})",
        "requests": "Z tego numeru poproszono o oddzwonienie {n} {times}.",
        "requests_one": "Z tego numeru poproszono o oddzwonienie 1 raz.",
        "requests_merged": "Prośby połączono w jedną pozycję na liście.",
        "request_no": "Numer prośby",
        "typed": (
            "Ten numer osoba dzwoniąca wpisała na klawiaturze telefonu (jej własny numer był ukryty "
            "albo nie można na niego oddzwonić) — sprawdź go przed wybraniem."
        ),
        "cb_done": "Po rozmowie oznacz prośbę jako załatwioną:",
        "cb_done_note": "co ustalono",
        "cb_footer": "Do tego czasu prośba pozostaje na liście oddzwonień w panelu centralki.",
        # Voice messages (R15).
        "vm_subject": "{prefix}Wiadomość głosowa od {number} ({length})",
        "vm_subject_withheld": "{prefix}Wiadomość głosowa z numeru zastrzeżonego ({length})",
        "vm_intro": "Centralka nagrała wiadomość głosową.",
        "length": "Długość",
        "vm_no": "Numer wiadomości",
        "vm_attached": "Nagranie jest w załączniku. Zawiera dane osobowe: nie przesyłaj go poza przychodnię.",
        "vm_call_back": "Aby oddzwonić, wybierz numer {number}.",
        "vm_footer": "Wiadomość pozostaje w panelu centralki, dopóki ktoś nie oznaczy jej jako załatwionej.",
        # Said by the notifier when it sends an e-mail from the outbox.
        "attachment_lost": "Uwaga: załącznik „{name}” zaginął — nie udało się odczytać pliku {path} ({why}).",
        "attachment_refused": (
            "Uwaga: serwer poczty nie przyjął tej wiadomości z załącznikiem „{name}” ({reply}), "
            "więc wysłano ją bez niego."
        ),
        "file_missing": "plik nie istnieje",
        "file_denied": "brak uprawnień do pliku",
        "cannot_compose": "centralka nie zdołała złożyć wiadomości (błąd programu)",
        "hours": "godz.",
    },
    "en": {
        "severity": {"critical": "critical alarm", "warning": "warning", "info": "notice"},
        "subject_alarm": "{prefix}{Severity}: {text}",
        "alarm_intro": "The phone box reports a {severity}.",
        "level": "Level",
        "source": "About",
        "kind": "Kind",
        "when": "When",
        "detail": "Details",
        "alarm_no": "Alarm number",
        "alarm_footer": "The alarm stays on the alarm list of the box's web panel until someone acknowledges it.",
        "digest_subject": "{prefix}{n} {new} {alarms}",
        "digest_intro": "The phone box reports {n} {new} {alarms}, oldest first:",
        "digest_worst": "The most serious: {severity}.",
        "digest_footer": "The alarms stay on the alarm list of the box's web panel until someone acknowledges them.",
        "sms_subject": "{prefix}SMS from {sender}: {preview}",
        "sms_subject_withheld": "{prefix}SMS from a withheld number: {preview}",
        "sms_intro": "An SMS arrived at the box's number.",
        "from": "From",
        "sent": "Sent",
        "received": "Received",
        "parts": "Parts",
        "incomplete": 'Note: some parts of this message never arrived; the gaps are marked "[…]".',
        "sms_footer": "Replying to this e-mail does not reach the sender. To answer, call or text {sender}.",
        "withheld": "withheld number",
        "empty": "(empty message)",
        "sources": {"trunk": "SIP trunk", "gsm": "GSM modem", "mail": "e-mail"},
        "cb_subject": "{prefix}Call back: {number}",
        "cb_subject_topic": "{prefix}Call back: {number} — {topic}",
        "cb_intro": "A caller asks to be called back.",
        "number": "Number",
        "number_kinds": {"mobile": "mobile", "fixed": "landline"},
        "patient": "Patient",
        "topic": "Topic",
        "waited": "Waited in line",
        "promise": "Promised call back",
        "promise_until": "{promise} (by {until})",
        "requests": "This number asked to be called back {n} {times}.",
        "requests_one": "This number asked to be called back once.",
        "requests_merged": "The requests were merged into one entry on the list.",
        "request_no": "Request number",
        "typed": (
            "The caller typed this number on the keypad (their own number was withheld or cannot be "
            "called back) — check it before dialling."
        ),
        "cb_done": "After the call, mark the request done:",
        "cb_done_note": "what was agreed",
        "cb_footer": "Until then the request stays on the callback list in the box's web panel.",
        "vm_subject": "{prefix}Voice message from {number} ({length})",
        "vm_subject_withheld": "{prefix}Voice message from a withheld number ({length})",
        "vm_intro": "The phone box recorded a voice message.",
        "length": "Length",
        "vm_no": "Message number",
        "vm_attached": "The recording is attached. It holds personal data: do not forward it outside the clinic.",
        "vm_call_back": "To call back, dial {number}.",
        "vm_footer": "The message stays in the box's web panel until someone marks it done.",
        "attachment_lost": 'Note: the attachment "{name}" was lost — the file {path} could not be read ({why}).',
        "attachment_refused": (
            'Note: the mail server did not accept this message with the attachment "{name}" ({reply}), '
            "so it was sent without it."
        ),
        "file_missing": "the file does not exist",
        "file_denied": "no permission to read the file",
        "cannot_compose": "the box could not put the e-mail together (a software fault)",
        "hours": "h",
    },
}
# What a failing stage means, for the alarm a person reads (the full error goes in its detail).
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


def _texts(lang: str) -> dict:
    return TEXTS["en" if str(lang).lower().startswith("en") else "pl"]


def _lang(lang: str) -> str:
    return "en" if str(lang).lower().startswith("en") else "pl"


def person_time(stamp: str | None, lang: str = "pl", tz=None) -> str:
    """A stored UTC ISO timestamp as the clinic's wall clock: ``14.03.2025, 09:05`` (pl),
    ``2025-03-14 09:05`` (en). ``tz`` defaults to the box's local time zone."""
    if not stamp:
        return "—"
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    when = when.astimezone(tz)
    return when.strftime("%d.%m.%Y, %H:%M" if _lang(lang) == "pl" else "%Y-%m-%d %H:%M")


def person_number(number: str | None, kind: str | None = None, lang: str = "pl", country: str = "PL") -> str:
    """A sender as a person dials it back: ``600 123 456`` for a number of the box's country,
    ``+49 30 1234567`` for a foreign one; a withheld number says so; a name ("Orange") as is."""
    number = (number or "").strip()
    if kind == "withheld" or not number or number.lower() == "anonymous":
        return _texts(lang)["withheld"]
    if number.startswith("+"):
        try:
            parsed = phonenumbers.parse(number, None)
        except phonenumbers.NumberParseException:
            return number
        if phonenumbers.is_valid_number(parsed):
            same = phonenumbers.region_code_for_number(parsed) == country.upper()
            fmt = phonenumbers.PhoneNumberFormat.NATIONAL if same else phonenumbers.PhoneNumberFormat.INTERNATIONAL
            return phonenumbers.format_number(parsed, fmt)
    return number


def _subject_text(text: str, limit: int = SUBJECT_PREVIEW) -> str:
    one_line = " ".join(str(text).split())
    if len(one_line) <= limit:
        return one_line
    cut = one_line[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut.rsplit(" ", 1)[0]  # whole words only, unless one word fills the line
    return cut.rstrip(" ,;:-—") + "…"


def _new_message(subject: str, body: str, message_id: str | None) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    if message_id:
        msg["Message-ID"] = message_id
    # RFC 3834: vacation responders and ticket systems must not answer a machine.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    # Quoted-printable keeps Polish letters intact through servers without 8BITMIME.
    msg.set_content(body, subtype="plain", charset="utf-8", cte="quoted-printable")
    return msg


def _message_id(kind: str, row: dict, domain: str) -> str:
    when = str(row.get("at") or row.get("received_at") or "")[:23]  # up to the milliseconds
    stamp = "".join(ch for ch in when if ch.isdigit())
    return f"<centralka.{kind}.{row['id']}.{stamp}@{domain or 'centralka.invalid'}>"


def _source_name(source: str, t: dict) -> str:
    return t["sources"].get(source, source)


def alarm_message(
    alarm_row: dict, lang: str = "pl", *, prefix: str = "[Centralka] ", tz=None, domain: str = ""
) -> EmailMessage:
    """The e-mail about one alarm (a row of the alarms table)."""
    t = _texts(lang)
    severity = t["severity"].get(alarm_row["severity"], alarm_row["severity"])
    subject = t["subject_alarm"].format(
        prefix=prefix, Severity=severity[:1].upper() + severity[1:], text=_subject_text(alarm_row["text"], 120)
    )
    lines = [
        alarm_row["text"],
        "",
        t["alarm_intro"].format(severity=severity),
        "",
        f"{t['level']}: {severity}",
        f"{t['source']}: {_source_name(alarm_row['source'], t)}",
        f"{t['kind']}: {alarm_row['kind']}",
        f"{t['when']}: {person_time(alarm_row['at'], lang, tz)}",
    ]
    if alarm_row.get("detail"):
        lines.append(f"{t['detail']}: {alarm_row['detail']}")
    lines += [f"{t['alarm_no']}: {alarm_row['id']}", "", t["alarm_footer"], ""]
    return _new_message(subject, "\n".join(lines), _message_id("alarm", alarm_row, domain))


def _count_words(n: int, lang: str) -> tuple[str, str]:
    if _lang(lang) == "en":
        return "new", "alarm" if n == 1 else "alarms"
    # "1 nowy alarm, 2 nowe alarmy, 5 nowych alarmów": the adjective follows the noun's case.
    return plural_pl(n, "nowy", "nowe", "nowych"), plural_pl(n, "alarm", "alarmy", "alarmów")


def alarm_digest(
    alarm_rows: list[dict], lang: str = "pl", *, prefix: str = "[Centralka] ", tz=None, domain: str = ""
) -> EmailMessage:
    """One e-mail listing several alarms (when many piled up, e.g. while the mail was down)."""
    t = _texts(lang)
    n = len(alarm_rows)
    new, alarms = _count_words(n, lang)
    worst = max(alarm_rows, key=lambda r: SEVERITY_ORDER.get(r["severity"], 0))
    worst_name = t["severity"].get(worst["severity"], worst["severity"])
    lines = [t["digest_intro"].format(n=n, new=new, alarms=alarms), ""]
    for row in alarm_rows:
        severity = t["severity"].get(row["severity"], row["severity"])
        lines.append(
            f"- {person_time(row['at'], lang, tz)} · {severity} · "
            f"{_source_name(row['source'], t)}: {row['text']} (#{row['id']})"
        )
        if row.get("detail"):
            lines.append(f"  {row['detail']}")
    lines += ["", t["digest_worst"].format(severity=worst_name), "", t["digest_footer"], ""]
    subject = t["digest_subject"].format(prefix=prefix, n=n, new=new, alarms=alarms)
    ids = {"id": f"{alarm_rows[0]['id']}-{alarm_rows[-1]['id']}", "at": alarm_rows[-1]["at"]}
    return _new_message(subject, "\n".join(lines), _message_id("alarms", ids, domain))


def incoming_sms_message(
    sms_row: dict, lang: str = "pl", *, country: str = "PL", prefix: str = "[Centralka] ", tz=None, domain: str = ""
) -> EmailMessage:
    """The e-mail forwarding one incoming SMS (a row of sms_incoming, parts already joined)."""
    t = _texts(lang)
    sender = person_number(sms_row["number"], sms_row.get("number_kind"), lang, country)
    text = sms_row["text"] or ""
    withheld = sms_row.get("number_kind") == "withheld"
    subject = t["sms_subject_withheld" if withheld else "sms_subject"].format(
        prefix=prefix, sender=sender, preview=_subject_text(text) or t["empty"]
    )
    lines = [t["sms_intro"], "", f"{t['from']}: {sender}"]
    if sms_row.get("sent_at"):
        lines.append(f"{t['sent']}: {person_time(sms_row['sent_at'], lang, tz)}")
    lines.append(f"{t['received']}: {person_time(sms_row['received_at'], lang, tz)}")
    if (sms_row.get("parts") or 1) > 1:
        lines.append(f"{t['parts']}: {sms_row['parts']}")
    lines += ["", "—" * 20, text if text else t["empty"], "—" * 20, ""]
    if not sms_row.get("complete", 1):
        lines += [t["incomplete"], ""]
    if not withheld:
        lines += [t["sms_footer"].format(sender=sender), ""]
    return _new_message(subject, "\n".join(lines), _message_id("sms", sms_row, domain))


def _dial_form(number: str | None, kind: str | None, lang: str, country: str) -> str:
    """:func:`person_number`, also for national digits as a caller typed them (``600123456``)."""
    raw = (number or "").strip()
    if raw and raw.isdigit():
        try:
            parsed = phonenumbers.parse(raw, country.upper())
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and phonenumbers.is_valid_number(parsed):
            raw = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return person_number(raw, kind, lang, country)


def _withheld(number: str | None, kind: str | None) -> bool:
    number = (number or "").strip()
    return kind == "withheld" or not number or number.lower() == "anonymous"


def _length(seconds) -> str:
    """A recording's length as a player shows it: ``0:42``, ``12:05``, ``1:02:03``."""
    total = max(0, round(float(seconds or 0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _wait(seconds: float, t: dict) -> str:
    """A wait in words a person reads at a glance: ``45 s``, ``12 min 30 s``, ``1 godz. 5 min``."""
    total = max(0, round(float(seconds)))
    if total < 60:
        return f"{total} s"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} {t['hours']} {minutes} min" if minutes else f"{hours} {t['hours']}"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


def _times(n: int, lang: str) -> str:
    if _lang(lang) == "en":
        return "time" if n == 1 else "times"
    return plural_pl(n, "raz", "razy", "razy")  # 1 raz, 2 razy, 5 razy, 22 razy


def callback_request_message(
    req: dict, lang: str = "pl", *, prefix: str = "[Centralka] ", tz=None, country: str = "PL"
) -> tuple[str, str]:
    """``(subject, body)`` of the e-mail telling a team that a caller asked to be called back
    (R12): who, about what, when, what was promised, how many times they asked, and how to mark
    it done. ``req``: a callbacks row plus ``topic_label`` and ``waited_s`` (see the keys in
    appliance/store/db.py m011). The patient's name stays out of the subject line."""
    t = _texts(lang)
    number = _dial_form(req.get("number"), None, lang, country)
    topic = " ".join(str(req.get("topic_label") or "").split())
    if topic:
        subject = t["cb_subject_topic"].format(prefix=prefix, number=number, topic=_subject_text(topic, 40))
    else:
        subject = t["cb_subject"].format(prefix=prefix, number=number)
    kind = t["number_kinds"].get(req.get("number_kind") or "")
    lines = [t["cb_intro"], "", f"{t['number']}: {number}" + (f" ({kind})" if kind else "")]
    if req.get("patient"):
        lines.append(f"{t['patient']}: {req['patient']}")
    if topic:
        lines.append(f"{t['topic']}: {topic}")
    lines.append(f"{t['when']}: {person_time(req.get('created_at'), lang, tz)}")
    if req.get("waited_s") is not None:
        lines.append(f"{t['waited']}: {_wait(req['waited_s'], t)}")
    promise = " ".join(str(req.get("promise") or "").split())
    if promise:
        if req.get("window_until"):
            promise = t["promise_until"].format(promise=promise, until=person_time(req["window_until"], lang, tz))
        lines.append(f"{t['promise']}: {promise}")
    n = max(1, int(req.get("requests") or 1))
    asked = t["requests_one"] if n == 1 else t["requests"].format(n=n, times=_times(n, lang))
    lines.append(asked if n == 1 else f"{asked} {t['requests_merged']}")
    lines.append(f"{t['request_no']}: {req['id']}")
    if req.get("typed"):
        lines += ["", t["typed"]]
    lines += [
        "",
        t["cb_done"],
        f'    centralka callbacks done {req["id"]} --note "{t["cb_done_note"]}"',
        t["cb_footer"],
        "",
    ]
    return subject, "\n".join(lines)


def voicemail_message(
    vm: dict, lang: str = "pl", *, prefix: str = "[Centralka] ", tz=None, country: str = "PL"
) -> tuple[str, str]:
    """``(subject, body)`` of the e-mail bringing a voice message (R15); the recording itself is
    attached by whoever queues it (:func:`enqueue_mail`). ``vm``: id, number, at, seconds,
    topic_label (may be None)."""
    t = _texts(lang)
    withheld = _withheld(vm.get("number"), vm.get("number_kind"))
    number = _dial_form(vm.get("number"), vm.get("number_kind"), lang, country)
    length = _length(vm.get("seconds"))
    subject = t["vm_subject_withheld" if withheld else "vm_subject"].format(prefix=prefix, number=number, length=length)
    lines = [
        t["vm_intro"],
        "",
        f"{t['from']}: {number}",
        f"{t['when']}: {person_time(vm.get('at'), lang, tz)}",
        f"{t['length']}: {length}",
    ]
    topic = " ".join(str(vm.get("topic_label") or "").split())
    if topic:
        lines.append(f"{t['topic']}: {topic}")
    lines += [f"{t['vm_no']}: {vm['id']}", "", t["vm_attached"]]
    if not withheld:
        lines.append(t["vm_call_back"].format(number=number))
    lines += [t["vm_footer"], ""]
    return subject, "\n".join(lines)


# --- the mail outbox -----------------------------------------------------------------------------
def _attachment_entry(item, what: str) -> dict:
    """``{"name", "mime", "path"}`` from such a dict (name and mime optional) or a bare path."""
    if isinstance(item, dict):
        if not item.get("path"):
            raise MailInputError(f"{what}: an attachment needs a path (the file to attach), got {item!r}")
        path = str(item["path"])
        name = str(item.get("name") or Path(path).name)
        mime = item.get("mime")
    elif isinstance(item, (str, Path)) and str(item).strip():
        path = str(item)
        name, mime = Path(path).name, None
    else:
        raise MailInputError(f"{what}: an attachment is a path or a {{name, mime, path}} table, got {item!r}")
    if not name.strip():
        raise MailInputError(f"{what}: the attachment {path!r} needs a file name")
    if not _mime_ok(mime):
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return {"name": name, "mime": mime, "path": path}


def _mime_ok(mime) -> bool:
    """``type/subtype``, both parts present and without spaces (e.g. ``audio/mpeg``)."""
    if not isinstance(mime, str):
        return False
    maintype, slash, subtype = mime.partition("/")
    return bool(slash and maintype and subtype and " " not in mime and "/" not in subtype)


def _one_line(text: str) -> str:
    """A subject as one header line: line breaks (which email refuses in a header) become spaces."""
    return " ".join(str(text).split())


def enqueue_mail(
    db,
    settings,
    *,
    key: str,
    kind: str,
    team: str | None,
    subject: str,
    body: str,
    attachments=(),
    at: str,
) -> int | None:
    """Queue one e-mail for ``team`` in the mail outbox; the notifier delivers it (and retries
    until a server accepted it). Returns the outbox id — the same id for the same ``key``, so
    queueing twice sends once — or None when e-mail is off: no ``mail.host``, or no address for
    the team (``[mail] teams``) nor in ``[mail] recipients``; that is logged. ``attachments``:
    ``{"name", "mime", "path"}`` dicts (or paths); the files are read when the e-mail is sent,
    so they must stay where they are until then (one gone by then is named in the e-mail that
    goes without it). ``at``: a stamp (appliance.clock.stamp).

    Raises :class:`MailInputError` for arguments that cannot make an e-mail and ConfigError for
    a malformed address in ``[mail] teams`` / ``recipients``; nothing is queued then (both are
    CentralkaError, which the callers catch and log)."""
    what = f"{kind} e-mail {key}"
    if not isinstance(key, str) or not key.strip():
        raise MailInputError(f"an e-mail to queue needs a key (e.g. 'voicemail:12'), got {key!r}")
    if not isinstance(kind, str) or not kind.strip():
        raise MailInputError(f"e-mail {key}: needs a kind (e.g. 'callback', 'voicemail'), got {kind!r}")
    if not isinstance(subject, str) or not _one_line(subject):
        raise MailInputError(f"{what}: needs a subject (a non-empty text), got {subject!r}")
    if not isinstance(body, str):
        raise MailInputError(f"{what}: the body must be a text, got {type(body).__name__}")
    try:
        parse_stamp(at)
    except (TypeError, ValueError) as exc:
        raise MailInputError(f"{what}: 'at' must be a stamp such as {stamp(0)!r}, got {at!r}") from exc
    if isinstance(attachments, (str, Path, dict)):
        attachments = [attachments]  # one attachment given alone, not a list of its letters
    files = [_attachment_entry(a, what) for a in attachments]
    if not settings.mail.host.strip():
        log.info("mail: %s not queued: e-mail is off (no mail server, mail.host)", what)
        return None
    recipients = recipients_for(settings, team)  # ConfigError for a malformed address: the caller says it
    if not recipients:
        log.info("mail: %s not queued: no address for team %r (mail.teams) nor in mail.recipients", what, team)
        return None
    for entry in files:
        if not Path(entry["path"]).is_file():
            # Queued all the same: the e-mail matters more than its attachment, and says it is missing.
            log.warning("mail: %s: the attachment %s is not there (yet); it is read when the e-mail goes", what, entry)
    return mail_outbox.enqueue(
        db,
        key=key,
        kind=kind,
        recipients=recipients,
        subject=_one_line(subject),
        body=body,
        attachments=files,
        at=at,
    )


def _outbox_message_id(row: dict, domain: str) -> str:
    """Stable across retries (key and creation time), different for a key reused after the
    database was recreated (the creation time differs)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", row["key"]).strip("-")[:64] or "mail"
    digest = hashlib.sha256(row["key"].encode("utf-8")).hexdigest()[:8]
    created = "".join(ch for ch in str(row["created_at"])[:23] if ch.isdigit())
    return f"<centralka.{safe}.{digest}.{created}@{domain or 'centralka.invalid'}>"


def _unreadable(exc: OSError, t: dict) -> str:
    if isinstance(exc, FileNotFoundError):
        return t["file_missing"]
    if isinstance(exc, PermissionError):
        return t["file_denied"]
    return exc.strerror or str(exc)


# --- the worker ----------------------------------------------------------------------------------
class Notifier:
    """E-mails pending alarms, forwards incoming SMS and delivers the mail outbox; call
    :meth:`run_once` every few seconds from one thread with its own database connection. Never
    raises from ``run_once``.

    SMS that arrived before e-mail was first configured on this box are not forwarded (they are
    on the web UI's list): switching mail on must not flood the clinic with a year of texts.
    Alarms are all sent; when more than ``mail.digest_over`` are pending they go as one e-mail.
    Alarms and SMS go to ``mail.recipients``; an outbox e-mail to the addresses stored with it.

    The outbox, row by row: accepted → ``sent`` (the Message-ID kept); a 4xx reply to it →
    tried again after ``retry_min_s``, doubling up to ``retry_max_s`` (its own pause, the other
    rows go on); a 5xx reply to its recipients or its content → ``failed`` with the server's
    reply (never tried again, the other rows go on; a 5xx to a message with attachments is
    first tried once without them, saying so in the body); anything that breaks the connection
    (refused, TLS, login, dropped mid-message) → the row waits its own pause and the whole
    notifier backs off as for alarms. Rounds in which the server takes nothing count towards
    the one ``mail_failing`` alarm per outage.
    """

    FORWARD_FROM = "mail.sms_forward_after_id"
    FAILING_SINCE = "mail.failing_since"
    FAILING_ALARMED = "mail.failing_alarmed"

    def __init__(self, db, settings, mailer: Mailer | None = None, *, clock=time.time, tz=None, rng=random.random):
        self.db = db
        self.settings = settings
        self.mail = settings.mail
        self.lang = settings.box.language
        self.country = settings.box.country
        self.mailer = mailer if mailer is not None else Mailer(settings)
        self.clock = clock
        self.tz = tz
        self.rng = rng
        self.failures = 0
        self.next_try = 0.0
        self.last_error: MailError | None = None
        self._said_disabled = False
        self.prefix = subject_prefix(settings)
        self.domain = self.mailer.from_address.rpartition("@")[2]
        if self.mailer.enabled and notifications.get_state(db, self.FORWARD_FROM) is None:
            last = inbox.last_id(db)
            notifications.set_state(db, self.FORWARD_FROM, str(last))
            if last:
                log.info("mail: forwarding incoming SMS from now on; the %d received earlier stay in the web UI", last)

    @property
    def enabled(self) -> bool:
        return self.mailer.enabled

    def next_due_in(self) -> float:
        """Seconds until run_once will try again after a failure (0: now)."""
        return max(0.0, self.next_try - self.clock())

    def run_once(self) -> dict:
        """Send what is pending. Returns counts for the log/UI: ``alarms``, ``sms``, ``mail``
        (outbox e-mails) sent, ``mail_failed`` (outbox e-mails refused for good this round),
        ``pending`` left, ``error`` (text or None), ``state`` (off, waiting, idle, sent, failed)."""
        result = {"alarms": 0, "sms": 0, "mail": 0, "mail_failed": 0, "pending": 0, "error": None, "state": "idle"}
        if not self.mailer.enabled:
            if not self._said_disabled:
                log.info("mail: e-mail notifications are off: %s", self.mailer.why_disabled)
                self._said_disabled = True
            result["state"] = "off"
            return result
        if self.clock() < self.next_try:
            result["state"] = "waiting"
            result["error"] = str(self.last_error) if self.last_error else None
            return result
        try:
            self._run(result)
        except MailError as exc:
            self._failed(exc, result)
        except Exception as exc:  # a bug or a database error must not stop the core's loop
            log.exception("mail: notifier failed")
            self._failed(MailError("server", f"internal error: {type(exc).__name__}: {exc}"), result)
        return result

    def _pending_sms(self) -> list[dict]:
        if not self.mail.forward_sms or not self.mailer.recipients:
            return []
        after = int(notifications.get_state(self.db, self.FORWARD_FROM) or 0)
        return inbox.not_forwarded(self.db, after)

    def _pending_alarms(self) -> list[dict]:
        return pending_notifications(self.db) if self.mail.alarms and self.mailer.recipients else []

    def _pending_count(self) -> int:
        return len(self._pending_alarms()) + len(self._pending_sms()) + mail_outbox.pending_count(self.db)

    def _run(self, result: dict) -> None:
        alarms = self._pending_alarms()
        sms = self._pending_sms()
        mails = mail_outbox.due(self.db, stamp(self.clock()))
        if not alarms and not sms and not mails:
            if not mail_outbox.pending_count(self.db):
                self._recovered()
            # else: outbox e-mails wait for their next try; that is no proof the server is back.
            return
        kw = {"prefix": self.prefix, "tz": self.tz, "domain": self.domain}
        skipped = 0
        retried: list[MailError] = []
        connected = False
        try:
            with self.mailer.session() as session:
                connected = True
                digest = 0 < int(self.mail.digest_over) < len(alarms)
                batches = [alarms] if digest else [[a] for a in alarms]
                for batch in batches:
                    msg = alarm_digest(batch, self.lang, **kw) if digest else alarm_message(batch[0], self.lang, **kw)
                    if not self._send_one(session, msg, f"alarm #{batch[0]['id']}"):
                        skipped += len(batch)
                        continue
                    for row in batch:
                        mark_notified(self.db, row["id"])
                    result["alarms"] += len(batch)
                for row in sms:
                    msg = incoming_sms_message(row, self.lang, country=self.country, **kw)
                    if not self._send_one(session, msg, f"incoming SMS #{row['id']}"):
                        skipped += 1
                        continue
                    inbox.mark_forwarded(self.db, row["id"])
                    result["sms"] += 1
                for row in mails:
                    self._deliver(session, row, result, retried)
        except MailError as exc:
            if not connected:
                # No session at all (refused, DNS, TLS, login): each e-mail due was tried and put off.
                self._postpone(mails, exc)
            raise
        sent = result["alarms"] or result["sms"] or result["mail"]
        result["state"] = "sent" if sent else "failed"
        if skipped:
            result["pending"] = skipped
            raise self.last_error
        if retried:
            # The server answers but takes none of it now (e.g. 451 to everything): the outage
            # clock runs, though each row keeps its own pause (no backoff for the alarms).
            self.last_error = retried[-1]
            result["error"] = str(retried[-1])
            result["pending"] = mail_outbox.pending_count(self.db)
            if not sent:
                self._maybe_alarm(retried[-1])
            return
        self._recovered()

    # --- the outbox, one row ---------------------------------------------------------------------
    def _row_delay(self, attempts: int) -> float:
        delay = min(float(self.mail.retry_max_s), float(self.mail.retry_min_s) * 2 ** max(0, attempts - 1))
        return delay * (0.8 + 0.4 * self.rng())

    def _retry_at(self, row: dict) -> tuple[int, float, str]:
        """(this attempt's number, the pause, the stamp of the next try) for a row put off now."""
        attempts = int(row["attempts"] or 0) + 1
        delay = self._row_delay(attempts)
        return attempts, delay, stamp(self.clock() + delay)

    def _postpone(self, rows: list[dict], exc: MailError) -> None:
        for row in rows:
            _, _, next_try = self._retry_at(row)
            mail_outbox.mark_retry(self.db, row["id"], str(exc), next_try)
        if rows:
            log.warning("mail: %d outbox e-mail(s) not sent, each tried again later: %s", len(rows), exc)

    def _outbox_message(self, row: dict, *, with_files: bool = True, notes=()) -> tuple[EmailMessage, list, list]:
        """The row as an e-mail: (message, attached entries, problems for last_error)."""
        t = _texts(self.lang)
        notes, problems, files = list(notes), [], []
        for entry in row["attachments"] if with_files else ():
            try:
                files.append((entry, Path(entry["path"]).read_bytes()))
            except OSError as exc:
                notes.append(
                    t["attachment_lost"].format(name=entry["name"], path=entry["path"], why=_unreadable(exc, t))
                )
                problems.append(
                    f"attachment {entry['name']!r} lost: cannot read {entry['path']}: {exc.strerror or exc}"
                )
        body = row["body"]
        if notes:
            body = "\n".join(notes) + "\n\n" + body
        # One line: a row written before subjects were checked must still make a valid header.
        message = _new_message(_one_line(row["subject"]), body, _outbox_message_id(row, self.domain))
        try:
            created = datetime.fromisoformat(row["created_at"])
            if created.tzinfo is None:
                created = created.replace(tzinfo=timezone.utc)
            message.replace_header("Date", format_datetime(created))  # composed then, not now
        except (TypeError, ValueError):
            pass
        for entry, data in files:
            mime = entry.get("mime") if _mime_ok(entry.get("mime")) else "application/octet-stream"
            maintype, _, subtype = mime.partition("/")
            message.add_attachment(data, maintype=maintype, subtype=subtype, filename=entry["name"])
        return message, [entry for entry, _ in files], problems

    def _deliver(self, session, row: dict, result: dict, retried: list) -> None:
        """Send one outbox row and mark it; raises only for errors that break the session."""
        what = f"e-mail #{row['id']} ({row['kind']} {row['key']})"
        if not row["recipients"]:
            self._refused_for_good(row, "no recipient stored with this e-mail", "config", result)
            return
        try:
            message, attached, problems = self._outbox_message(row)
        except Exception as exc:  # a malformed row must not block the rows behind it
            log.exception("mail: %s cannot be composed", what)
            self._refused_for_good(row, f"cannot compose the e-mail: {type(exc).__name__}: {exc}", None, result)
            return
        try:
            try:
                refused = session.send(message, row["recipients"])
            except MailError as exc:
                if not (attached and exc.stage == "message" and not exc.transient):
                    raise
                # Too big, or the attachment itself refused (552, 554): the e-mail matters more.
                log.warning("mail: %s refused with its attachments (%s); sending it without them", what, exc)
                note = _texts(self.lang)["attachment_refused"].format(
                    name=", ".join(a["name"] for a in attached), reply=_server_reply(exc)
                )
                message, _, _ = self._outbox_message(row, with_files=False, notes=[note])
                problems.append(f"sent without its attachments: {exc}")
                refused = session.send(message, row["recipients"])
        except MailError as exc:
            if exc.stage in ("recipients", "message") and not exc.transient:
                result["error"] = str(exc)
                self._refused_for_good(row, str(exc), exc.stage, result)
                return
            attempts, delay, next_try = self._retry_at(row)
            mail_outbox.mark_retry(self.db, row["id"], str(exc), next_try)
            log.warning("mail: %s not sent (attempt %d, next in %.0f s): %s", what, attempts, delay, exc)
            if exc.stage not in ("recipients", "message"):
                raise  # the connection is gone or unusable: the whole notifier backs off
            retried.append(exc)
            return
        # The server took it, perhaps not for everyone: a 4xx recipient is still owed it, a 5xx
        # one never gets it (an alarm says so).
        put_off = [r for r in row["recipients"] if r in refused and 400 <= refused[r][0] < 500]
        lost = [r for r in row["recipients"] if r in refused and r not in put_off]
        for rcpt, (code, text) in refused.items():
            problems.append(f"{rcpt} refused: {code} {' '.join(_decode(text).split())}")
        note = "; ".join(problems) or None
        with transaction(self.db):
            if put_off:
                attempts, delay, next_try = self._retry_at(row)
                mail_outbox.mark_retry(
                    self.db, row["id"], note, next_try, recipients=put_off, message_id=message["Message-ID"]
                )
                log.warning(
                    "mail: %s sent, but put off for %s (attempt %d, next in %.0f s)",
                    what,
                    ", ".join(put_off),
                    attempts,
                    delay,
                )
            else:
                mail_outbox.mark_sent(self.db, row["id"], stamp(self.clock()), message["Message-ID"], note=note)
            if lost:
                self._alarm_refused(row, lost, note, "recipients")
        result["mail"] += 1
        for problem in problems:
            log.warning("mail: %s sent, but %s", what, problem)

    def _refused_for_good(self, row: dict, error: str, stage: str | None, result: dict) -> None:
        """The row can never go: ``failed`` with the reason, and an alarm so a person knows that
        the team did not get it (both in one transaction: never one without the other)."""
        with transaction(self.db):
            mail_outbox.mark_failed(self.db, row["id"], error)
            self._alarm_refused(row, row["recipients"], error, stage)
        result["mail_failed"] += 1
        log.warning("mail: e-mail #%s (%s %s) refused for good: %s", row["id"], row["kind"], row["key"], error)

    def _alarm_refused(self, row: dict, addresses: list, error: str, stage: str | None) -> None:
        lang = _lang(self.lang)
        if stage and f"mail.why.{stage}" in CATALOG:
            why = msg(f"mail.why.{stage}")
        else:
            why = _texts(lang)["cannot_compose"]
        to = ", ".join(addresses) or "nobody"
        # One e-mail that did not go (the others do): say which, not "e-mail is down".
        text = msg("mail.refused", why=why, subject=_subject_text(str(row["subject"] or "")), to=to)
        detail = f"e-mail #{row['id']} ({row['kind']}) {row['subject']!r} to {to}: {error}"
        raise_alarm(self.db, "mail_refused", "mail", text, severity="warning", detail=detail, lang=lang)

    def _send_one(self, session, msg: EmailMessage, what: str) -> bool:
        """False when the server rejected this one message or every recipient of it (the rest
        still go; the round then counts as failed and backs off); other errors raise."""
        try:
            session.send(msg)
            return True
        except MailError as exc:
            if exc.stage not in ("message", "recipients"):
                raise
            log.warning("mail: %s not e-mailed: %s", what, exc)
            self.last_error = exc
            return False

    def _failed(self, exc: MailError, result: dict) -> None:
        self.failures += 1
        delay = min(float(self.mail.retry_max_s), float(self.mail.retry_min_s) * 2 ** (self.failures - 1))
        delay *= 0.8 + 0.4 * self.rng()  # jitter: boxes behind one relay do not retry in step
        self.next_try = self.clock() + delay
        self.last_error = exc
        result["error"] = str(exc)
        if result["state"] != "sent":
            result["state"] = "failed"
        try:
            result["pending"] = max(result["pending"], self._pending_count())
            self._maybe_alarm(exc)
        except Exception:
            log.exception("mail: cannot record the mail failure")
        log.warning(
            "mail: %s (attempt %d; %s pending, next try in %.0f s)", exc, self.failures, result["pending"], delay
        )

    def _maybe_alarm(self, exc: MailError) -> None:
        # One alarm per outage, and only once it has lasted: a short hiccup is retried quietly.
        since = notifications.get_state(self.db, self.FAILING_SINCE)
        now = self.clock()
        if since is None:
            notifications.set_state(self.db, self.FAILING_SINCE, repr(now))
            since = repr(now)
        if notifications.get_state(self.db, self.FAILING_ALARMED) or now - float(since) < float(
            self.mail.alarm_after_s
        ):
            return
        notifications.set_state(self.db, self.FAILING_ALARMED, "1")
        lang = _lang(self.lang)
        stage = exc.stage if f"mail.why.{exc.stage}" in CATALOG else "server"
        text = msg("mail.failing", why=msg(f"mail.why.{stage}"), server=self.mailer.where)
        raise_alarm(self.db, "mail_failing", "mail", text, severity="warning", detail=str(exc), lang=lang)

    def _recovered(self) -> None:
        if self.failures or notifications.get_state(self.db, self.FAILING_SINCE) is not None:
            log.info("mail: %s accepts e-mail again", self.mailer.where)
            notifications.set_state(self.db, self.FAILING_SINCE, None)
            notifications.set_state(self.db, self.FAILING_ALARMED, None)
        self.failures = 0
        self.next_try = 0.0
        self.last_error = None
