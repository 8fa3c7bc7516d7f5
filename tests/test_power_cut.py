"""Power cuts (issue 12 item 9, R22, R26): the box's own code for booking callbacks and keeping
voice messages, killed with SIGKILL at a random moment a hundred times over
(appliance/testing/powercut.py), then started once more to finish. What a person would notice
afterwards: the database is sound; every patient has exactly one callback request, with exactly
one confirming SMS and one e-mail to the team queued for it — none lost, none twice; every voice
message is a complete recording with its row and its e-mail, and nothing half-written is left.
(Kill -9 in the middle of sending an SMS through the modem: tests/test_gsm_line.py.)"""

import multiprocessing
import random
import shutil
import subprocess
import time

import pytest

from appliance.store.db import dicts, integrity_problems, open_db
from appliance.testing import powercut

ITEMS = 200  # more than a hundred short runs get through: every cut lands mid-work
CUTS = 100

pytestmark = pytest.mark.skipif(shutil.which("sox") is None, reason="sox is installed by make test")


def test_a_hundred_power_cuts_lose_and_double_nothing(tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["appliance.testing.powercut", "appliance.flow.voicemail", "appliance.flow.callbacks"])
    rng = random.Random(12)
    finished_early = 0
    for _ in range(CUTS):
        run = ctx.Process(target=powercut.run, args=(str(tmp_path), ITEMS))
        run.start()
        time.sleep(rng.uniform(0.0, 0.12))
        run.kill()  # SIGKILL: no cleanup, no flush, as when the power goes
        run.join()
        finished_early += run.exitcode == 0
    final = ctx.Process(target=powercut.run, args=(str(tmp_path), ITEMS))
    final.start()
    final.join(120)
    assert final.exitcode == 0
    assert finished_early == 0  # every cut landed in the middle of the work

    db = open_db(tmp_path / "centralka.db")
    assert integrity_problems(db) == []
    numbers = [powercut.number_of(i) for i in range(ITEMS)]

    requests = dicts(db, "SELECT id, number FROM callbacks ORDER BY id")
    assert sorted(r["number"] for r in requests) == sorted(numbers)  # each patient once
    sms = dicts(db, "SELECT dedupe_key, number FROM sms_outbox")
    assert sorted(s["dedupe_key"] for s in sms) == sorted(f"callback:{r['id']}:confirm" for r in requests)
    mails = dicts(db, "SELECT key FROM mail_outbox WHERE kind = 'callback'")
    assert sorted(m["key"] for m in mails) == sorted(f"callback:{r['id']}:request:1" for r in requests)

    messages = dicts(db, "SELECT id, number, path, call_id FROM voicemails ORDER BY id")
    assert sorted(m["number"] for m in messages) == sorted(numbers)  # one message each
    assert len({m["call_id"] for m in messages}) == len(messages)
    vm_mails = dicts(db, "SELECT key FROM mail_outbox WHERE kind = 'voicemail'")
    assert sorted(m["key"] for m in vm_mails) == sorted(f"voicemail:{m['id']}" for m in messages)
    folder = tmp_path / "voicemail"
    assert sorted(str(p) for p in folder.iterdir()) == sorted(m["path"] for m in messages)  # nothing else left
    for m in messages:  # each one whole: sox reads it to the end
        length = subprocess.run(["soxi", "-D", m["path"]], capture_output=True, text=True)
        assert length.returncode == 0 and float(length.stdout) > 0.4, (m, length.stderr)


@pytest.mark.long
def test_the_core_killed_during_calls_keeps_the_voice_message_and_the_cut_off_caller(make_box, staff, workdir):
    """The whole core, kill -9 while one patient leaves a voice message and another listens to
    the closed message: after the restart the message is stored whole (and e-mailed), and the
    other patient, cut off before reaching anyone, is on the missed-call list."""
    import signal

    from .sipkit import Phone, wait_for
    from .test_callbacks import HOURS_FLOW, hear_out, mail_settings
    from .test_notify_mail import MailServer

    mail = MailServer().start()
    easter_monday = "2027-03-29T10:00:00+02:00"  # closed: callers hear the hours, then voicemail
    box = make_box(
        HOURS_FLOW.replace("127.0.0.1:5070", f"127.0.0.1:{staff.port}"),
        settings=mail_settings(mail),
        clock_at=easter_monday,
    )
    talker = Phone(workdir, "talker", answer_after=-1, user="600123456")
    listener = Phone(workdir, "listener", answer_after=-1, user="600999111")
    try:
        talker.call(box.uri())
        talker.wait("confirmed")
        hear_out(box, "callback_offer", timeout=40)
        talker.press("2")  # no callback: a message
        box.wait_step("voicemail_recording", timeout=30, direction="in")
        talker.send(cmd="speak", text="Dzień dobry, proszę o receptę na leki na nadciśnienie. Dziękuję bardzo.")
        listener.call(box.uri())
        listener.wait("confirmed")
        folder = box.dir / "data" / "voicemail"
        # Kill once two seconds of the message are on disk (and the second call is in the flow).
        wait_for(lambda: any(p.stat().st_size > 44 + 32000 for p in folder.glob("*.wav")), 20, "the message growing")
        box.proc.send_signal(signal.SIGKILL)
        box.proc.wait()
        assert box.proc.returncode == -signal.SIGKILL
        box.restart()
        [vm] = wait_for(lambda: list(box.db()["voicemails"].rows), 20, "the voice message stored")
        assert (vm["number"], vm["ended_by"], vm["mime"]) == ("+48600123456", "restart", "audio/mpeg")
        assert vm["seconds"] >= 2.0
        assert sorted(p.name for p in folder.iterdir()) == [vm["path"].rsplit("/", 1)[1]]  # no half-written WAV
        received = wait_for(lambda: list(mail.received), 30, "the voice message e-mail")
        assert "600 123 456" in received[0].subject
        calls = {c["caller"]: c for c in box.calls()}
        assert calls["+48600123456"]["outcome"] == calls["+48600999111"]["outcome"] == "interrupted"
        missed = list(box.db()["missed_calls"].rows)
        assert [(m["number"], m["gave_up"]) for m in missed] == [("+48600999111", "restart")]
    finally:
        talker.stop()
        listener.stop()
        mail.stop()
