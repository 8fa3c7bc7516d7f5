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

Delivery is at least once: if the box dies between the server's "250 OK" and the write that
marks the row, the e-mail goes out again after the restart. The Message-ID is derived from the
row (not random), so mail clients that fold duplicates (Gmail does) show it once.
"""

from __future__ import annotations

import base64
import logging
import random
import smtplib
import socket
import ssl
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr

import phonenumbers

from ..alarms import mark_notified, pending_notifications, raise_alarm
from ..errors import CentralkaError, ConfigError
from ..messages import CATALOG, msg, plural_pl
from ..store import inbox, notifications

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


# --- sending -------------------------------------------------------------------------------------
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
        self.recipients = [r.strip() for r in mail.recipients if r.strip()]
        for r in self.recipients:
            if "@" not in parseaddr(r)[1]:
                raise ConfigError(f"mail.recipients: {r!r} is not an e-mail address")
        sender = mail.from_address.strip() or (self.username if "@" in self.username else "")
        self.from_address = sender or f"centralka@{socket.gethostname()}"
        self.from_name = mail.from_name
        self.where = f"{self.host}:{self.port}"
        if not self.host:
            self.why_disabled = "no mail server (mail.host) is configured"
        elif not self.recipients:
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
                f"{m.where} refused every recipient ({detail}); check mail.recipients",
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


# --- the worker ----------------------------------------------------------------------------------
class Notifier:
    """E-mails pending alarms and forwards incoming SMS; call :meth:`run_once` every few seconds
    from one thread with its own database connection. Never raises from ``run_once``.

    SMS that arrived before e-mail was first configured on this box are not forwarded (they are
    on the web UI's list): switching mail on must not flood the clinic with a year of texts.
    Alarms are all sent; when more than ``mail.digest_over`` are pending they go as one e-mail.
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
        prefix = self.mail.subject_prefix.strip()
        self.prefix = f"{prefix} " if prefix else ""
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
        """Send what is pending. Returns counts for the log/UI: ``alarms``, ``sms`` sent,
        ``pending`` left, ``error`` (text or None), ``state`` (off, waiting, idle, sent, failed)."""
        result = {"alarms": 0, "sms": 0, "pending": 0, "error": None, "state": "idle"}
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
        if not self.mail.forward_sms:
            return []
        after = int(notifications.get_state(self.db, self.FORWARD_FROM) or 0)
        return inbox.not_forwarded(self.db, after)

    def _pending_alarms(self) -> list[dict]:
        return pending_notifications(self.db) if self.mail.alarms else []

    def _run(self, result: dict) -> None:
        alarms = self._pending_alarms()
        sms = self._pending_sms()
        if not alarms and not sms:
            self._recovered()
            return
        kw = {"prefix": self.prefix, "tz": self.tz, "domain": self.domain}
        skipped = 0
        with self.mailer.session() as session:
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
        result["state"] = "sent" if result["alarms"] or result["sms"] else "failed"
        if skipped:
            result["pending"] = skipped
            raise self.last_error
        self._recovered()

    def _send_one(self, session, msg: EmailMessage, what: str) -> bool:
        """False when the server rejected this one message (the rest still go); other errors raise."""
        try:
            session.send(msg)
            return True
        except MailError as exc:
            if exc.stage != "message":
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
            result["pending"] = max(result["pending"], len(self._pending_alarms()) + len(self._pending_sms()))
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
