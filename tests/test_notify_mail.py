"""E-mail from the box, checked against a real SMTP server on 127.0.0.1 (aiosmtpd).

Every test reads the e-mail the way the clinic's admin would: subject, sender, body, parsed
with the email package from the bytes the server received.
"""

import email
import email.policy
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from appliance.alarms import list_alarms, raise_alarm
from appliance.config import load_settings
from appliance.gsm.outbox import flush_incomplete, store_incoming
from appliance.messages import msg
from appliance.notify.mail import MailError, Mailer, Notifier, alarm_digest
from appliance.store.db import open_db

# aiosmtpd warns about AUTH without TLS; on loopback that is what the tests want.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

WARSAW = ZoneInfo("Europe/Warsaw")
ADMIN = "kierownik@przychodnia.example"
DESK = "rejestracja@przychodnia.example"
BOX = "centralka@przychodnia.example"
TRUNK_DOWN = msg("line.state.down", line=msg("line.trunk"))
REGISTRATION_REFUSED = msg(
    "line.because", sentence=TRUNK_DOWN, reason=msg("trunk.registration_failed", detail="403 Forbidden")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    message: email.message.EmailMessage
    raw: bytes

    @property
    def subject(self) -> str:
        return self.message["Subject"]

    @property
    def body(self) -> str:
        # Lines end in CRLF on the wire; a mail client shows plain lines.
        return self.message.get_body(("plain",)).get_content().replace("\r\n", "\n")


@dataclass
class Inbox:
    """The clinic's mail server: keeps what it accepted, refuses the addresses in ``refuse``."""

    refuse: set = field(default_factory=set)
    received: list = field(default_factory=list)
    logins: list = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg, envelope.original_content))
        return "250 2.0.0 Ok: queued"


class MailServer:
    """aiosmtpd on 127.0.0.1 at a free port; ``inbox`` is the handler (default: ``Inbox``)."""

    def __init__(self, port=None, *, inbox=None, **smtp_kwargs):
        self.port = port or free_port()
        self.inbox = inbox if inbox is not None else Inbox()
        self.smtp_kwargs = smtp_kwargs
        self.controller = None

    def start(self):
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **self.smtp_kwargs)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None

    @property
    def received(self):
        return self.inbox.received


@pytest.fixture
def servers():
    started = []

    def make(port=None, start=True, **kw):
        server = MailServer(port, **kw)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in started:
        server.stop()


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def box_settings(port, language="pl", **mail):
    values = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": BOX,
        "from_name": "Centralka – Przychodnia Zdrowie",
        "recipients": [ADMIN],
    }
    values.update(mail)
    return load_settings(env={}, box={"language": language}, mail=values)


@pytest.fixture
def db():
    return open_db(None)


def notifier_for(db, settings, clock=None):
    return Notifier(db, settings, clock=clock or Clock(), tz=WARSAW, rng=lambda: 0.5)


# --- alarms --------------------------------------------------------------------------------------
def test_an_alarm_reaches_the_admin_in_polish(servers, db):
    server = servers()
    notifier = notifier_for(db, box_settings(server.port))
    raise_alarm(
        db,
        "line_down",
        "trunk",
        REGISTRATION_REFUSED,
        severity="critical",
        detail="REGISTER: 403 Forbidden",
    )

    assert notifier.run_once()["alarms"] == 1

    [mail] = server.received
    assert (
        mail.subject == "[Centralka] Alarm krytyczny: Trunk SIP nie działa: rejestracja nie powiodła się: 403 Forbidden"
    )
    assert mail.message["From"].addresses[0].display_name == "Centralka – Przychodnia Zdrowie"
    assert mail.message["From"].addresses[0].addr_spec == BOX
    assert mail.rcpt_tos == [ADMIN]
    assert mail.message["Auto-Submitted"] == "auto-generated"
    assert mail.message.get_content_charset() == "utf-8"
    body = mail.body
    assert body.startswith("Trunk SIP nie działa: rejestracja nie powiodła się: 403 Forbidden\n")
    assert "Centralka zgłasza: alarm krytyczny." in body
    assert "Dotyczy: łącze SIP (trunk)" in body
    assert "Szczegóły: REGISTER: 403 Forbidden" in body
    assert "dopóki ktoś go nie potwierdzi" in body
    assert list_alarms(db)[0]["notified_at"] is not None

    notifier.run_once()
    assert len(server.received) == 1  # told once, not on every pass


