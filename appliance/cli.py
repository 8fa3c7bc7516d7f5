"""``centralka`` — the command line. ``main(argv)`` returns an exit code; errors are one line.

Which box a command acts on: ``--config FILE``, else ``$CENTRALKA_CONFIG``, else the demo's
box when run from the repository root while ``make demo`` runs (``var/demo/centralka.toml``),
else the installed box (``/etc/centralka/centralka.toml``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import jsonline
from .config import load_settings
from .errors import CentralkaError, CoreNotRunning, FlowRejected, FlowSyntaxError

DEMO_CONFIG = Path("var/demo/centralka.toml")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _settings(args):
    path = args.config or os.environ.get("CENTRALKA_CONFIG")
    if path is None and DEMO_CONFIG.exists():
        path = DEMO_CONFIG
    return load_settings(path)


def _box(args):
    """The settings of the box this command acts on, and its database (created if new)."""
    from .store.db import open_db

    settings = _settings(args)
    return settings, open_db(settings.db_path)


def _prompts(settings, *, scratch_ok: bool = False):
    """The box's prompt library; ``scratch_ok`` lets a check run where no box is installed
    (speech is then rendered into the user's cache, and there are no uploaded recordings)."""
    from .media.prompts import PromptLibrary

    directory = settings.prompt_dir
    if scratch_ok and not settings.data_dir.exists():
        directory = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "centralka" / "prompts"
    return PromptLibrary(
        directory,
        rate=settings.sip.clock_rate,
        voice=settings.prompts.voice,
        speed=settings.prompts.speed,
        language=settings.box.language,
    )


def ask_core(settings, cmd: str, *, timeout: float = 10, **fields) -> dict:
    path = settings.control.socket
    try:
        return jsonline.request(path, cmd, timeout=timeout, **fields)
    except OSError as exc:
        raise CoreNotRunning(f"the core is not running (no answer on {path}: {exc.strerror or exc})") from exc


def _tell_core(settings, cmd: str, done: str) -> None:
    """Ask a running core to pick up a change; say so only when there is one to ask."""
    try:
        reply = ask_core(settings, cmd)
    except CoreNotRunning:
        return
    print(done if reply.get("ok") else f"note: the running core did not take it: {reply.get('error')}")


def _write_out(text: str, file: str | None) -> None:
    if file in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(file).write_text(text, encoding="utf-8")


# --- commands -------------------------------------------------------------------------------------
def _tracebacks_on_crash() -> None:
    """A crash inside pjsip or another C library (SIGSEGV, SIGABRT, SIGBUS, SIGFPE) writes every
    thread's Python traceback to stderr (the journal) before the process dies: the one clue a
    technician can send us from a box in the field."""
    import faulthandler

    faulthandler.enable(all_threads=True)


def cmd_run(args, *, faults=None, clock=None) -> int:
    """``centralka run``; ``faults`` and ``clock`` only from appliance.testing.faults (tests)."""
    from . import systemd
    from .clock import SYSTEM_CLOCK
    from .core import Core

    settings = _settings(args)
    _tracebacks_on_crash()
    core = Core(settings, faults=faults, clock=clock or SYSTEM_CLOCK)

    def ready(c):
        st = c.status()
        logging.getLogger("centralka").info(
            "ready: SIP %s:%d, call limit %d", st["sip"]["address"], st["sip"]["port"], st["call_limit"]
        )
        systemd.ready()

    asyncio.run(core.run_until_signal(ready))
    return EXIT_OK


def _print_findings(findings, path):
    for f in findings:
        where = f"node {f.node}" if f.node else "flow"
        print(
            f"{path}: {f.level}: {where}: [{f.code}] {f.message}", file=sys.stderr if f.level == "error" else sys.stdout
        )


def cmd_flow_check(args) -> int:
    from .flow.checked import examine_file

    settings = _settings(args)
    lang = args.lang or settings.box.language
    _flow, findings = examine_file(args.file, _prompts(settings, scratch_ok=True), lang=lang)
    _print_findings(findings, args.file)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        print(f"{args.file}: {len(errors)} error(s): flow refused", file=sys.stderr)
        return EXIT_ERROR
    print(f"{args.file}: OK ({len(findings)} warning(s))")
    return EXIT_OK


def cmd_flow_import(args) -> int:
    from .flow.checked import load_checked
    from .store.db import open_db
    from .store.flows import save_flow

    settings = _settings(args)
    text = Path(args.file).read_text(encoding="utf-8")
    flow, warnings = load_checked(text, _prompts(settings), source=args.file, lang=settings.box.language)
    _print_findings(warnings, args.file)
    db = open_db(settings.db_path)
    name = args.name or flow.name or Path(args.file).stem
    save_flow(db, name, text, activate=True)
    print(f"flow {name!r} imported and active")
    _tell_core(settings, "reload", "running core reloaded")
    return EXIT_OK


def cmd_flow_export(args) -> int:
    from .store.flows import active_flow, get_flow

    settings, db = _box(args)
    row = get_flow(db, args.name) if args.name else active_flow(db)
    if row is None:
        print("no such flow", file=sys.stderr)
        return EXIT_ERROR
    _write_out(row["text"], args.file)
    return EXIT_OK


def cmd_prompt_upload(args) -> int:
    settings = _settings(args)
    seconds = _prompts(settings).upload(args.name, args.file)
    print(f"prompt {args.name!r}: {seconds:.1f} s recorded, converted to {settings.sip.clock_rate} Hz mono")
    return EXIT_OK


def cmd_phones(args) -> int:
    from .store.phones import list_phones, remove_phone, set_phone

    settings, db = _box(args)
    if args.phones_cmd == "list":
        for p in list_phones(db):
            print(f"{p['extension']:>6}  {p['name'] or '-'}  (since {p['created_at'][:10]})")
        return EXIT_OK
    if args.phones_cmd == "remove":
        if not remove_phone(db, args.extension):
            print(f"centralka: no phone {args.extension}", file=sys.stderr)
            return EXIT_ERROR
        print(f"phone {args.extension} removed")
    else:
        password = set_phone(db, args.extension, getattr(args, "name", "") or "")
        host = f"{settings.kamailio.address}:{settings.kamailio.port}"
        print(f"phone {args.extension}: user {args.extension}, password {password}, registrar {host}")
        print("The password is shown only now; `centralka phones add` again gives a new one.")
    _tell_core(settings, "reload-phones", "the registrar has the change")
    return EXIT_OK


def cmd_staff(args) -> int:
    from .flow.staff import load_staff_text, stored_staff_text
    from .store.staff import save_text

    settings, db = _box(args)
    if args.staff_cmd == "import":
        text = Path(args.file).read_text(encoding="utf-8")
        staff = load_staff_text(text, source=args.file)
        save_text(db, text)
        print(f"{len(staff.agents)} agents, {len(staff.queues)} queues imported")
        _tell_core(settings, "reload", "running core reloaded")
        return EXIT_OK
    text = stored_staff_text(db)
    if text is None:
        print("centralka: no agents and queues yet: centralka staff import FILE", file=sys.stderr)
        return EXIT_ERROR
    _write_out(text, args.file)
    return EXIT_OK


def cmd_agent(args) -> int:
    from .store.agents import set_paused
    from .store.db import open_db

    settings = _settings(args)
    paused = args.agent_cmd == "pause"
    try:
        reply = ask_core(settings, args.agent_cmd, agent=args.agent)
    except CoreNotRunning:
        # The core reads the pause state at start: record it for then.
        set_paused(open_db(settings.db_path), args.agent, paused)
        reply = {"ok": True}
    if not reply.get("ok"):
        print(f"centralka: {reply.get('error')}", file=sys.stderr)
        return EXIT_ERROR
    print(f"agent {args.agent} {'paused' if paused else 'back'}")
    return EXIT_OK


def cmd_status(args) -> int:
    settings = _settings(args)
    reply = ask_core(settings, "status")
    print(json.dumps(reply.get("status", reply), ensure_ascii=False, indent=2))
    return EXIT_OK


def cmd_calls(args) -> int:
    from .store.calls import journey, recent_calls

    settings, db = _box(args)
    for call in reversed(recent_calls(db, args.limit)):
        print(
            f"#{call['id']} {call['started_at']} {call['caller']} -> {call['dialled']} "
            f"{call['outcome'] or 'in progress'} (ended by {call['ended_by'] or '-'}, transfers {call['transfers']})"
        )
        if args.steps:
            for st in journey(db, call["id"]):
                print(f"    {st['at']} {st['step']:<16} {st['node'] or '':<14} {st['detail'] or ''}")
    return EXIT_OK


def cmd_sms(args) -> int:
    from .gsm.outbox import get_sms, list_outbox, plan_sms, queue_sms

    settings, db = _box(args)
    if args.sms_cmd == "send":
        sms_id = queue_sms(db, args.number, args.text, kind="manual", settings=settings)
        row = get_sms(db, sms_id)
        print(f"sms #{sms_id} queued to {row['number']}: {plan_sms(args.text, settings).describe()}")
        try:
            ask_core(settings, "sms-wake")  # a running core sends it now rather than at its next look
        except CoreNotRunning:
            print("the core is not running: the SMS leaves when it starts")
        return EXIT_OK
    if args.sms_cmd == "template":
        return _sms_template(args, settings, db)
    rows = list_outbox(db, args.limit)
    if not rows:
        print("the SMS outbox is empty")
    for r in reversed(rows):
        text = r["text"].replace("\n", " ")
        text = text if len(text) <= 40 else text[:39] + "…"
        enc = "UCS-2" if r["encoding"] == "ucs2" else "GSM-7"
        print(
            f"#{r['id']} {r['created_at'][:19]} {r['number']} {r['state']:<11} {r['parts']}×{enc} "
            f"tries {r['attempts']} {text!r}" + (f" — {r['error']}" if r["error"] else "")
        )
    return EXIT_OK


def _sms_template(args, settings, db) -> int:
    """R19 follow-up SMS: ``[callbacks] templates`` filled with ``--set name=value``; the
    clinic's name ({clinic}) and the number as people write it ({number}) come by themselves."""
    from .gsm.outbox import get_sms, plan_sms, queue_sms
    from .gsm.smstext import render_template, template_fields
    from .numbers import for_people

    templates = settings.callbacks.get("templates") or {}
    if not args.name:
        if not templates:
            print("no templates: add them to [callbacks] templates in the settings file")
        broken = 0
        for name, text in sorted(templates.items()):
            try:
                own = [f for f in template_fields(str(text)) if f not in ("clinic", "number")]
            except CentralkaError as exc:
                print(f"{name}: {text}  (BROKEN: {exc})")
                broken += 1
                continue
            print(f"{name}: {text}" + (f"  (--set {' '.join(f + '=…' for f in own)})" if own else ""))
        return EXIT_ERROR if broken else EXIT_OK
    if args.name not in templates:
        known = ", ".join(sorted(templates)) or "none configured"
        raise CentralkaError(f"no SMS template {args.name!r} (templates: {known})")
    if not args.number:
        raise CentralkaError(f"whom to text? centralka sms template {args.name} NUMBER")
    values = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CentralkaError(f"--set {item!r}: write name=value, e.g. --set dzien=wtorek")
        values[key.strip()] = value
    values.setdefault("clinic", settings.box.clinic_name.strip() or "Przychodnia")
    values.setdefault("number", for_people(args.number, settings.box.country))
    text = render_template(str(templates[args.name]), **values)
    sms_id = queue_sms(db, args.number, text, kind="followup", settings=settings)
    row = get_sms(db, sms_id)
    print(f"sms #{sms_id} queued to {row['number']}: {text!r} ({plan_sms(text, settings).describe()})")
    try:
        ask_core(settings, "sms-wake")
    except CoreNotRunning:
        print("the core is not running: the SMS leaves when it starts")
    return EXIT_OK


def cmd_hw_test(args) -> int:
    """R25: one line per check (or the JSON report); exit 1 when any check FAILs."""
    from .selftest import failed, report
    from .selftest.hw import run

    settings, db = _box(args)
    checks = run(settings, db, lambda cmd, **f: ask_core(settings, cmd, **f), sms_to=args.sms)
    if args.json:
        print(json.dumps(report(checks), ensure_ascii=False))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(c.line(width))
    return EXIT_ERROR if failed(checks) else EXIT_OK


def _backup_dir(settings) -> Path:
    d = str(settings.backup.get("dir") or "").strip()
    return Path(d) if d else Path(settings.box.data_dir) / "backups"


def cmd_backup(args) -> int:
    """A snapshot of the database and the settings file; the oldest nightly ones rotated out."""
    import shutil

    from .store import backup

    settings, db = _box(args)
    folder = _backup_dir(settings)
    name = backup.named(backup.NIGHTLY_PREFIX)
    path = backup.take(db, folder / f"{name}.db")
    if settings.source and Path(settings.source).is_file():
        shutil.copy2(settings.source, folder / f"{name}.toml")
    gone = backup.rotate(folder, int(args.keep or settings.backup.keep))
    for old in gone:
        Path(old).with_suffix(".toml").unlink(missing_ok=True)
    print(f"backup {path} ({path.stat().st_size // 1024} kB)" + (f"; {len(gone)} old one(s) removed" if gone else ""))
    return EXIT_OK


def cmd_restore(args) -> int:
    """Check a backup, then put it in place of the database (the core must be stopped)."""
    from .store import backup
    from .store.db import known_migrations

    settings = _settings(args)
    found = backup.problems(args.file, known_migrations())
    if found:
        raise CentralkaError(f"not restored: {found[0]}")
    try:
        ask_core(settings, "status", timeout=3)
    except CoreNotRunning:
        pass
    else:
        raise CentralkaError("the core is running: stop it first (systemctl stop centralka-core), then restore")
    live = Path(settings.db_path)
    if live.exists():
        # As it is: not opened through open_db, which would migrate it first.
        kept = backup.take_file(live, _backup_dir(settings) / f"{backup.named('pre-restore-')}.db")
        print(f"the database as it was: {kept}")
    backup.replace(live, args.file)
    print(f"restored {args.file} to {live}; start the core (migrations run at start if the backup is older)")
    return EXIT_OK


def cmd_call(args) -> int:
    settings = _settings(args)
    reply = ask_core(settings, "test-call", number=args.number, timeout=60)
    if not reply.get("ok"):
        print(f"centralka: {reply.get('error')}", file=sys.stderr)
        return EXIT_ERROR
    print(f"test call #{reply['call_id']} to {reply['number']} placed over the {reply['line']} line")
    return EXIT_OK


def cmd_kamailio(args) -> int:
    """The desk phones' registrar in the foreground, for its own systemd unit
    (``[kamailio] run_by = "systemd"``): the configuration written from the database, checked,
    then Kamailio in this process's place (its log on stderr, in the journal)."""
    from .sip.kamailio import from_settings
    from .store.phones import list_phones

    settings, db = _box(args)
    if not settings.kamailio.enabled:
        raise CentralkaError("the desk phones' registrar is off ([kamailio] enabled = false)")
    argv = from_settings(settings).prepare(list_phones(db))
    db.close()
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return EXIT_ERROR  # (not reached)


def cmd_retention(args) -> int:
    """Recordings past their keeping time removed (centralka-retention.timer, daily)."""
    from .clock import stamp
    from .store import selftest as store_selftest
    from .store import voicemails as store_voicemails

    settings, db = _box(args)
    r = settings.retention
    removed = []
    for vm in store_voicemails.handled_before(db, stamp(time.time() - 86400 * float(r.voicemail_days))):
        if not args.dry_run:
            Path(vm["path"]).unlink(missing_ok=True)
            store_voicemails.forget_recording(db, vm["id"])
        removed.append(f"voice message v{vm['id']} ({vm['path']})")
    for row_id, path in store_selftest.recordings_before(db, stamp(time.time() - 86400 * float(r.selftest_days))):
        if not args.dry_run:
            Path(path).unlink(missing_ok=True)
            store_selftest.forget_recording(db, row_id)
        removed.append(f"self-test recording #{row_id} ({path})")
    for line in removed:
        print(("would remove " if args.dry_run else "removed ") + line)
    print(f"{len(removed)} recording(s) past their keeping time" + (" (dry run)" if args.dry_run else ""))
    return EXIT_OK


def cmd_web(args) -> int:
    """The web UI served by waitress (systemd/centralka-web.service)."""
    import waitress

    from webui import create_app

    settings = _settings(args)
    waitress.serve(create_app(settings), host=settings.web.address, port=settings.web.port, ident="centralka")
    return EXIT_OK


def cmd_selftest(args) -> int:
    """R21: the box calls its own public number over the other line and listens."""
    from .store import selftest as store_selftest

    if args.selftest_cmd == "call":
        settings = _settings(args)
        reply = ask_core(settings, "selftest-call", target=args.target, timeout=180)
        if not reply.get("ok"):
            print(f"centralka: {reply.get('error')}", file=sys.stderr)
            return EXIT_ERROR
        for c in reply["checks"]:
            print(f"{c['result']:<4}  {c['name']:<11}  {c['why']}")
        print(
            f"{reply['result']}: {reply['reason']}"
            + (f"\nheard: {reply['recording']}" if reply.get("recording") else "")
        )
        return EXIT_ERROR if reply["result"] == "FAIL" else EXIT_OK
    settings, db = _box(args)
    rows = store_selftest.recent(db, args.limit)
    if args.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print("no self-test calls yet")
    for r in reversed(rows):
        print(
            f"#{r['id']} {_local(r['started_at'], settings)} {r['trigger']:<8} {r['line'] or '-':>5} -> "
            f"{r['number'] or '-':<13} {r['result']:<7} {r['reason'] or ''}"
        )
    return EXIT_OK


def cmd_alarms(args) -> int:
    from .alarms import ack_alarm, list_alarms

    settings, db = _box(args)
    if args.ack:
        if not ack_alarm(db, args.ack, os.environ.get("USER") or "admin"):
            print(f"centralka: no unacknowledged alarm #{args.ack}", file=sys.stderr)
            return EXIT_ERROR
        print(f"alarm #{args.ack} acknowledged")
        return EXIT_OK
    rows = list_alarms(db, args.limit, unacked_only=args.open)
    if not rows:
        print("no alarms")
    for r in reversed(rows):
        ack = f" (acknowledged by {r['acked_by']})" if r["acked_at"] else ""
        print(f"#{r['id']} {r['at'][:19]} {r['severity']:<8} {r['source']:<6} {r['text']}{ack}")
    return EXIT_OK


def _book(args):
    from .flow.callbacks import CallbackBook
    from .services import Services

    settings, db = _box(args)
    return CallbackBook(Services(settings=settings, db=db)), settings, db


def _local(stamp_text: str | None, settings) -> str:
    from datetime import datetime

    from .clock import parse_stamp

    if not stamp_text:
        return "-"
    return datetime.fromtimestamp(parse_stamp(stamp_text), settings.tz).strftime("%Y-%m-%d %H:%M")


def cmd_callbacks(args) -> int:
    """The callback list: open requests, missed calls, voice messages; one line each."""
    from .numbers import for_people

    book, settings, db = _book(args)
    if args.callbacks_cmd == "done":
        ref = book.done(args.ref, note=args.note or "", by=os.environ.get("USER") or "staff")
        print(f"{ref} done")
        return EXIT_OK
    if args.callbacks_cmd == "call":
        reply = ask_core(settings, "callback-call", ref=args.ref, agent=args.agent or "", timeout=60)
        if not reply.get("ok"):
            print(f"centralka: {reply.get('error')}", file=sys.stderr)
            return EXIT_ERROR
        print(f"{args.ref}: ringing {reply.get('agent')}, then {reply.get('number')}")
        return EXIT_OK
    items = book.items()
    if args.json:
        for item in items:
            print(json.dumps({k: v for k, v in item.items()}, ensure_ascii=False, default=str))
        return EXIT_OK
    if not items:
        print("nothing open: no callback requests, missed calls or voice messages")
    country = settings.box.country
    for item in items:
        d = item["detail"]
        number = for_people(item["number"], country) or "(withheld)"
        extra = ""
        if item["kind"] == "callback":
            asked = f", asked {d['requests']}×" if (d["requests"] or 1) > 1 else ""
            extra = f"promised {d['promise'] or '-'}{asked}, tries {d['attempts'] or 0}"
            if d["escalated_at"]:
                extra += ", OVERDUE"
        elif item["kind"] == "missed":
            extra = (
                "cut off when the box restarted"
                if d["gave_up"] == "restart"
                else f"gave up in the {d['gave_up'] or '?'} after {d['waited_s'] or 0:.0f} s"
            )
        else:
            extra = f"{d['seconds'] or 0:.0f} s, {d['path']}"
        print(
            f"{item['ref']:<6} {_local(item['at'], settings)}  {number:<16} {item['topic'] or '-':<14} "
            f"{item['state']:<8} {extra}"
        )
    return EXIT_OK


def cmd_hours(args) -> int:
    """The week of a schedule, the state now and the next change; set or lift an override."""
    from datetime import datetime

    from .flow.hours import DAYS, overridden
    from .flow.model import load_flow_text
    from .flow.promise import closed_message
    from .store import flows as store_flows
    from .store import hours as store_hours

    settings, db = _box(args)
    row = store_flows.active_flow(db)
    if row is None:
        raise CentralkaError("no call flow in the database: import one with `centralka flow import FILE`")
    flow = load_flow_text(row["text"], source=f"flow {row['name']!r}", lang=settings.box.language)
    if not flow.schedules:
        print(f"the flow {row['name']!r} has no business hours: it is open round the clock")
        return EXIT_OK
    name = args.schedule or next(iter(flow.schedules))
    schedule = flow.schedule(name)
    from .clock import SYSTEM_CLOCK, stamp

    now = SYSTEM_CLOCK.now().astimezone(schedule.tz)
    if args.hours_cmd in ("open", "closed"):
        until = None
        if args.until == "next":
            # Until the schedule itself changes (closed early today: open again at the next opening).
            until = schedule.next_change(now)
        elif args.until:
            try:
                until = datetime.fromisoformat(args.until).replace(tzinfo=schedule.tz)
            except ValueError:
                raise CentralkaError(f"--until {args.until!r}: write it as YYYY-MM-DD HH:MM") from None
        by = os.environ.get("USER") or "admin"
        store_hours.set_override(
            db, name, args.hours_cmd, until=stamp(until.timestamp()) if until else None, at=SYSTEM_CLOCK.stamp(), by=by
        )
        print(f"{name}: {args.hours_cmd} " + (f"until {until:%Y-%m-%d %H:%M}" if until else "until lifted"))
    elif args.hours_cmd == "lift":
        print(f"{name}: override lifted" if store_hours.lift(db, name) else f"{name}: no override to lift")
    schedule = overridden(schedule, store_hours.override(db, name))
    print(f"schedule {name!r} ({schedule.tz.key}, holidays {schedule.country or 'none'})")
    for i, day in enumerate(DAYS):
        hours = ", ".join(str(iv) for iv in sorted(schedule.weekly.get(i, []))) or "closed"
        print(f"  {day}  {hours}")
    for offset in range(7):
        d = now.date().fromordinal(now.date().toordinal() + offset)
        if schedule.holiday(d) or d in schedule.closures or d in schedule.openings:
            hours = ", ".join(str(iv) for iv in schedule.intervals_on(d)) or "closed"
            why = schedule.holiday(d) or ("one-off opening" if d in schedule.openings else "one-off closure")
            print(f"  {d}  {hours} ({why})")
    state = "open" if schedule.is_open(now) else "closed"
    if schedule.override is not None and schedule.override.active(now):
        state += " (override)"
    change = schedule.next_change(now)
    print(f"now {now:%Y-%m-%d %H:%M}: {state}; next change " + (f"{change:%Y-%m-%d %H:%M}" if change else "none"))
    if not schedule.is_open(now):
        print(f"callers hear: {closed_message(schedule, now, settings.box.language, spoken=False)}")
    return EXIT_OK


def cmd_migrate(args) -> int:

    settings, db = _box(args)
    print(f"{settings.db_path}: tables {', '.join(sorted(db.table_names()))}")
    return EXIT_OK


# demo, demo-gsm and phone live in appliance/testing/, which the running box never imports: their
# modules are imported here, when the command runs, and define their own arguments then.
PHONE_HELP = "call a SIP address from this terminal; type digits to press keys"
DEMO_GSM_HELP = "the demo's simulated mobile network: call or text the box's emulated modem, see the SMS it sent"


def _add_late_command(sub, name: str, help: str, func) -> None:
    """A command whose arguments its module defines: every word after ``name`` goes to ``rest``."""
    s = sub.add_parser(name, help=help, add_help=False, prefix_chars="\0")  # no options here, not even -h
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=func)


