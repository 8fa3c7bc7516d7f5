"""Power cuts for tests (issue 12 item 9): the box's own code for booking callbacks (the
request, its SMS and its e-mail) and for keeping voice messages (a recording growing on disk as
pjmedia writes it, then compressed and stored with its e-mail) runs in a process that the test
kills with SIGKILL at random moments, again and again.

Each run first does what the core does at start (``flow.voicemail.recover``), then works
through ``items`` patients, skipping those already done: patient i asks for a callback, then
leaves a voice message in a call of their own. A run killed half-way is a power cut; the next
run is the box starting again. Started through multiprocessing's forkserver, so a kill-and-start
costs milliseconds, not an interpreter's start.
"""

from __future__ import annotations

import struct
from datetime import timedelta
from pathlib import Path

import numpy as np

HEADER = 44
RATE = 8000


def number_of(i: int) -> str:
    return f"+48600{i:06d}"


def settings_for(data_dir: Path):
    from ..config import load_settings

    return load_settings(
        None,
        env={},
        box={"data_dir": str(data_dir), "clinic_name": "Przychodnia Testowa"},
        mail={"host": "127.0.0.1", "port": 25, "security": "none", "recipients": ["rejestracja@example.test"]},
    )


def _speech(seconds: float, seed: int) -> np.ndarray:
    """Loud bursts and short pauses: what the silence detector takes for a person speaking."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = (np.sin(np.linspace(0, 9 * np.pi, n)) > -0.3).astype(float)
    return (rng.normal(0, 6000, n) * envelope).clip(-32000, 32000).astype("<i2")


def _record_like_pjmedia(path: Path, samples: np.ndarray, chunk: int = 1600) -> None:
    """A WAV as pjmedia's writer makes one: the header with zero sizes first, frames appended as
    they come, the sizes fixed up only when the file is closed."""
    header = b"RIFF" + struct.pack("<I", 0) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
    header += b"data" + struct.pack("<I", 0)
    with open(path, "wb") as f:
        f.write(header)
        for start in range(0, len(samples), chunk):
            f.write(samples[start : start + chunk].tobytes())
            f.flush()
        data = len(samples) * 2
        f.seek(4)
        f.write(struct.pack("<I", HEADER - 8 + data))
        f.seek(40)
        f.write(struct.pack("<I", data))


def run(data_dir: str, items: int) -> None:
    """One run of the box (until done or killed)."""
    from ..clock import SYSTEM_CLOCK
    from ..flow import voicemail
    from ..flow.callbacks import CallbackBook
    from ..services import Services
    from ..store import callbacks as store_callbacks
    from ..store import calls as store_calls
    from ..store import voicemails as store_voicemails
    from ..store.db import open_db

    settings = settings_for(Path(data_dir))
    db = open_db(settings.db_path)
    services = Services(settings=settings, db=db, clock=SYSTEM_CLOCK)
    book = CallbackBook(services)
    voicemail.recover(services)  # as the core does at start
    folder = settings.data_dir / "voicemail"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(items):
        number = number_of(i)
        if store_callbacks.open_for_number(db, number) is None:
            call_id = _call(store_calls, db, number, SYSTEM_CLOCK)
            now = SYSTEM_CLOCK.now()
            book.book(
                call_id=call_id,
                number=number,
                number_kind="mobile",
                typed=False,
                topic="rejestracja",
                topic_label="Rejestracja",
                team="rejestracja",
                queue=None,
                mode="list",
                place_at=None,
                position=None,
                promise_text="dzisiaj do 18:00",
                window=(now, now + timedelta(hours=4)),
                lang="pl",
            )
        if not store_voicemails.for_number(db, number):
            call_id = _call(store_calls, db, number, SYSTEM_CLOCK)
            stamp = SYSTEM_CLOCK.stamp()
            raw = folder / f"{call_id}-{stamp[:19].replace(':', '')}.wav"
            _record_like_pjmedia(raw, _speech(0.8, i))
            path, mime, seconds = voicemail.compress_message(raw, 0.0)
            voicemail.store_message(services, call_id, number, "rejestracja", path, mime, seconds, "silence", stamp)


def _call(store_calls, db, number: str, clock) -> int:
    return store_calls.start_call(
        db,
        direction="in",
        line="gsm",
        caller_raw=number,
        caller=number,
        caller_kind="e164",
        dialled="+48221234567",
        at=clock.stamp(),
    )