def test_an_alarm_in_english(servers, db):
    server = servers()
    notifier = notifier_for(db, box_settings(server.port, language="en"))
    raise_alarm(db, "modem_pin", "gsm", msg("sim.pin_refused_before"), severity="warning", lang="en")

    notifier.run_once()

    [mail] = server.received
    assert mail.subject == (
        "[Centralka] Warning: The SIM card refused this PIN before; it is not tried again (change modem.pin)."
    )
    assert "About: GSM modem" in mail.body
    assert "The phone box reports a warning." in mail.body


def test_alarms_piled_up_arrive_as_one_list(servers, db):
    server = servers()
    notifier = notifier_for(db, box_settings(server.port))
    for n in range(7):
        raise_alarm(
            db,
            "line_down" if n % 2 == 0 else "line_up",
            "trunk",
            msg("modem.sim_busy_for", seconds=n + 1),
            severity="critical" if n == 3 else "info",
        )

    notifier.run_once()

    [mail] = server.received
    assert mail.subject == "[Centralka] 7 nowych alarmów"
    assert "Centralka zgłasza 7 nowych alarmów, od najstarszego:" in mail.body
    assert all(f"karta SIM jest zajęta od {n} s" in mail.body for n in range(1, 8))
    assert "Najpoważniejszy: alarm krytyczny." in mail.body
    assert all(a["notified_at"] for a in list_alarms(db))


@pytest.mark.parametrize(
    "count, words",
    [
        (2, "2 nowe alarmy"),
        (5, "5 nowych alarmów"),
        (12, "12 nowych alarmów"),
        (22, "22 nowe alarmy"),
        (21, "21 nowych alarmów"),
    ],
)
def test_alarm_counts_agree_in_polish(count, words):
    rows = [
        {
            "id": i,
            "at": "2025-03-14T08:05:00+00:00",
            "kind": "line_down",
            "source": "trunk",
            "severity": "warning",
            "text": "x",
            "detail": None,
        }
        for i in range(1, count + 1)
    ]
    assert alarm_digest(rows, "pl")["Subject"] == f"[Centralka] {words}"


# --- incoming SMS --------------------------------------------------------------------------------
def test_an_incoming_sms_in_two_parts_is_forwarded_whole_with_polish_letters(servers, db):
    server = servers()
    notifier = notifier_for(db, box_settings(server.port, recipients=[ADMIN, DESK]))
    sent = datetime(2025, 3, 14, 8, 5, tzinfo=timezone.utc)  # 09:05 in Warsaw (winter time)
    store_incoming(
        db, "+48600123456", "Dzień dobry, tu Zofia Żółkiewska. Proszę o zmianę ", parts_info=(42, 2, 1), sent_at=sent
    )
    store_incoming(
        db, "+48600123456", "terminu wizyty na środę — gęślą jaźń „OK”.", parts_info=(42, 2, 2), sent_at=sent
    )

    assert notifier.run_once()["sms"] == 1

    [mail] = server.received
    assert sorted(mail.rcpt_tos) == sorted([ADMIN, DESK])
    assert mail.subject == (
        "[Centralka] SMS od 600 123 456: Dzień dobry, tu Zofia Żółkiewska. Proszę o zmianę terminu…"
    )
    body = mail.body
    assert "Dzień dobry, tu Zofia Żółkiewska. Proszę o zmianę terminu wizyty na środę — gęślą jaźń „OK”." in body
    assert "Od: 600 123 456" in body
    assert "Wysłany: 14.03.2025, 09:05" in body
    assert "Części: 2" in body
    assert "zadzwoń lub wyślij SMS na numer 600 123 456" in body
    assert all(b < 128 for b in mail.raw)  # Polish letters travel encoded, safe through any relay

    notifier.run_once()
    assert len(server.received) == 1