def _parse_late(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)


def cmd_phone(args) -> int:
    from .testing.phone import add_arguments, run_terminal

    parser = argparse.ArgumentParser(prog="centralka phone", description=PHONE_HELP)
    add_arguments(parser, terminal=True)
    late = _parse_late(parser, args.rest)
    return late if isinstance(late, int) else run_terminal(late)


def cmd_demo_gsm(args) -> int:
    from .testing.demo import DEMO_DIR
    from .testing.mobile_network import add_arguments
    from .testing.mobile_network import cmd_demo_gsm as run

    parser = argparse.ArgumentParser(prog="centralka")
    add_arguments(parser.add_subparsers())
    late = _parse_late(parser, ["demo-gsm", *args.rest])
    return late if isinstance(late, int) else run(late, DEMO_DIR / "radio.sock")


def cmd_demo(args) -> int:
    from .testing.demo import run_demo

    _tracebacks_on_crash()
    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="centralka", description="Centralka clinic phone appliance")
    p.add_argument("--config", help="settings file (default: $CENTRALKA_CONFIG, the demo's, /etc/centralka)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the core (SIP, flows, control socket)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("demo", help="run a demo clinic on this machine with simulated staff phones")
    s.set_defaults(func=cmd_demo)

    flow = sub.add_parser("flow", help="check, import and export call flows").add_subparsers(
        dest="flow_cmd", required=True
    )
    s = flow.add_parser("check", help="run the flow doctor on a file; non-zero exit on any error")
    s.add_argument("file")
    s.add_argument("--lang", choices=["pl", "en"])
    s.set_defaults(func=cmd_flow_check)
    s = flow.add_parser("import", help="check a flow file and make it the active flow")
    s.add_argument("file")
    s.add_argument("--name")
    s.set_defaults(func=cmd_flow_import)
    s = flow.add_parser("export", help="write a flow (the active one by default) as TOML")
    s.add_argument("file", nargs="?")
    s.add_argument("--name")
    s.set_defaults(func=cmd_flow_export)

    prompt = sub.add_parser("prompt", help="recorded prompts").add_subparsers(dest="prompt_cmd", required=True)
    s = prompt.add_parser("upload", help="convert a recording (wav/mp3/ogg/flac) and use it for a prompt name")
    s.add_argument("name", help="prompt name as used in flows, e.g. greeting")
    s.add_argument("file")
    s.set_defaults(func=cmd_prompt_upload)

    phones = sub.add_parser("phones", help="desk phones registering at the box").add_subparsers(
        dest="phones_cmd", required=True
    )
    s = phones.add_parser("add", help="add a phone (or give it a new password); prints its password once")
    s.add_argument("extension")
    s.add_argument("--name", default="")
    s.set_defaults(func=cmd_phones)
    s = phones.add_parser("list", help="the phones and their extensions")
    s.set_defaults(func=cmd_phones)
    s = phones.add_parser("remove", help="remove a phone; it can no longer register")
    s.add_argument("extension")
    s.set_defaults(func=cmd_phones)

    staff = sub.add_parser("staff", help="agents and queues (import/export a TOML file)").add_subparsers(
        dest="staff_cmd", required=True
    )
    s = staff.add_parser("import", help="check and store agents and queues; a running core reloads them")
    s.add_argument("file")
    s.set_defaults(func=cmd_staff)
    s = staff.add_parser("export", help="write the agents and queues as TOML (stdout by default)")
    s.add_argument("file", nargs="?")
    s.set_defaults(func=cmd_staff)

    for verb, text in (("pause", "stop offering queued calls to an agent"), ("unpause", "offer calls again")):
        s = sub.add_parser(verb, help=text)
        s.add_argument("agent")
        s.set_defaults(func=cmd_agent, agent_cmd=verb)

    s = sub.add_parser("status", help="live state of the running core")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("calls", help="recent calls and their journeys")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--steps", action="store_true", help="show each call's steps")
    s.set_defaults(func=cmd_calls)

    sms = sub.add_parser("sms", help="the SMS outbox (sent over the GSM modem)").add_subparsers(
        dest="sms_cmd", required=True
    )
    s = sms.add_parser("send", help="queue an SMS; prints its id and what it costs (parts, encoding)")
    s.add_argument("number")
    s.add_argument("text")
    s.set_defaults(func=cmd_sms)
    s = sms.add_parser("template", help="a follow-up SMS from a template (no arguments: list the templates)")
    s.add_argument("name", nargs="?")
    s.add_argument("number", nargs="?")
    s.add_argument("--set", action="append", metavar="NAME=VALUE", help="a placeholder's value (repeatable)")
    s.set_defaults(func=cmd_sms)
    s = sms.add_parser("list", help="the outbox, newest last, with states")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_sms)

    s = sub.add_parser("hw-test", help="hardware self-tests: PASS/WARN/FAIL/SKIP per check; exit 1 on a FAIL")
    s.add_argument("--json", action="store_true", help='print {"checks": [...]} instead of lines')
    s.add_argument("--sms", metavar="NUMBER", help="also send a test SMS to this number and wait for it")
    s.set_defaults(func=cmd_hw_test)

    s = sub.add_parser("backup", help="a snapshot of the database and the settings; old nightly ones rotated")
    s.add_argument("--keep", type=int, help="how many nightly backups to keep (default [backup] keep)")
    s.set_defaults(func=cmd_backup)
    s = sub.add_parser("restore", help="check a backup, then put it in place of the database (core stopped)")
    s.add_argument("file")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("call", help="a test call to a number over the best line (SIP trunk or GSM)")
    s.add_argument("number")
    s.set_defaults(func=cmd_call)

    s = sub.add_parser("kamailio", help="the desk phones' registrar in the foreground (its own systemd unit)")
    s.set_defaults(func=cmd_kamailio)
    s = sub.add_parser("retention", help="remove recordings kept past [retention] (the daily timer)")
    s.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    s.set_defaults(func=cmd_retention)
    s = sub.add_parser("web", help="the web UI, served by waitress ([web] address and port)")
    s.set_defaults(func=cmd_web)

    st = sub.add_parser("selftest", help="the self-test call: the box calls its own number over the other line")
    st.set_defaults(func=cmd_selftest, selftest_cmd="list", limit=20, json=False)
    sts = st.add_subparsers(dest="selftest_cmd")
    s = sts.add_parser("call", help="run one now and print its checks (exit 1 when it FAILs)")
    s.add_argument("--target", choices=("gsm", "trunk"), help="whose public number to call (default: the next in turn)")
    s = sts.add_parser("list", help="the latest self-test calls and their results")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true", help="one JSON object per line")

    s = sub.add_parser("alarms", help="line changes and other things a person must see")
    s.add_argument("--limit", type=int, default=30)
    s.add_argument("--open", action="store_true", help="only alarms nobody acknowledged")
    s.add_argument("--ack", type=int, metavar="ID", help="acknowledge alarm ID")
    s.set_defaults(func=cmd_alarms)

    cb = sub.add_parser("callbacks", help="callback requests, missed calls and voice messages still open")
    cb.set_defaults(func=cmd_callbacks, callbacks_cmd="list")
    cb.add_argument("--json", action="store_true", help="one JSON object per line")
    cbs = cb.add_subparsers(dest="callbacks_cmd")
    s = cbs.add_parser("list", help="everything open, oldest first (the default)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per line")
    s = cbs.add_parser("done", help="mark an item done (c12, m7, v3), with a note")
    s.add_argument("ref")
    s.add_argument("--note", default="", help="what was done, for the record")
    s = cbs.add_parser("call", help="ring a receptionist's phone, then the patient (needs the running core)")
    s.add_argument("ref")
    s.add_argument("--agent", help="the agent whose phone rings (default: the first free one of the queue)")

    h = sub.add_parser("hours", help="business hours: the week, now, the next change; overrides")
    h.set_defaults(func=cmd_hours, hours_cmd="show")
    h.add_argument("--schedule", help="which [schedules.NAME] of the active flow (default: the first)")
    hs = h.add_subparsers(dest="hours_cmd")
    for verb in ("open", "closed"):
        s = hs.add_parser(verb, help=f"{verb} now, until --until or until lifted (manual override)")
        s.add_argument(
            "--until", help="YYYY-MM-DD HH:MM local time, or 'next' (the next scheduled change); default: until lifted"
        )
        s.add_argument("--schedule", default=argparse.SUPPRESS, help="which schedule (default: the first)")
    s = hs.add_parser("lift", help="remove the manual override: the schedule decides again")
    s.add_argument("--schedule", default=argparse.SUPPRESS, help="which schedule (default: the first)")

    _add_late_command(sub, "demo-gsm", DEMO_GSM_HELP, cmd_demo_gsm)

    s = sub.add_parser("migrate", help="create or upgrade the database")
    s.set_defaults(func=cmd_migrate)

    _add_late_command(sub, "phone", PHONE_HELP, cmd_phone)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except FlowRejected as exc:
        _print_findings(exc.findings, getattr(args, "file", "flow"))
        print(
            f"centralka: flow refused: {len([f for f in exc.findings if f.level == 'error'])} error(s)", file=sys.stderr
        )
        return EXIT_ERROR
    except (CentralkaError, OSError) as exc:
        if args.debug:
            raise
        msg = str(exc) if not isinstance(exc, FlowSyntaxError) else str(exc)
        print(f"centralka: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def entry():
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
