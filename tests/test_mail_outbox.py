"""The mail outbox end to end: e-mails for the clinic's teams (callback requests, voice messages)
queued with enqueue_mail and delivered by the Notifier to a real SMTP server on 127.0.0.1
(aiosmtpd), read back with the email package as a mail client would.

Time is a ManualClock: a retry is made due by moving it, never by sleeping. smtplib is
synchronous and aiosmtpd runs a handler before it answers, so once ``run_once`` returns the
server has seen (or refused) everything it was given.
"""

import email
import email.policy
import shutil
import sqlite3
import ssl
import subprocess
import threading
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from appliance.alarms import list_alarms
from appliance.config import load_settings
from appliance.errors import CentralkaError, ConfigError
from appliance.notify.mail import (
    MailInputError,
    Notifier,
    callback_request_message,
    enqueue_mail,
    voicemail_message,
)
from appliance.store import mail_outbox
from appliance.store.db import open_db
from appliance.testing.clock import ManualClock

from .test_notify_mail import MailServer

WARSAW = ZoneInfo("Europe/Warsaw")
BOX = "centralka@przychodnia.example"
ADMIN = "kierownik@przychodnia.example"
DESK = ["rejestracja@przychodnia.example", "recepcja.druga@przychodnia.example"]
DOCTOR = ["lekarz@przychodnia.example"]
USER, PASSWORDS = "centralka", {"PLAIN": "hasło-123", "LOGIN": "haslo-123"}
RETRY_MIN_S = 30.0  # with rng = 0.5 the jitter factor is 1: pauses of 30, 60, 120 s...
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8 + b"\xff\xfb\x90\x64" * 16


