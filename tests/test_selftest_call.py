"""The self-test call end to end (R21): the box calls its own public number over its other line.

The network between the lines is appliance/testing/carrier.py in its own process: the SIP
provider the box's trunk registers at, and the mobile network behind the emulated modem the
box's (unmodified) python-gsmmodem-new talks to. A call from the trunk to the SIM's number
rings the modem; a call from the modem to the trunk's number arrives at the box as an INVITE
from the provider. What a person would notice: the verdict and its checks, the recording of
what the calling side heard, that no staff phone rang and no missed call was listed, and the
alarm (e-mail and SMS) after two failures in a row, cleared by the next pass.
"""

import json
import shutil
import sys

import pytest

from appliance.cli import main as cli_main

from .sipkit import Proc, free_port, wait_for
from .test_gsm_line import FAST_MODEM
from .test_notify_mail import MailServer

TRUNK_NUMBER, GSM_NUMBER, ADMIN_MOBILE = "+48221234567", "+48600100200", "+48600999888"

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is installed by make test")


class Carrier(Proc):
    def __init__(self, workdir):
        self.sip_port, self.registrar_port = free_port(), free_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "appliance.testing.carrier",
                f"--sip-port={self.sip_port}",
                f"--registrar-port={self.registrar_port}",
                f"--trunk-number={TRUNK_NUMBER}",
                f"--gsm-number={GSM_NUMBER}",
                f"--cache-dir={workdir / 'phone-cache'}",
            ],
            log_path=workdir / "carrier.stderr",
        )
        ready = self.wait("ready", timeout=30)
        self.device, self.voice_device = ready["device"], ready["voice_device"]

    def settings(self, mail_port: int) -> str:
        return (
            f'\n[trunk]\nenabled = true\nregistrar = "sip:127.0.0.1:{self.registrar_port}"\n'
            f'domain = "127.0.0.1:{self.sip_port}"\nusername = "clinic"\npassword = "Trunk-s3cret-2026"\n'
            f'number = "{TRUNK_NUMBER}"\n'
            f'\n[modem]\ndevice = "{self.device},{self.voice_device}"\nnumber = "{GSM_NUMBER}"\n{FAST_MODEM}'
            "\n[sms]\nretry_min_s = 1\nretry_max_s = 2\n"
            f'\n[alarms]\nsms_to = ["{ADMIN_MOBILE}"]\n'
            f'\n[mail]\nhost = "127.0.0.1"\nport = {mail_port}\nsecurity = "none"\n'
            'from_address = "centralka@przychodnia.test"\nrecipients = ["admin@przychodnia.test"]\n'
            "\n[selftest]\ntimes = []\n"
        )

    def sent_sms(self) -> list[dict]:
        self.forget_past()
        self.send(cmd="sent")
        return self.wait("sent")["sms"]


@pytest.fixture
def clinic(make_box, staff, workdir):
    mail = MailServer().start()
    carrier = Carrier(workdir)
    try:
        box = make_box(staff=staff, settings=carrier.settings(mail.port))
        wait_for(lambda: (box.status().get("gsm") or {}).get("state") == "up", 30, "GSM line up")
        wait_for(lambda: box.status()["lines"]["trunk"]["state"] == "up", 30, "trunk registered")
        yield box, carrier, mail
    finally:
        carrier.stop()
        mail.stop()


def selftest(box, target, capsys):
    capsys.readouterr()
    rc = cli_main(["--config", str(box.config), "selftest", "call", "--target", target])
    out = capsys.readouterr().out
    row = box.db().execute("SELECT * FROM selftest_calls ORDER BY id DESC LIMIT 1").fetchone()
    cols = [c[0] for c in box.db().execute("SELECT * FROM selftest_calls LIMIT 0").description]
    return rc, out, dict(zip(cols, row))


def checks_of(row) -> dict:
    return {c["name"]: c for c in json.loads(row["checks"])}