def test_a_foreign_sender_and_a_missing_part(servers, db):
    server = servers()
    notifier = notifier_for(db, box_settings(server.port))
    store_incoming(db, "+4930901820", "Guten Tag, ", parts_info=(7, 3, 1))
    store_incoming(db, "+4930901820", "bis Montag.", parts_info=(7, 3, 3))
    flush_incomplete(db, older_than_s=0, now=datetime.now(timezone.utc).timestamp() + 1)

    notifier.run_once()

    [mail] = server.received
    assert "Od: +49 30 901820" in mail.body
    assert "Guten Tag, […]bis Montag." in mail.body
    assert "nie dotarły wszystkie części" in mail.body


def test_sms_received_before_mail_was_configured_are_not_forwarded(servers, db):
    server = servers()
    store_incoming(db, "+48600123456", "Stara wiadomość sprzed konfiguracji poczty.")
    notifier = notifier_for(db, box_settings(server.port))  # mail switched on now
    store_incoming(db, "+48600123456", "Nowa wiadomość.")

    notifier.run_once()

    assert [m.body.count("Nowa wiadomość.") for m in server.received] == [1]
    assert not any("Stara" in m.body for m in server.received)


# --- failures ------------------------------------------------------------------------------------
def test_server_down_keeps_everything_pending_and_delivers_exactly_once_later(servers, db):
    server = servers(start=False)  # the port is known, nothing listens yet
    clock = Clock()
    notifier = notifier_for(db, box_settings(server.port, alarm_after_s=600.0), clock)
    raise_alarm(db, "line_down", "gsm", msg("modem.gone"), severity="critical")
    store_incoming(db, "+48600123456", "Proszę o telefon, Świętosław.")

    result = notifier.run_once()
    assert result["state"] == "failed"
    assert f"127.0.0.1:{server.port} refused the connection" in result["error"]
    assert list_alarms(db)[0]["notified_at"] is None
    assert db.execute("SELECT forwarded_at FROM sms_incoming").fetchone()[0] is None

    clock.advance(700)  # still down after the grace time: the admin sees it in the web UI
    notifier.run_once()
    mail_alarm = list_alarms(db)[0]
    assert mail_alarm["kind"] == "mail_failing"
    assert mail_alarm["text"] == (
        f"E-maile z centralki nie wychodzą: serwer poczty nie przyjmuje połączeń (127.0.0.1:{server.port})."
    )

    server.start()
    clock.advance(3600)
    notifier.run_once()
    clock.advance(3600)
    notifier.run_once()

    subjects = [m.subject for m in server.received]
    assert len(server.received) == 3
    assert sum("Modem GSM przestał odpowiadać" in s for s in subjects) == 1
    assert sum("Świętosław" in s for s in subjects) == 1
    assert sum("E-maile z centralki nie wychodzą" in s for s in subjects) == 1
    assert all(a["notified_at"] for a in list_alarms(db))


def test_a_refused_recipient_is_named(servers, db):
    server = servers()
    server.inbox.refuse.add(ADMIN)
    notifier = notifier_for(db, box_settings(server.port))
    raise_alarm(db, "line_down", "trunk", TRUNK_DOWN)

    result = notifier.run_once()

    assert result["state"] == "failed"
    assert "refused every recipient" in result["error"]
    assert f"{ADMIN}: 550" in result["error"]
    assert "mail.recipients" in result["error"]
    assert server.received == []
    assert list_alarms(db)[0]["notified_at"] is None


def test_one_refused_recipient_does_not_stop_the_others(servers, db):
    server = servers()
    server.inbox.refuse.add(DESK)
    notifier = notifier_for(db, box_settings(server.port, recipients=[ADMIN, DESK]))
    raise_alarm(db, "line_down", "trunk", TRUNK_DOWN)

    notifier.run_once()

    [mail] = server.received
    assert mail.rcpt_tos == [ADMIN]
    assert list_alarms(db)[0]["notified_at"] is not None


