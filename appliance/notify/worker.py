"""The notifier thread: e-mail for alarms and incoming SMS ([mail], :class:`Notifier`), alarm
SMS to the admin's mobiles ([alarms] ``sms_to``), and the watch over callback promises: a
request not done by the end of its promised window raises the ``callback_overdue`` alarm
(:meth:`CallbackBook.escalate_overdue`), which the same rounds then e-mail and text (R12).

Its own thread and its own database connection, because an SMTP server can take seconds to
answer and the event loop must not wait for it. Every ``NOTIFY_EVERY_S`` it looks at what is
pending; a failure in one round is logged and the next round tries again (the mailer keeps its
own backoff). Alarm SMS are queued in the GSM outbox with a dedupe key per alarm and number,
so a restart never texts the same alarm twice.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ..clock import stamp
from ..errors import CentralkaError
from ..store import alarms as store_alarms
from ..store.db import open_db

log = logging.getLogger("centralka.notify")

NOTIFY_EVERY_S = 5.0  # how often pending alarms / incoming SMS are looked at
ALARM_SMS_LOOKBACK_S = 3600  # after a restart, alarms this recent are (re)considered for SMS


class AlarmTexter:
    """Alarms of the configured severities, as SMS to ``[alarms] sms_to``."""

    def __init__(self, settings, clock, *, wake: Callable[[], None] | None = None):
        self.settings = settings
        self.clock = clock
        self.wake = wake
        self.since_id = 0

    def start_from(self, db) -> None:
        """Recent alarms are looked at again after a restart (a crash may have come before they
        were texted); the dedupe key of each alarm SMS makes that safe."""
        self.since_id = store_alarms.last_id_before(db, stamp(self.clock.time() - ALARM_SMS_LOOKBACK_S))

    def run_once(self, db) -> int:
        from ..gsm.outbox import SmsRefused, queue_sms

        cfg = self.settings.sections.get("alarms") or {}
        numbers = cfg.get("sms_to") or []
        if not numbers:
            return 0
        rows = store_alarms.after(db, self.since_id, cfg.get("sms_severities") or ["critical"])
        for row in rows:
            text = f"Centralka: {row['text']}"
            for number in numbers:
                try:
                    queue_sms(
                        db,
                        number,
                        text[:300],
                        kind="alarm",
                        settings=self.settings,
                        dedupe_key=f"alarm:{row['id']}:{number}",
                        now=self.clock.time(),
                    )
                except SmsRefused as exc:
                    log.warning("alarm #%s not sent by SMS to %s: %s", row["id"], number, exc)
            self.since_id = row["id"]
        if rows and self.wake is not None:
            self.wake()
        return len(rows)


class NotifyWorker:
    def __init__(self, settings, clock, *, wake_sms: Callable[[], None] | None = None):
        self.settings = settings
        self.clock = clock
        self.texter = AlarmTexter(settings, clock, wake=wake_sms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, db) -> None:
        self.texter.start_from(db)
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        from .mail import Notifier

        db = open_db(self.settings.db_path)
        try:
            notifier = Notifier(db, self.settings, clock=self.clock.time)
        except CentralkaError as exc:
            # Mail is broken, but alarm SMS must still go out.
            log.error("e-mail notifications unavailable: %s", exc)
            notifier = None
        book = _callback_book(self.settings, db, self.clock)
        while not self._stop.wait(NOTIFY_EVERY_S):
            # Overdue promises first: their alarms go out in the same round.
            jobs = [book.escalate_overdue, lambda: self.texter.run_once(db)]
            if notifier is not None:
                jobs.insert(1, notifier.run_once)
            for job in jobs:
                try:
                    job()
                except Exception:  # noqa: BLE001 — the notifier must outlive any one failure
                    log.exception("notifier round failed")


def _callback_book(settings, db, clock):
    """The callback book on this thread's own connection (it only reads requests and raises alarms)."""
    from ..flow.callbacks import CallbackBook
    from ..services import Services

    return CallbackBook(Services(settings=settings, db=db, clock=clock))
