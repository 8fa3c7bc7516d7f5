"""SMS throughput of the outbox through the modem supervisor, against the pty modem emulator.

    .venv/bin/python bench/sms.py [--messages 60] [--profile huawei] [--send-delay 0.02]

For each kind of message (one-part Polish, three-part Polish) the bench queues ``--messages``
SMS in a fresh SQLite outbox, wakes the supervisor, and times until the last one is recorded
as sent. Every message goes the whole real way: committed as ``sending`` (fsynced) before the
modem sees it, one AT+CMGS per part through python-gsmmodem-new over a pty, committed as
``sent`` with its parts. ``--send-delay`` is the emulator's per-part radio time (a real modem
needs about 2–5 s per part on a live network, so real figures are bounded by the network, not
by the box; this bench measures the box's own overhead). Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.config import load_settings  # noqa: E402
from appliance.testing.modem import ModemEmulator  # noqa: E402
from appliance.gsm.outbox import queue_sms  # noqa: E402
from appliance.gsm.supervisor import ModemSupervisor  # noqa: E402
from appliance.store.db import open_db  # noqa: E402

ONE_PART = "Przypominamy o wizycie jutro o 10:30. Gabinet nr 3, ul. Źródlana 5."  # 67 characters: one UCS-2 part
THREE_PART = (
    "Zażółć gęślą jaźń — przypomnienie o wizycie. Prosimy zabrać skierowanie i dowód. "
    "W razie zmiany terminu prosimy o kontakt z rejestracją pod numerem 600 123 456. "
)[:160]


def run(kind: str, text: str, args, workdir: Path) -> dict:
    box = workdir / kind
    box.mkdir()
    settings = load_settings(
        env={},
        modem={"poll_s": 30.0, "ping_timeout_s": 3.0},
        sms={"per_number_per_day": 100000, "per_day": 100000, "max_parts": 6},
    )
    emulator = ModemEmulator(args.profile, send_delay=args.send_delay)
    db = open_db(box / "centralka.db")
    supervisor = ModemSupervisor(
        device=emulator.device, voice_device=emulator.voice_device, db_path=box / "centralka.db", settings=settings
    )
    try:
        supervisor.start()
        deadline = time.monotonic() + 20
        while supervisor.health()["state"] != "up":
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: the supervisor did not come up: {supervisor.health()}")
            time.sleep(0.02)
        ids = [queue_sms(db, f"+48600{i:06d}", text, settings=settings) for i in range(args.messages)]
        started = time.monotonic()
        supervisor.wake()
        placeholders = ",".join("?" * len(ids))
        while True:
            done = db.execute(
                f"SELECT count(*) FROM sms_outbox WHERE state = 'sent' AND id IN ({placeholders})", ids
            ).fetchone()[0]
            if done == len(ids):
                break
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"bench: only {done} of {len(ids)} sent after {args.timeout} s")
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        parts = len(emulator.sent_sms)
        assert all(s["encoding"] == "ucs2" for s in emulator.sent_sms)
        assert "".join(s["text"] for s in emulator.sent_sms[: parts // len(ids)]) == text
    finally:
        supervisor.stop()
        emulator.close()
        db.conn.close()
    return {
        "kind": kind,
        "messages": len(ids),
        "parts": parts,
        "seconds": round(elapsed, 3),
        "messages_per_minute": round(len(ids) / elapsed * 60, 1),
        "parts_per_minute": round(parts / elapsed * 60, 1),
        "ms_per_part": round(elapsed / parts * 1000, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=60, help="messages per kind (default 60)")
    parser.add_argument("--profile", default="huawei", choices=("huawei", "simcom", "quectel"))
    parser.add_argument(
        "--send-delay", type=float, default=0.02, help="the emulator's radio time per part, seconds (default 0.02)"
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="centralka-bench-sms-") as tmp:
        results = [run("1-part", ONE_PART, args, Path(tmp)), run("3-part", THREE_PART, args, Path(tmp))]
    print(f"SMS outbox throughput ({args.profile} emulator, {args.send_delay * 1000:g} ms radio time per part)")
    for r in results:
        print(
            f"  {r['kind']:>6}: {r['messages']} messages, {r['parts']} parts in {r['seconds']:.2f} s — "
            f"{r['messages_per_minute']:.0f} messages/min, {r['parts_per_minute']:.0f} parts/min, "
            f"{r['ms_per_part']:.1f} ms per part"
        )
    print(
        json.dumps({"bench": "sms", "profile": args.profile, "send_delay_s": args.send_delay, "results": results}),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
