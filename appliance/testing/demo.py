"""``make demo``: the appliance on this machine, with simulated staff phones.

Contract (README): SIP on udp 127.0.0.1, port $CENTRALKA_SIP_PORT (default 5060); any dialled
number enters the demo flow; key 1 = registration, 2 = a second department, 0 = operator,
extension 555 directly, no input = operator. The box's files live in ``var/demo`` so the
command line, run from the repository root, acts on this box.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

from ..config import load_settings
from ..errors import CentralkaError
from ..proc import die_with_parent
from ..store.agents import clear_states as clear_agent_states
from ..store.db import open_db
from ..clock import stamp
from ..store.flows import save_flow
from ..store.hours import lift as lift_override
from ..store.hours import set_override
from ..store.phones import set_phone
from ..store.staff import save_text as save_staff_text

log = logging.getLogger("centralka.demo")

DEMO_DIR = Path("var/demo")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # appliance/data
# What each simulated phone says when it answers, so a caller can tell who picked up.
DEMO_PHONES = {
    "operator": "Tu operator przychodni. W czym mogę pomóc?",
    "rejestracja": "Tu rejestracja. Słucham?",
    "poradnia": "Tu poradnia specjalistyczna. Słucham?",
    "555": "Gabinet pięćset pięćdziesiąt pięć. Słucham?",
}


def free_udp_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def port_is_free(address: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


DEMO_MAILBOXES = {"admin": "admin@przychodnia.example", "rejestracja": "rejestracja@przychodnia.example"}


# A follow-up SMS (R19) to try: `centralka sms template badanie 600123456 --set 'dzien=we wtorek' --set godzina=8:00`.
DEMO_TEMPLATES = (
    "\n[callbacks]\ntemplates = { badanie = "
    '"{clinic}: badanie krwi {dzien} o {godzina}. Prosimy przyjść na czczo, z dowodem osobistym." }\n'
)


# The demo clinic's public numbers: the trunk's (a Warsaw landline) and the SIM's.
DEMO_TRUNK_NUMBER, DEMO_GSM_NUMBER = "+48221234567", "+48600100200"


def write_demo_config(
    directory: Path,
    sip_port: int,
    kamailio_port: int,
    modem: str = "",
    smtp: str = "",
    carrier: dict | None = None,
) -> Path:
    """The demo box's settings; ``smtp`` ("host:port", $CENTRALKA_SMTP) turns e-mail on: plain
    SMTP, no login, alarms to the admin and callback requests to the registration's mailbox.
    ``carrier`` (the simulated network's ports) gives the box a SIP trunk and public numbers."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory.resolve()
    path = directory / "centralka.toml"
    mail = ""
    if smtp:
        host, _, port = smtp.rpartition(":")
        if not host or not port.isdigit():
            raise CentralkaError(f"CENTRALKA_SMTP={smtp!r}: write it as host:port, e.g. 127.0.0.1:8025")
        mail = (
            f'\n[mail]\nhost = "{host}"\nport = {int(port)}\nsecurity = "none"\n'
            f'from_address = "centralka@przychodnia.example"\nrecipients = ["{DEMO_MAILBOXES["admin"]}"]\n'
            f'teams = {{ rejestracja = ["{DEMO_MAILBOXES["rejestracja"]}"] }}\nretry_min_s = 5\n'
        )
    path.write_text(
        "# Written by `make demo`; the command line uses it when run from the repository root.\n"
        f'[box]\ndata_dir = "{data}"\nclinic_name = "Przychodnia Centralka"\n\n'
        f'[sip]\naddress = "127.0.0.1"\nport = {sip_port}\n\n'
        f'[kamailio]\nenabled = true\naddress = "127.0.0.1"\nport = {kamailio_port}\n\n'
        f'[control]\nsocket = "{data / "core.sock"}"\n'
        + (f'\n[modem]\ndevice = "{modem}"\n' if modem else "")
        + (f'number = "{DEMO_GSM_NUMBER}"\n' if modem and carrier else "")
        + (
            f'\n[trunk]\nenabled = true\nregistrar = "sip:127.0.0.1:{carrier["registrar_port"]}"\n'
            f'domain = "127.0.0.1:{carrier["sip_port"]}"\nusername = "przychodnia"\n'
            f'password = "{secrets.token_urlsafe(15)}"\nnumber = "{DEMO_TRUNK_NUMBER}"\n'
            if carrier
            else ""
        )
        + mail
        + DEMO_TEMPLATES
        + "\n[gpio]\nmock = true\n",
        encoding="utf-8",
    )
    return path


def demo_closed() -> bool:
    """``CENTRALKA_DEMO_CLOSED=1``: the demo clinic is closed for the whole run."""
    return os.environ.get("CENTRALKA_DEMO_CLOSED", "").strip().lower() in ("1", "true", "yes", "tak")


def demo_flow_text(phones: str) -> str:
    template = (DATA_DIR / "demo_flow.toml").read_text(encoding="utf-8")
    return template.replace("{phones}", phones)


async def start_phones(port: int, record_dir: Path | None = None, answer_after: float = 1.0):
    cmd = [
        sys.executable,
        "-m",
        "appliance.testing.phone",
        "--port",
        str(port),
        "--user",
        "staff",
        "--answer-after",
        str(answer_after),
    ]
    for user, text in DEMO_PHONES.items():
        cmd += ["--say", f"{user}={text}"]
    if record_dir:
        cmd += ["--record-dir", str(record_dir)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent()
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line:
        raise CentralkaError("the simulated staff phones did not start")
    return proc


AGENT_PHONES = {"201": "Rejestracja, stanowisko pierwsze. Słucham?", "202": "Rejestracja, stanowisko drugie. Słucham?"}


def demo_staff_text() -> str:
    return (DATA_DIR / "demo_staff.toml").read_text(encoding="utf-8")


async def start_agent_phone(ext: str, password: str, registrar: str, answer_after: float):
    """A receptionist's desk phone: registers at the box's Kamailio like a real one."""
    cmd = [
        sys.executable,
        "-m",
        "appliance.testing.phone",
        "--port",
        str(free_udp_port()),
        "--user",
        ext,
        "--answer-after",
        str(answer_after),
        "--say",
        f"{ext}={AGENT_PHONES[ext]}",
        "--register",
        registrar,
        f"--password={password}",
        # The receptionist takes the callbacks the box offers: the key after the whisper's start.
        "--press-on-answer",
        "1@3",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent()
    )
    await asyncio.wait_for(proc.stdout.readline(), 30)
    return proc


def answer_delay() -> float:
    """$CENTRALKA_DEMO_ANSWER_DELAY seconds (default 20, so a caller experiences the queue);
    0 means the receptionists never answer."""
    raw = os.environ.get("CENTRALKA_DEMO_ANSWER_DELAY", "20")
    try:
        delay = float(raw)
    except ValueError:
        raise CentralkaError(f"CENTRALKA_DEMO_ANSWER_DELAY={raw!r}: a number of seconds") from None
    return -1.0 if delay == 0 else delay


async def start_carrier():
    """The simulated network (appliance/testing/carrier.py) as a process of its own (it has its
    own pjsua2 endpoint); returns the process and its ``ready`` event (ports, modem devices)."""
    cmd = [
        sys.executable,
        "-m",
        "appliance.testing.carrier",
        f"--sip-port={free_udp_port()}",
        f"--registrar-port={free_udp_port()}",
        f"--trunk-number={DEMO_TRUNK_NUMBER}",
        f"--gsm-number={DEMO_GSM_NUMBER}",
        f"--profile={os.environ.get('CENTRALKA_DEMO_MODEM', 'huawei')}",
        "--callee-answer-delay=4",
        "--callee-presses=1@4",  # the patient called back takes the call with 1
        f"--radio-socket={(DEMO_DIR / 'radio.sock').resolve()}",
    ]
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent()
    )
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise CentralkaError("the simulated telephone network did not start")
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "ready":
            asyncio.get_running_loop().create_task(_log_phone_events(proc))
            return proc, ev


async def _log_phone_events(proc):
    while True:
        line = await proc.stdout.readline()
        if not line:
            return
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "registration" and ev.get("state") in ("registered", "failed"):
            log.info("demo phone registration: %s (%s)", ev.get("state"), ev.get("code"))
        elif ev.get("event") == "incoming":
            log.info("demo phone %r rings", ev.get("user"))
        elif ev.get("event") == "confirmed":
            log.info("demo phone %r answered", ev.get("user"))


async def _demo():
    from ..core import Core

    sip_port = int(os.environ.get("CENTRALKA_SIP_PORT") or 5060)
    if not port_is_free("127.0.0.1", sip_port):
        raise CentralkaError(f"port {sip_port} on 127.0.0.1 is in use; set CENTRALKA_SIP_PORT to a free port")
    delay = answer_delay()
    kamailio_port = free_udp_port()
    carrier = network = None
    modem = os.environ.get("CENTRALKA_MODEM", "")
    if not modem:
        # No real modem named: the demo plugs in an emulated one (a Huawei E173 on ptys), and
        # the simulated telephone network (appliance/testing/carrier.py) plays the SIP provider
        # of the box's trunk and the mobile network behind the modem (`centralka demo-gsm`).
        carrier, network = await start_carrier()
        modem = f"{network['device']},{network['voice_device']}"
    cfg = write_demo_config(
        DEMO_DIR, sip_port, kamailio_port, modem, os.environ.get("CENTRALKA_SMTP", "").strip(), network
    )
    settings = load_settings(cfg, env={})
    phones_port = free_udp_port()
    phones = await start_phones(phones_port)
    procs = [phones]
    loop = asyncio.get_running_loop()
    watchers = [loop.create_task(_log_phone_events(phones))]
    try:
        db = open_db(settings.db_path)
        save_flow(db, "demo", demo_flow_text(f"127.0.0.1:{phones_port}"), activate=True)
        save_staff_text(db, demo_staff_text())
        passwords = {ext: set_phone(db, ext, f"Rejestracja {ext[-1]}") for ext in AGENT_PHONES}
        clear_agent_states(db)  # the demo starts with everyone at their desk
        if demo_closed():
            set_override(db, "demo", "closed", until=None, at=stamp(), by="CENTRALKA_DEMO_CLOSED")
        else:
            lift_override(db, "demo")  # a closed run before does not close this one
        db.close()
        core = Core(settings)

        def ready(c):
            for ext, password in passwords.items():
                task = loop.create_task(start_agent_phone(ext, password, f"127.0.0.1:{kamailio_port}", delay))
                task.add_done_callback(
                    lambda t: (
                        procs.append(t.result()),
                        watchers.append(loop.create_task(_log_phone_events(t.result()))),
                    )
                )
            wait = "never answer" if delay < 0 else f"answer after {delay:g} s"
            print(
                f"\nCentralka demo is running.\n"
                f"  Call any number at sip:<number>@127.0.0.1:{sip_port} (UDP), e.g.\n"
                f"    .venv/bin/centralka phone sip:48221234567@127.0.0.1:{sip_port}\n"
                f"  Menu: 1 rejestracja (queue), 2 poradnia, 0 operator, or dial extension 555; no key = operator.\n"
                f"  Two receptionists' desk phones (201, 202) register at 127.0.0.1:{kamailio_port} and {wait}\n"
                f"  (CENTRALKA_DEMO_ANSWER_DELAY). In the queue, * leaves for the operator and 1 asks for a\n"
                f"  callback (1, 1, 1: promise, SMS, e-mail); call with a mobile caller ID for the SMS:\n"
                f"    .venv/bin/centralka phone --user 600123456 sip:48221234567@127.0.0.1:{sip_port}\n"
                f"  Open requests, missed calls, voice messages: .venv/bin/centralka callbacks\n"
                + (
                    "  The clinic is CLOSED this run (CENTRALKA_DEMO_CLOSED): closed message, callback, voicemail.\n"
                    if demo_closed()
                    else "  Open around the clock (CENTRALKA_DEMO_CLOSED=1 closes it).\n"
                )
                + (
                    f"  E-mail to the SMTP server at {settings.mail.host}:{settings.mail.port} (CENTRALKA_SMTP).\n"
                    if settings.mail.get("host")
                    else "  E-mail is off (CENTRALKA_SMTP=host:port turns it on).\n"
                )
                + f"  Other simulated staff phones on udp 127.0.0.1:{phones_port} answer after 1 s.\n"
                + (
                    f"  GSM: an emulated modem is plugged in ({modem}). A mobile caller:\n"
                    f"    .venv/bin/centralka demo-gsm call 600123456 --press 1 --wav heard.wav\n"
                    f"  SMS: .venv/bin/centralka sms send 600123456 'Zażółć gęślą jaźń', then\n"
                    f"    .venv/bin/centralka demo-gsm sent   (the PDUs that left the modem)\n"
                    f"  SIP trunk: a simulated provider; the clinic's numbers are {DEMO_TRUNK_NUMBER} (trunk) and\n"
                    f"  {DEMO_GSM_NUMBER} (SIM). The box calls itself over the other line and listens:\n"
                    f"    .venv/bin/centralka selftest call   (then: selftest list, hw-test)\n"
                    if carrier
                    else f"  GSM: the modem at {modem} ($CENTRALKA_MODEM).\n"
                )
                + "  Calls so far: .venv/bin/centralka calls --steps   Live state: .venv/bin/centralka status\n"
                "  Stop with Ctrl-C.\n",
                flush=True,
            )

        await core.run_until_signal(ready)
    finally:
        for w in watchers:
            w.cancel()
        for proc in procs:
            await _stop_phone(proc)
        if carrier is not None:
            await _stop_phone(carrier)
    print("Centralka demo stopped.", flush=True)
    return 0


async def _stop_phone(proc):
    if proc.returncode is not None:
        return
    try:
        proc.stdin.write(b'{"cmd": "quit"}\n')
        await proc.stdin.drain()
        await asyncio.wait_for(proc.wait(), 5)
    except (asyncio.TimeoutError, ConnectionError):
        proc.kill()
        await proc.wait()


def run_demo(args) -> int:
    return asyncio.run(_demo())
