"""A voice message after hours (R15): beep, record up to ``max_length``, end on silence or ``#``.

The message is stored compressed (media/voicemail.py), listed (``centralka callbacks``: ``v12``)
and e-mailed to the team with the recording attached, through the durable mail outbox. A
caller who hangs up while speaking still leaves the message. A recording with no speech in it
is not a message: the call stays a missed call.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..media.voicemail import GrowingWav, compress, make_beep, repair_wav, wait_closed
from ..messages import msg
from ..numbers import for_people
from ..store import voicemails as store_voicemails
from ..store.db import transaction

log = logging.getLogger("centralka.voicemail")

POLL_S = 0.25


async def take_message(session, node) -> int | None:
    """Record one message; returns its id (None when nothing was said)."""
    p = node.params
    services = session.services
    lang = session.flow.language
    rate = services.settings.sip.clock_rate
    folder = services.settings.data_dir / "voicemail"
    folder.mkdir(parents=True, exist_ok=True)
    if p.get("prompt"):
        await session.play(p["prompt"], interruptible=False, node=node.id)
    else:
        await session.say(msg("voicemail.start").text(lang), "voicemail_start", node=node.id, interruptible=False)
    beep = make_beep(services.settings.prompt_dir / "beep.wav", rate)
    await session.play_path(beep, "beep", interruptible=False, node=node.id)
    stamp = services.clock.stamp()
    raw = folder / f"{session.call_id}-{stamp[:19].replace(':', '')}.wav"
    session.leg.digits.clear()
    recorder = session.leg.record(raw)
    session.step("voicemail_recording", node.id, {"max_s": p["max_length"]})
    audio = GrowingWav(raw, rate)
    started = session.clock.monotonic()
    ended = "max_length"
    try:
        while session.clock.monotonic() - started < p["max_length"]:
            if not session.leg.alive:
                ended = "hangup"
                break
            if "#" in session.leg.digits:
                ended = "key"
                break
            audio.poll()
            if audio.spoke() and audio.silent_for() >= p["silence"]:
                ended = "silence"
                break
            await asyncio.wait([asyncio.ensure_future(asyncio.shield(session.leg.disconnected))], timeout=POLL_S)
    finally:
        session.leg.stop(recorder)
        recorder = None
    audio.poll()
    if not audio.spoke():
        session.step("voicemail_empty", node.id, {"ended": ended})
        return None
    loop = asyncio.get_running_loop()
    cut = audio.silent_for() if ended == "silence" else 0.0
    # Compressing takes a second or two: off the loop. The database stays on the loop's thread.
    path, mime, seconds = await loop.run_in_executor(None, compress_message, raw, cut)
    vm_id = _store(session, path, mime, seconds, ended, stamp)
    session.outcome = "voicemail"
    session.step("voicemail_saved", node.id, {"voicemail": vm_id, "ended": ended})
    if session.leg.alive:
        await session.say(msg("voicemail.saved").text(lang), "voicemail_saved", node=node.id, interruptible=False)
    return vm_id


def compress_message(raw, cut):
    """(Off the loop.) Wait for the recorder to close the file and compress it; the WAV is kept
    when that fails, rather than losing the message. ``(path, mime, seconds)``."""
    if not wait_closed(raw):
        log.warning("voicemail %s: the recorder did not close the file in time; keeping it as it is", raw)
    mp3 = raw.with_suffix(".mp3")
    try:
        seconds = compress(raw, mp3, cut_end_s=cut)
    except Exception as exc:  # noqa: BLE001 — keep the WAV rather than lose the message
        log.error("voicemail %s: cannot compress (%s); the WAV is kept", raw, exc)
        return raw, "audio/wav", None
    raw.unlink(missing_ok=True)
    return mp3, "audio/mpeg", seconds


def _store(session, path, mime, seconds, ended, stamp) -> int | None:
    """Store the message and queue its e-mail (on the loop: the core's database connection)."""
    return store_message(
        session.services, session.call_id, session.caller_number, session.topic, path, mime, seconds, ended, stamp
    )


def store_message(services, call_id, number, topic, path, mime, seconds, ended, stamp) -> int:
    # The message and its e-mail commit together: a power cut between them loses neither.
    with transaction(services.db):
        vm_id = store_voicemails.add(
            services.db,
            call_id=call_id,
            at=stamp,
            number=number,
            seconds=round(seconds, 1) if seconds else None,
            path=str(path),
            mime=mime,
            ended_by=ended,
        )
        _email(services, vm_id, number, seconds, path, mime, stamp, topic)
    return vm_id


def recover(services) -> dict:
    """At the core's start, before any call: what a power cut (or kill -9) left in the voice
    message folder is made whole or removed — a recording is complete or gone:

    - a recording cut short (its WAV header never fixed up) with speech in it is repaired,
      compressed and stored as the caller's message (``ended_by = 'restart'``) and e-mailed;
      one without speech is removed;
    - a compressed message whose row was never written is stored and e-mailed now; the WAV it
      was made from, and half-written temporary files, are removed."""
    folder = services.settings.data_dir / "voicemail"
    done = {"stored": 0, "removed": 0}
    if not folder.is_dir():
        return done
    known = store_voicemails.paths(services.db)
    rate = services.settings.sip.clock_rate
    for path in sorted(folder.iterdir()):  # (X.mp3 before X.wav)
        if str(path) in known or not path.is_file():
            continue
        if path.suffix == ".wav" and (path.with_suffix(".mp3").exists() or str(path.with_suffix(".mp3")) in known):
            path.unlink()  # compressed before the cut: the MP3 is the message
            done["removed"] += 1
            continue
        call_id = _call_of(path)
        if path.suffix == ".mp3" and call_id is not None:
            _store_recovered(services, call_id, path, "audio/mpeg", None)
            done["stored"] += 1
            continue
        if path.suffix == ".wav" and call_id is not None and repair_wav(path):
            audio = GrowingWav(path, rate)
            audio.poll()
            if audio.spoke():
                kept, mime, seconds = compress_message(path, 0.0)  # (the WAV is kept if that fails)
                _store_recovered(services, call_id, kept, mime, seconds)
                done["stored"] += 1
                continue
        log.info("voicemail folder: removing %s (no message in it)", path.name)
        path.unlink()
        done["removed"] += 1
    if done["stored"] or done["removed"]:
        log.warning(
            "voice messages after an unclean stop: %d recovered, %d unusable file(s) removed",
            done["stored"],
            done["removed"],
        )
    return done


def _call_of(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _store_recovered(services, call_id: int, path: Path, mime: str, seconds: float | None) -> None:
    from ..flow.callbacks import e164_of
    from ..store import calls as store_calls

    call = store_calls.find_call(services.db, call_id)
    store_message(
        services, call_id if call else None, e164_of(call), None, path, mime, seconds, "restart", services.clock.stamp()
    )


def _email(services, vm_id, number, seconds, path, mime, stamp, topic) -> None:
    from ..errors import CentralkaError
    from ..notify.mail import enqueue_mail, voicemail_message

    settings = services.settings
    prefix = settings.mail.subject_prefix.strip()
    vm = {"id": vm_id, "number": number, "at": stamp, "seconds": seconds or 0.0, "topic_label": topic}
    try:
        subject, body = voicemail_message(
            vm,
            settings.box.language,
            prefix=f"{prefix} " if prefix else "",
            tz=settings.tz,
            country=settings.box.country,
        )
        name = f"wiadomosc-{vm_id}-{for_people(number, settings.box.country).replace(' ', '') or 'anonim'}"
        enqueue_mail(
            services.db,
            settings,
            key=f"voicemail:{vm_id}",
            kind="voicemail",
            team=topic or "",
            subject=subject,
            body=body,
            attachments=[{"name": name + path.suffix, "mime": mime, "path": str(path)}],
            at=services.clock.stamp(),
        )
    except CentralkaError as exc:
        log.warning("voicemail #%d: e-mail not queued: %s", vm_id, exc)