def test_mail_is_off_without_a_server_or_recipients(db, caplog):
    settings = load_settings(env={}, mail={"recipients": [ADMIN]})
    notifier = Notifier(db, settings)
    raise_alarm(db, "line_down", "trunk", TRUNK_DOWN)

    with caplog.at_level("INFO", logger="centralka.mail"):
        assert notifier.run_once()["state"] == "off"
        assert notifier.run_once()["state"] == "off"
    said = [r.getMessage() for r in caplog.records if "notifications are off" in r.getMessage()]
    assert said == ["mail: e-mail notifications are off: no mail server (mail.host) is configured"]
    assert list_alarms(db)[0]["notified_at"] is None

    no_one = Mailer(load_settings(env={}, mail={"host": "127.0.0.1"}))
    assert no_one.why_disabled == "no recipient (mail.recipients) is configured"
    with pytest.raises(MailError, match="e-mail is off"):
        no_one.send(email.message.EmailMessage())


# --- login and TLS -------------------------------------------------------------------------------
def check_login(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"centralka", "hasło-123".encode())
    if ok:
        server.event_handler.logins.append(auth_data.login.decode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535


def test_plain_login_on_loopback(servers, db):
    server = servers(authenticator=check_login, auth_required=True, auth_require_tls=False)
    notifier = notifier_for(db, box_settings(server.port, username="centralka", password="hasło-123"))
    raise_alarm(db, "line_up", "trunk", msg("line.state.up", line=msg("line.trunk")), severity="info")

    notifier.run_once()

    assert server.inbox.logins == ["centralka"]
    assert [m.subject for m in server.received] == ["[Centralka] Informacja: Trunk SIP działa"]


def test_a_wrong_password_says_so(servers):
    server = servers(authenticator=check_login, auth_required=True, auth_require_tls=False)
    mailer = Mailer(box_settings(server.port, username="centralka", password="zle-haslo"))

    with pytest.raises(MailError) as err:
        mailer.send(email.message.EmailMessage())

    assert err.value.stage == "auth"
    assert f"127.0.0.1:{server.port} refused the login of 'centralka': 535" in str(err.value)
    assert server.received == []


@pytest.fixture
def certificate(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return cert, ctx


def test_login_over_starttls_with_the_clinics_own_certificate(servers, db, certificate):
    cert, ctx = certificate
    server = servers(tls_context=ctx, require_starttls=True, authenticator=check_login, auth_required=True)
    settings = box_settings(
        server.port, security="starttls", username="centralka", password="hasło-123", ca_file=str(cert)
    )
    notifier = notifier_for(db, settings)
    store_incoming(db, "+48221234567", "Zażółć gęślą jaźń.")

    notifier.run_once()

    assert server.inbox.logins == ["centralka"]
    [mail] = server.received
    assert "Zażółć gęślą jaźń." in mail.body
    assert "Od: 22 123 45 67" in mail.body


def test_an_untrusted_certificate_is_refused_clearly(servers, certificate):
    _, ctx = certificate
    server = servers(tls_context=ctx, require_starttls=True)
    mailer = Mailer(box_settings(server.port, security="starttls"))

    with pytest.raises(MailError) as err:
        mailer.send(email.message.EmailMessage())

    assert err.value.stage == "tls"
    assert "certificate is not trusted" in str(err.value)
    assert "mail.ca_file" in str(err.value)


def test_starttls_required_but_not_offered(servers):
    server = servers()  # a plain server: no STARTTLS
    mailer = Mailer(box_settings(server.port, security="starttls"))

    with pytest.raises(MailError, match="does not offer STARTTLS"):
        mailer.send(email.message.EmailMessage())


def test_an_sms_from_a_withheld_number(servers, db):
    server = servers()
    notifier = notifier_for(db, box_settings(server.port))
    store_incoming(db, "", "Proszę o kontakt.")

    notifier.run_once()

    [mail] = server.received
    assert mail.subject == "[Centralka] SMS z numeru zastrzeżonego: Proszę o kontakt."
    assert "Od: numer zastrzeżony" in mail.body
    assert "zadzwoń" not in mail.body  # nobody to call back


def test_tls_from_the_first_byte(servers, db, certificate):
    cert, ctx = certificate
    server = servers(ssl_context=ctx)
    notifier = notifier_for(db, box_settings(server.port, security="tls", ca_file=str(cert)))
    raise_alarm(db, "line_up", "gsm", msg("modem.back"), severity="info")

    notifier.run_once()

    assert [m.subject for m in server.received] == ["[Centralka] Informacja: Modem GSM znów działa."]