def test_the_box_calls_itself_both_ways_hears_its_greeting_and_rings_nobody(clinic, staff, capsys):
    box, carrier, mail = clinic
    for target, out_line, in_line in (("gsm", "trunk", "gsm"), ("trunk", "gsm", "trunk")):
        rc, out, row = selftest(box, target, capsys)
        checks = checks_of(row)
        assert rc == 0, out + box.log()
        assert row["result"] == "PASS", (row, out)
        assert row["line"] == out_line
        assert [checks[n]["result"] for n in ("answered", "reached_box", "greeting", "key")] == ["PASS"] * 4, checks
        assert checks["greeting"]["detail"]["score"] >= 0.75
        assert "klawisz 1 działa" in row["reason"]
        # The answering side walked the flow like a patient's call, to the queue, and stopped.
        answering = box.db()["calls"].get(row["in_call_id"])
        assert (answering["line"], answering["caller"], answering["purpose"]) == (
            in_line,
            row_caller(out_line),
            "selftest",
        )
        steps = [s["step"] for s in box.journey(answering["id"])]
        assert "choice" in steps and steps.count("selftest_reached") == 1
        assert any(
            s["step"] == "play" and json.loads(s["detail"])["prompt"] == "greeting"
            for s in box.journey(answering["id"])
        )
        assert "PASS" in out and "heard:" in out
    # The technician's hw-test checks the voice path with the same call.
    assert cli_main(["--config", str(box.config), "hw-test", "--json"]) == 0
    voice = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}["voice_path"]
    assert voice["result"] == "PASS" and voice["why"].startswith("self-test call: ")
    assert box.db().execute("SELECT trigger, result FROM selftest_calls ORDER BY id DESC").fetchone() == (
        "hw-test",
        "PASS",
    )
    assert not staff.has("incoming")  # nobody's phone rang
    assert list(box.db()["missed_calls"].rows) == []  # and no missed call for the staff
    assert list(box.db()["alarms"].rows_where("source = 'selftest'")) == []


def row_caller(line):
    return TRUNK_NUMBER if line == "trunk" else GSM_NUMBER


def test_a_diverted_number_fails_twice_raises_the_alarm_and_a_pass_clears_it(clinic, capsys):
    box, carrier, mail = clinic
    carrier.send(cmd="divert", on=True)  # the network answers the SIM's number with its own message
    carrier.wait("divert")
    rc, out, row = selftest(box, "gsm", capsys)
    assert rc == 1 and row["result"] == "FAIL", out
    checks = checks_of(row)
    assert checks["answered"]["result"] == "PASS"
    assert checks["reached_box"]["result"] == "FAIL"
    assert checks["greeting"]["result"] == "FAIL" and checks["greeting"]["detail"]["score"] < 0.6
    assert "nie dotarło do centralki" in row["reason"]
    assert list(box.db()["alarms"].rows_where("source = 'selftest'")) == []  # one failure: no alarm yet
    rc, out, row = selftest(box, "gsm", capsys)
    assert rc == 1
    alarms = list(box.db()["alarms"].rows_where("source = 'selftest'"))
    assert [(a["kind"], a["severity"]) for a in alarms] == [("selftest_failed", "critical")]
    assert alarms[0]["text"].startswith("Test połączenia z numerem 600 100 200 nie przechodzi (2 razy z rzędu)")
    # The admin hears of it by e-mail and by SMS.
    mails = wait_for(lambda: [m for m in mail.received if "600 100 200" in m.body], 30, "the alarm e-mail")
    assert mails[0].rcpt_tos == ["admin@przychodnia.test"]
    texts = wait_for(lambda: [s for s in carrier.sent_sms() if s["number"] == ADMIN_MOBILE], 30, "the alarm SMS")
    assert "Test połączenia" in "".join(s["text"] for s in texts)
    rc, out, row = selftest(box, "gsm", capsys)  # a third failure: still one alarm
    assert len(list(box.db()["alarms"].rows_where("source = 'selftest'"))) == 1
    carrier.send(cmd="divert", on=False)
    carrier.wait("divert")
    rc, out, row = selftest(box, "gsm", capsys)
    assert rc == 0 and row["result"] == "PASS", out + box.log()
    alarms = list(box.db()["alarms"].rows_where("source = 'selftest'", order_by="id"))
    assert [a["kind"] for a in alarms] == ["selftest_failed", "selftest_ok"]
    assert alarms[0]["acked_by"] == "selftest"
    assert "znowu przechodzi" in alarms[1]["text"]
    assert cli_main(["--config", str(box.config), "selftest", "list"]) == 0
    listing = capsys.readouterr().out
    assert listing.count(" FAIL ") == 3 and listing.count(" PASS ") == 1