# --- the clinic's mail server --------------------------------------------------------------------
class Inbox:
    """aiosmtpd handler: keeps what it accepted; replies as told to RCPT and DATA."""

    def __init__(self):
        self.received = []  # parsed messages, each with .rcpt_tos
        self.rcpt_tries = []  # every RCPT address asked for, accepted or not
        self.logins = []  # (mechanism, user, over TLS?)
        self.refuse = {}  # address -> reply for every RCPT of it (e.g. 550)
        self.put_off_once = {}  # address -> reply for its next RCPT only (e.g. 451)
        self.rcpt_reply = None  # reply to every RCPT, e.g. "451 ..."
        self.data_reply = None  # reply to DATA instead of accepting, e.g. "451 ..."
        self._changed = threading.Condition()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_tries.append(address)
        reply = self.rcpt_reply or self.refuse.get(address) or self.put_off_once.pop(address, None)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        message.rcpt_tos = list(envelope.rcpt_tos)
        with self._changed:
            self.received.append(message)
            self._changed.notify_all()
        return "250 2.0.0 Ok: queued"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        expected = (USER.encode(), PASSWORDS.get(mechanism, "").encode())
        ok = isinstance(auth_data, LoginPassword) and tuple(auth_data) == expected
        if ok:
            self.logins.append((mechanism, auth_data.login.decode(), session.ssl is not None))
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535

    def wait_for(self, count: int, timeout: float = 5.0) -> list:
        """The messages, once at least ``count`` arrived (fails the test after ``timeout``)."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.received) >= count, timeout), self.received
            return list(self.received)


@pytest.fixture
def mail_server():
    made = []

    def make(*, start=True, **kw):
        server = MailServer(inbox=Inbox(), **kw)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made now: (its PEM file, the server's context)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl makes the test certificate")
    cert, key = tmp_path / "smtp-cert.pem", tmp_path / "smtp-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return cert, ctx


# --- the box -------------------------------------------------------------------------------------
def settings_for(port, **mail):
    values = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": BOX,
        "recipients": [ADMIN],
        "teams": {"rejestracja": DESK, "gabinet": DOCTOR},
        "retry_min_s": RETRY_MIN_S,
        "retry_max_s": 600.0,
        "alarm_after_s": 3600.0,
    }
    values.update(mail)
    return load_settings(env={}, box={"language": "pl", "country": "PL"}, mail=values)


@pytest.fixture
def db():
    return open_db(None)


@pytest.fixture
def clock():
    return ManualClock("2025-03-14T09:05:00+01:00")


def notifier_for(db, settings, clock):
    return Notifier(db, settings, clock=clock.time, tz=WARSAW, rng=lambda: 0.5)


def callback_request(**changes):
    req = {
        "id": 7,
        "number": "+48600123456",
        "number_kind": "mobile",
        "created_at": "2025-03-14T08:04:00.000+00:00",
        "promise": "dzisiaj przed 15:00",
        "requests": 1,
        "typed": False,
        "patient": None,
        "topic_label": "Rejestracja",
        "waited_s": 95,
    }
    req.update(changes)
    return req


def queue_callback(db, settings, clock, *, req=None, team="rejestracja", key=None):
    req = req or callback_request()
    subject, body = callback_request_message(req, "pl", tz=WARSAW)
    return enqueue_mail(
        db,
        settings,
        key=key or f"callback:{req['id']}:request:{req['requests']}",
        kind="callback",
        team=team,
        subject=subject,
        body=body,
        at=clock.stamp(),
    )


def queue_voicemail(db, settings, clock, recording, *, vm_id=12, team="gabinet"):
    vm = {"id": vm_id, "number": "+48600123456", "at": clock.stamp(), "seconds": 42.4, "topic_label": "Gabinet"}
    subject, body = voicemail_message(vm, "pl", tz=WARSAW)
    return enqueue_mail(
        db,
        settings,
        key=f"voicemail:{vm_id}",
        kind="voicemail",
        team=team,
        subject=subject,
        body=body,
        attachments=[{"name": f"wiadomosc-{vm_id}-600123456.mp3", "mime": "audio/mpeg", "path": str(recording)}],
        at=clock.stamp(),
    )


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content().replace("\r\n", "\n")


# --- (a) STARTTLS, login, the callback request as the team reads it ------------------------------
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_callback_request_reaches_the_team_over_starttls_with_login(mail_server, db, clock, certificate, mechanism):
    cert, ctx = certificate
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    server = mail_server(
        tls_context=ctx,
        require_starttls=True,
        auth_required=True,
        auth_exclude_mechanism=[other],  # the server offers only the mechanism under test
        authenticator=lambda *args: server.inbox.authenticate(*args),
    )
    settings = settings_for(
        server.port, security="starttls", username=USER, password=PASSWORDS[mechanism], ca_file=str(cert)
    )
    notifier = notifier_for(db, settings, clock)
    mail_id = queue_callback(db, settings, clock)

    result = notifier.run_once()

    assert (result["state"], result["mail"], result["error"]) == ("sent", 1, None)
    assert server.inbox.logins == [(mechanism, USER, True)]  # logged in, and only after STARTTLS
    [mail] = server.inbox.wait_for(1)
    assert mail["Subject"] == "[Centralka] Oddzwonić: 600 123 456 — Rejestracja"
    assert [a.addr_spec for a in mail["To"].addresses] == DESK
    assert sorted(mail.rcpt_tos) == sorted(DESK)  # the team's addresses, not the admin's
    assert mail["From"].addresses[0].addr_spec == BOX
    assert mail["Auto-Submitted"] == "auto-generated"
    body = text_of(mail)
    assert body.startswith("Osoba dzwoniąca prosi o oddzwonienie.\n")
    assert "Numer: 600 123 456 (komórkowy)" in body
    assert "Temat: Rejestracja" in body
    assert "Oczekiwanie w kolejce: 1 min 35 s" in body
    assert "Kiedy: 14.03.2025, 09:04" in body
    assert "Obiecano oddzwonić: dzisiaj przed 15:00" in body
    assert "centralka callbacks done 7" in body

    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("sent", 1, None)
    assert row["message_id"] == mail["Message-ID"]
    assert row["sent_at"] == clock.stamp()


def test_the_servers_certificate_is_checked_and_an_untrusted_one_loses_nothing(mail_server, db, clock, certificate):
    cert, ctx = certificate
    server = mail_server(tls_context=ctx, require_starttls=True)
    untrusting = settings_for(server.port, security="starttls")  # no ca_file: the system CAs only
    mail_id = queue_callback(db, untrusting, clock)

    result = notifier_for(db, untrusting, clock).run_once()

    assert result["state"] == "failed"
    assert "certificate is not trusted" in result["error"]
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"]) == ("pending", 1)
    assert "certificate is not trusted" in row["last_error"] and "mail.ca_file" in row["last_error"]
    assert server.inbox.received == []

    clock.advance(RETRY_MIN_S)  # the admin sets mail.ca_file; the box restarts its notifier
    fixed = notifier_for(db, settings_for(server.port, security="starttls", ca_file=str(cert)), clock)
    assert fixed.run_once()["mail"] == 1
    assert len(server.inbox.wait_for(1)) == 1
    assert mail_outbox.get(db, mail_id)["state"] == "sent"


# --- (b) a voice message with its recording --------------------------------------------------
def test_a_voice_message_arrives_with_its_mp3(mail_server, db, clock, tmp_path):
    server = mail_server()
    recording = tmp_path / "12.mp3"
    recording.write_bytes(MP3)
    settings = settings_for(server.port)
    mail_id = queue_voicemail(db, settings, clock, recording)

    assert notifier_for(db, settings, clock).run_once()["mail"] == 1

    [mail] = server.inbox.wait_for(1)
    assert mail["Subject"] == "[Centralka] Wiadomość głosowa od 600 123 456 (0:42)"
    assert mail.rcpt_tos == DOCTOR
    assert mail.get_content_type() == "multipart/mixed"
    body = text_of(mail)
    assert "Od: 600 123 456" in body and "Długość: 0:42" in body and "Temat: Gabinet" in body
    assert "Aby oddzwonić, wybierz numer 600 123 456." in body
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_content_type() == "audio/mpeg"
    assert attachment.get_filename() == "wiadomosc-12-600123456.mp3"
    assert attachment.get_content() == MP3
    assert mail_outbox.get(db, mail_id)["state"] == "sent"


def test_a_recording_gone_before_sending_still_sends_the_message_and_says_so(mail_server, db, clock, tmp_path):
    server = mail_server()
    recording = tmp_path / "13.mp3"
    recording.write_bytes(MP3)
    settings = settings_for(server.port)
    mail_id = queue_voicemail(db, settings, clock, recording, vm_id=13)
    recording.unlink()

    notifier_for(db, settings, clock).run_once()

    [mail] = server.inbox.wait_for(1)
    assert list(mail.iter_attachments()) == []
    assert text_of(mail).startswith("Uwaga: załącznik „wiadomosc-13-600123456.mp3” zaginął")
    row = mail_outbox.get(db, mail_id)
    assert row["state"] == "sent"
    assert "lost: cannot read" in row["last_error"]


# --- (c) a broken server loses nothing -----------------------------------------------------------
@pytest.mark.parametrize("put_off_at", ["RCPT", "DATA"])
def test_a_broken_server_loses_nothing_and_the_email_arrives_once_it_works(mail_server, db, clock, put_off_at):
    server = mail_server(start=False)  # the port is known; nothing listens yet
    settings = settings_for(server.port)
    notifier = notifier_for(db, settings, clock)
    mail_id = queue_callback(db, settings, clock)

    # 1. Connection refused: the row waits, with the attempt and the reason.
    result = notifier.run_once()
    assert result["state"] == "failed"
    assert result["pending"] == 1
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"]) == ("pending", 1)
    assert f"127.0.0.1:{server.port} refused the connection" in row["last_error"]

    # 2. The server is up but answers 451 (greylisting, a full queue): still pending.
    server.start()
    if put_off_at == "RCPT":
        server.inbox.rcpt_reply = "451 4.7.1 Greylisted, please try again later"
    else:
        server.inbox.data_reply = "451 4.3.0 Mail server temporarily rejected message"
    assert notifier.run_once()["state"] == "waiting"  # before the pause is over nothing is tried
    assert mail_outbox.get(db, mail_id)["attempts"] == 1
    clock.advance(RETRY_MIN_S)
    result = notifier.run_once()
    assert result["state"] == "failed" and result["mail"] == 0
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"]) == ("pending", 2)
    assert "451 4." in row["last_error"]
    assert server.inbox.received == []

    clock.advance(RETRY_MIN_S)  # the row's own pause has doubled: 60 s, not yet due
    assert notifier.run_once()["mail"] == 0
    assert mail_outbox.get(db, mail_id)["attempts"] == 2

    # 3. The server works again: delivered, exactly once.
    server.inbox.rcpt_reply = server.inbox.data_reply = None
    clock.advance(RETRY_MIN_S)
    result = notifier.run_once()
    assert (result["state"], result["mail"], result["pending"]) == ("sent", 1, 0)
    assert len(server.inbox.wait_for(1)) == 1
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("sent", 3, None)

    clock.advance(3600)
    notifier.run_once()
    assert len(server.inbox.received) == 1
    assert [a["kind"] for a in list_alarms(db)] == []  # a short outage (under alarm_after_s) stays quiet


def test_a_long_outage_raises_one_alarm(mail_server, db, clock):
    server = mail_server()
    server.inbox.data_reply = "451 4.3.0 Try again later"
    settings = settings_for(server.port, alarm_after_s=100.0)
    notifier = notifier_for(db, settings, clock)
    mail_id = queue_callback(db, settings, clock)

    for _ in range(4):  # every 10 minutes (retry_max_s): the outage outlasts alarm_after_s
        notifier.run_once()
        clock.advance(600)

    [alarm] = list_alarms(db)
    assert alarm["kind"] == "mail_failing"
    assert (
        alarm["text"]
        == f"E-maile z centralki nie wychodzą: serwer poczty odrzucił wiadomość (127.0.0.1:{server.port})."
    )
    assert mail_outbox.get(db, mail_id)["state"] == "pending"


def test_a_recipient_put_off_is_still_owed_the_email_and_the_others_get_it_once(mail_server, db, clock):
    server = mail_server()
    server.inbox.put_off_once[DESK[1]] = "450 4.2.1 Mailbox busy, try later"
    settings = settings_for(server.port)
    notifier = notifier_for(db, settings, clock)
    mail_id = queue_callback(db, settings, clock)

    assert notifier.run_once()["mail"] == 1
    [first] = server.inbox.wait_for(1)
    assert first.rcpt_tos == [DESK[0]]
    row = mail_outbox.get(db, mail_id)
    assert (row["state"], row["recipients"]) == ("pending", [DESK[1]])
    assert f"{DESK[1]} refused: 450 4.2.1 Mailbox busy" in row["last_error"]

    clock.advance(RETRY_MIN_S)
    notifier.run_once()
    first, second = server.inbox.wait_for(2)
    assert second.rcpt_tos == [DESK[1]]
    assert second["Message-ID"] == first["Message-ID"]  # one e-mail, delivered in two steps
    assert mail_outbox.get(db, mail_id)["state"] == "sent"
    clock.advance(3600)
    notifier.run_once()
    assert sorted(r for m in server.inbox.received for r in m.rcpt_tos) == sorted(DESK)


# --- (d) refused for good ------------------------------------------------------------------------
def test_a_550_marks_the_email_failed_with_the_servers_words_and_raises_an_alarm(mail_server, db, clock, tmp_path):
    server = mail_server()
    reply = "550 5.1.1 <lekarz@przychodnia.example>: Recipient address rejected: User unknown"
    server.inbox.refuse[DOCTOR[0]] = reply
    settings = settings_for(server.port)
    notifier = notifier_for(db, settings, clock)
    recording = tmp_path / "12.mp3"
    recording.write_bytes(MP3)
    refused = queue_voicemail(db, settings, clock, recording)  # for the doctor: refused
    fine = queue_callback(db, settings, clock)  # for the desk: goes all the same

    result = notifier.run_once()

    assert (result["mail"], result["mail_failed"]) == (1, 1)
    row = mail_outbox.get(db, refused)
    assert (row["state"], row["attempts"], row["next_try_at"]) == ("failed", 1, None)
    assert reply in row["last_error"]
    assert mail_outbox.get(db, fine)["state"] == "sent"
    [alarm] = list_alarms(db)
    assert (alarm["kind"], alarm["source"], alarm["severity"]) == ("mail_refused", "mail", "warning")
    # Which e-mail did not go, to whom; and that the rest still goes (not "e-mail is down").
    assert alarm["text"] == (
        "E-mail „[Centralka] Wiadomość głosowa od 600 123 456 (0:42)” do lekarz@przychodnia.example nie wyszedł: "
        "serwer poczty odrzucił adresy odbiorców. Pozostałe e-maile wychodzą."
    )
    assert reply in alarm["detail"] and "Wiadomość głosowa od 600 123 456" in alarm["detail"]

    clock.advance(3600)
    notifier.run_once()  # the alarm goes to the admin; the refused e-mail is not tried again
    assert server.inbox.rcpt_tries.count(DOCTOR[0]) == 1
    subjects = [m["Subject"] for m in server.inbox.wait_for(2)]
    assert subjects[0] == "[Centralka] Oddzwonić: 600 123 456 — Rejestracja"
    assert subjects[1].startswith("[Centralka] Ostrzeżenie: E-mail „[Centralka] Wiadomość głosowa od 600 123 456")
    assert server.inbox.received[1].rcpt_tos == [ADMIN]
    assert "User unknown" in text_of(server.inbox.received[1])


def test_an_alarm_the_admins_server_refuses_does_not_hold_up_the_teams_email(mail_server, db, clock):
    server = mail_server()
    server.inbox.refuse[ADMIN] = f"550 5.1.1 <{ADMIN}>: no such mailbox"
    server.inbox.refuse[DOCTOR[0]] = f"550 5.1.1 <{DOCTOR[0]}>: no such mailbox"
    settings = settings_for(server.port)
    notifier = notifier_for(db, settings, clock)
    queue_callback(db, settings, clock, team="gabinet")  # refused: raises an alarm for the admin
    notifier.run_once()

    clock.advance(3600)
    later = queue_callback(db, settings, clock, req=callback_request(id=8), team="rejestracja")
    notifier.run_once()  # the alarm e-mail is refused too, but the desk's e-mail still goes

    assert mail_outbox.get(db, later)["state"] == "sent"
    assert [m.rcpt_tos for m in server.inbox.received] == [DESK]
    assert list_alarms(db)[0]["notified_at"] is None  # the refused alarm stays in the web UI


# --- (e) once per key ----------------------------------------------------------------------------
def test_the_same_key_twice_is_one_email(mail_server, db, clock):
    server = mail_server()
    settings = settings_for(server.port)
    notifier = notifier_for(db, settings, clock)

    first = queue_callback(db, settings, clock)
    clock.advance(5)
    assert queue_callback(db, settings, clock) == first
    notifier.run_once()
    clock.advance(3600)
    assert queue_callback(db, settings, clock) == first  # even once it went
    notifier.run_once()

    assert len(server.inbox.wait_for(1)) == 1
    assert len(mail_outbox.listing(db)) == 1

    queue_callback(db, settings, clock, req=callback_request(requests=2))  # asked again: a new e-mail
    notifier.run_once()
    assert len(server.inbox.wait_for(2)) == 2
    assert "poproszono o oddzwonienie 2 razy" in text_of(server.inbox.received[1])


# --- a crash between "250 OK" and the mark: at least once ----------------------------------------
def test_a_crash_before_the_mark_sends_it_again_with_the_same_message_id(mail_server, db, clock, monkeypatch):
    server = mail_server()
    settings = settings_for(server.port)
    notifier = notifier_for(db, settings, clock)
    mail_id = queue_callback(db, settings, clock)
    mark_sent = mail_outbox.mark_sent

    def disk_fails(*args, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(mail_outbox, "mark_sent", disk_fails)
    assert notifier.run_once()["state"] == "failed"
    assert len(server.inbox.wait_for(1)) == 1
    assert mail_outbox.get(db, mail_id)["state"] == "pending"  # not known to have gone

    monkeypatch.setattr(mail_outbox, "mark_sent", mark_sent)
    clock.advance(3600)
    notifier.run_once()

    first, again = server.inbox.wait_for(2)
    assert again["Message-ID"] == first["Message-ID"]  # a client that folds duplicates shows one
    assert mail_outbox.get(db, mail_id)["state"] == "sent"
    clock.advance(3600)
    notifier.run_once()
    assert len(server.inbox.received) == 2


# --- bad input -----------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly_and_queues_nothing(db, clock, tmp_path):
    settings = settings_for(2525)
    good = {"key": "voicemail:1", "kind": "voicemail", "team": "gabinet", "subject": "Temat", "body": "Treść"}

    def queue(**changes):
        return enqueue_mail(db, settings, **{**good, "at": clock.stamp(), **changes})

    cases = [
        ({"key": ""}, "needs a key"),
        ({"kind": None}, "needs a kind"),
        ({"subject": " \n "}, "needs a subject"),
        ({"body": b"bytes"}, "the body must be a text"),
        ({"at": "wczoraj"}, "'at' must be a stamp"),
        ({"attachments": [{"name": "nagranie.mp3"}]}, "an attachment needs a path"),
        ({"attachments": [42]}, "an attachment is a path or a"),
    ]
    for changes, says in cases:
        with pytest.raises(MailInputError, match=says) as err:
            queue(**changes)
        assert isinstance(err.value, CentralkaError)  # what the callers catch and log

    broken = settings_for(2525, teams={"gabinet": ["lekarz-bez-domeny"]})
    with pytest.raises(ConfigError, match="mail.teams.gabinet: 'lekarz-bez-domeny' is not an e-mail address"):
        enqueue_mail(db, broken, **good, at=clock.stamp())
    assert mail_outbox.listing(db) == []


def test_a_subject_with_a_line_break_is_folded_not_lost(mail_server, db, clock):
    server = mail_server()
    settings = settings_for(server.port)
    enqueue_mail(
        db,
        settings,
        key="callback:9:request:1",
        kind="callback",
        team="rejestracja",
        subject="[Centralka] Oddzwonić:\r\n600 123 456",
        body="Treść",
        at=clock.stamp(),
    )

    notifier_for(db, settings, clock).run_once()

    assert [m["Subject"] for m in server.inbox.wait_for(1)] == ["[Centralka] Oddzwonić: 600 123 456"]


def test_a_team_without_addresses_gets_it_at_the_recipients_and_no_mail_server_queues_nothing(db, clock):
    settings = settings_for(2525)
    mail_id = queue_callback(db, settings, clock, team="laboratorium")
    assert mail_outbox.get(db, mail_id)["recipients"] == [ADMIN]

    off = settings_for(2525, host="")
    assert queue_callback(db, off, clock, key="callback:7:request:2") is None
    assert len(mail_outbox.listing(db)) == 1
