"""``make bench``: how much one held call costs the real box, and how fast it answers.

Starts ``centralka run`` as its own process (temporary data directory, free SIP port on
127.0.0.1, the demo flow imported, ``reserve_transfer_leg = false`` so it admits calls up to the
build's call limit), reads the limit from the box's control socket, then lets SIPp hold N
concurrent calls in the greeting/menu (scenario ``bench/uac_hold.xml``: INVITE with a G.711
offer, 200, ACK, hold, BYE; SIPp echoes the box's RTP back so every call carries audio both ways).

Measured (see bench/README.md for the method):
- CPU % of the box process per held call: utime+stime from /proc/<pid>/stat over the hold
  window, minus an idle baseline (measured before and after the rounds), divided by the calls held;
- RSS of the box: idle, and the maximum sampled during the run;
- INVITE -> 200 OK latency, median and p95, from SIPp's own per-message timestamps
  (``-trace_shortmsg``, microseconds);
- failures: calls not answered, unexpected responses, calls SIPp counted as failed.

``--over`` also offers (callers limit)+2 calls at once and reports how many got 486 (the limit hit cleanly: the
ones past the limit got 486, nothing else, and no admitted caller got a BYE from the box before
their own).

``--queue`` holds the N callers in a queue instead: each presses 1 (SIP INFO dtmf-relay, scenario
``bench/uac_queue.xml``) and waits with the shared hold music and position announcements (the
bench's own flow and staff file, an agent nobody can reach, ``when_no_agents = "wait"``). The same
figures are measured per waiting caller, and the box's database is checked afterwards: every
caller joined the queue (``queue_calls``) and heard announcements (``call_steps`` 'announce').

Human-readable lines first, then exactly one JSON line, last. A benchmark never fails on a
timing: the exit code is non-zero only when SIPp is missing (2) or the box cannot start (1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import wave
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = Path(__file__).resolve().with_name("uac_hold.xml")
QUEUE_SCENARIO = Path(__file__).resolve().with_name("uac_queue.xml")
QUEUE_KEY_MS = 1000  # uac_queue.xml presses 1 this long after the ACK
QUEUE_ID = "rejestracja"
QUEUE_ANNOUNCE_EVERY_S = 10
DIALLED = "48221234567"
HZ = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

EXIT_OK, EXIT_BOX, EXIT_NO_SIPP = 0, 1, 2


def say(msg: str = "") -> None:
    print(msg, flush=True)


class Interrupted(Exception):
    """SIGTERM, turned into an exception so every ``finally`` runs."""


# --- ports -----------------------------------------------------------------------------------
def _bindable(port: int, kinds=(socket.SOCK_DGRAM,)) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(*, tcp_too: bool = False, also: tuple[int, ...] = (), taken: set[int] | None = None) -> int:
    """A port on 127.0.0.1 free for UDP (and TCP if asked), with ``port + k`` free for k in ``also``."""
    taken = taken if taken is not None else set()
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp_too else (socket.SOCK_DGRAM,)
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        wanted = [port] + [port + k for k in also]
        if any(p in taken or p > 65535 for p in wanted):
            continue
        if all(_bindable(p, kinds if p == port else (socket.SOCK_DGRAM,)) for p in wanted):
            taken.update(wanted)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


# --- the box's process, seen from /proc --------------------------------------------------------
def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (every thread, live or ended), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ticks_children(pid: int) -> int:
    """cutime + cstime: CPU of the box's ended and reaped children (espeak-ng, sox), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[13]) + int(fields[14])


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds summed over the live threads (finer than ticks; ended threads are lost)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuWindow:
    """CPU use of a process between ``start()`` and ``stop()``, as % of one core."""

    def __init__(self, pid: int):
        self.pid = pid

    def start(self):
        self.t0, self.c0, self.n0 = time.monotonic(), cpu_ticks(self.pid), cpu_ns(self.pid)
        return self

    def stop(self):
        self.t1, self.c1, self.n1 = time.monotonic(), cpu_ticks(self.pid), cpu_ns(self.pid)
        self.wall = self.t1 - self.t0
        self.pct = 100.0 * (self.c1 - self.c0) / HZ / self.wall
        self.pct_ns = 100.0 * (self.n1 - self.n0) / 1e9 / self.wall
        return self


class RssSampler(threading.Thread):
    """VmRSS of the box every 0.2 s, tagged with the phase the bench is in."""

    def __init__(self, pid: int):
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.phase = "start"
        self.samples: list[tuple[str, int]] = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            rss = proc_status_kb(self.pid, "VmRSS")
            if rss is None:
                return
            self.samples.append((self.phase, rss))
            self._halt.wait(0.2)

    def stop(self):
        self._halt.set()
        self.join(2)

    def mb(self, phase: str | None = None, how=max) -> float | None:
        vals = [kb for ph, kb in self.samples if phase is None or ph == phase]
        return round(how(vals) / 1024, 1) if vals else None


# --- the box -------------------------------------------------------------------------------------
def _die_with_parent():
    # Linux: the box gets SIGTERM if the bench dies without cleaning up (e.g. SIGKILL).
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


class Box:
    def __init__(self, workdir: Path, staff: str, flow_text: str | None = None, staff_text: str | None = None):
        from appliance.config import ENV_OVERRIDES
        from appliance.testing.demo import demo_flow_text

        self.dir = workdir
        self.port = free_port(tcp_too=True)
        self.config = workdir / "centralka.toml"
        self.config.write_text(
            f'[box]\ndata_dir = "{workdir / "data"}"\n\n'
            f'[sip]\naddress = "127.0.0.1"\nport = {self.port}\nreserve_transfer_leg = false\n'
            # The load generator is one source sending far more than a caller would.
            'trusted_sources = ["127.0.0.1"]\n\n'
            f'[control]\nsocket = "{workdir / "core.sock"}"\n',
            encoding="utf-8",
        )
        self.flow_text = flow_text if flow_text is not None else demo_flow_text(staff)
        flow_file = workdir / "flow.toml"
        flow_file.write_text(self.flow_text, encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES and k != "CENTRALKA_CONFIG"}
        self.stderr_path = workdir / "box.stderr"
        self.proc = None
        imp = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "--config", str(self.config), "flow", "import", str(flow_file)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if imp.returncode != 0:
            raise BoxError(f"flow import failed (exit {imp.returncode}):\n{imp.stdout}{imp.stderr}")
        if staff_text is not None:
            # Agents and queues, as an admin adds them (`centralka staff import FILE`).
            staff_file = workdir / "staff.toml"
            staff_file.write_text(staff_text, encoding="utf-8")
            imp = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "appliance.cli",
                    "--config",
                    str(self.config),
                    "staff",
                    "import",
                    str(staff_file),
                ],
                cwd=ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if imp.returncode != 0:
                raise BoxError(f"staff import failed (exit {imp.returncode}):\n{imp.stdout}{imp.stderr}")

    def start(self, timeout: float = 60) -> dict:
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "--config", str(self.config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            env=self.env,
            cwd=ROOT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.status()
            except Exception as exc:  # noqa: BLE001
                if self.proc.poll() is not None:
                    raise BoxError(f"box exited with {self.proc.returncode} before it was ready:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise BoxError(f"box not ready within {timeout:.0f} s ({exc}):\n{self.log()}")
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict:
        from appliance.cli import ask_core
        from appliance.config import load_settings

        reply = ask_core(load_settings(self.config, env={}), "status")
        if not reply.get("ok"):
            raise RuntimeError(f"status: {reply}")
        return reply["status"]

    def wait_idle(self, timeout: float = 15) -> dict | None:
        """Wait until the box holds no call and no leg; returns the last status (None: no answer)."""
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            try:
                st = self.status()
            except Exception:  # noqa: BLE001
                if not self.alive():
                    return None
                st = None
            if st and st["calls_active"] == 0 and st["legs_in_use"] == 0:
                return st
            time.sleep(0.2)
        return st

    def db(self):
        """The box's database, read-only (the box keeps writing it)."""
        import sqlite3

        from appliance.config import load_settings

        path = load_settings(self.config, env={}).db_path
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        return con

    def log(self, tail: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def problems(self) -> list[str]:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [
            ln
            for ln in lines
            if " ERROR " in ln
            or " CRITICAL " in ln
            or ln.startswith("Traceback")
            or "Segmentation" in ln
            or "Assertion" in ln
        ]

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return self.proc.returncode

    def seconds_in_menu(self) -> float | None:
        """How long a silent caller stays in greeting + menu before the flow sends them on."""
        try:
            flow = tomllib.loads(self.flow_text)
            start = flow["nodes"][flow["start"]]
            menu = flow["nodes"][start["next"]]
            cache = self.dir / "data" / "prompts"
            total = float(menu.get("timeout", 0))
            for name in (start["prompt"], menu["prompt"]):
                wav = next(iter(sorted(cache.rglob(f"{name}-*.wav"))), None)
                if wav is None:
                    return None
                with wave.open(str(wav), "rb") as w:
                    total += w.getnframes() / w.getframerate()
            return total
        except Exception:  # noqa: BLE001 — only advice
            return None


class BoxError(Exception):
    pass


# --- SIPp ------------------------------------------------------------------------------------
class SippRun:
    """One SIPp process placing ``calls`` calls (at most ``calls`` at once) that each hold ``hold_s``."""

    _live: "set[SippRun]" = set()

    def __init__(
        self,
        sipp: str,
        workdir: Path,
        box_port: int,
        calls: int,
        hold_s: float,
        rate: float,
        echo: bool,
        scenario: Path = SCENARIO,
        lead_ms: int = 0,
    ):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.calls = calls
        self.hold_s = hold_s
        taken: set[int] = set()
        local = free_port(taken=taken)
        media = free_port(also=(1, 2, 3), taken=taken)  # RTP, RTCP and sipp's video echo pair
        control = free_port(taken=taken)
        self.deadline_s = hold_s + calls / rate + 25
        self.cmd = [
            sipp,
            f"127.0.0.1:{box_port}",
            "-sf",
            str(scenario),
            "-s",
            DIALLED,
            "-i",
            "127.0.0.1",
            "-p",
            str(local),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(media),
            "-cp",
            str(control),
            "-m",
            str(calls),
            "-l",
            str(calls),
            "-r",
            f"{rate:g}",
            "-d",
            str(int(hold_s * 1000) - lead_ms),
            "-recv_timeout",
            "10s",
            "-timeout",
            f"{int(self.deadline_s)}s",
            "-nostdin",
            "-trace_shortmsg",
            "-shortmessage_file",
            str(self.dir / "short.log"),
            "-trace_stat",
            "-stf",
            str(self.dir / "stat.csv"),
            "-fd",
            "1",
            "-trace_err",
            "-error_file",
            str(self.dir / "errors.log"),
        ]
        if echo:
            self.cmd.append("-rtp_echo")
        self.proc = None

    def start(self):
        self._out = open(self.dir / "sipp.out", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT
        )
        SippRun._live.add(self)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> int:
        left = self.deadline_s + 10 - (time.monotonic() - self.started)
        try:
            self.proc.wait(max(1.0, left))
        except subprocess.TimeoutExpired:
            self.kill()
        self._out.close()
        SippRun._live.discard(self)
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        SippRun._live.discard(self)

    # --- results -----------------------------------------------------------------------------
    def results(self) -> dict:
        """Per call: INVITE sent, 100 and final response received (SIPp's µs timestamps)."""
        calls: dict[str, dict] = defaultdict(dict)
        path = self.dir / "short.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in lines:
            parts = line.split("\t")
            if len(parts) < 7:
                continue
            t, direction, call_id, cseq, first = float(parts[2]), parts[3], parts[4], parts[5], parts[6]
            c = calls[call_id]
            if direction == "S" and first.startswith("INVITE "):
                c.setdefault("invite", t)
            elif direction == "R" and cseq.endswith(" INVITE") and first.startswith("SIP/2.0 "):
                code = int(first.split()[1])
                if code == 100:
                    c.setdefault("trying", t)
                elif code < 200:
                    c.setdefault("provisional", t)
                else:
                    c.setdefault("final", (code, t))
            elif direction == "R" and first.startswith("BYE "):
                c.setdefault("box_bye", t)  # the box hung up on a caller who meant to hold on
        out = {
            "attempted": 0,
            "answered": 0,
            "rejected_486": 0,
            "unanswered": 0,
            "other": defaultdict(int),
            "to_200_ms": [],
            "to_100_ms": [],
            "answered_ids": [],
            "dropped_by_box": 0,
        }
        for call_id, c in calls.items():
            if "invite" not in c:
                continue
            out["attempted"] += 1
            if "trying" in c:
                out["to_100_ms"].append((c["trying"] - c["invite"]) * 1000)
            final = c.get("final")
            if final is None:
                out["unanswered"] += 1
            elif final[0] == 200:
                out["answered"] += 1
                out["dropped_by_box"] += "box_bye" in c
                out["answered_ids"].append(call_id)
                out["to_200_ms"].append((final[1] - c["invite"]) * 1000)
            elif final[0] == 486:
                out["rejected_486"] += 1
            else:
                out["other"][final[0]] += 1
        out["never_sent"] = max(0, self.calls - out["attempted"])
        out["sipp"] = self.stats()
        return out

    def stats(self) -> dict:
        """SIPp's own verdict, the last row of its -trace_stat file (cumulative columns)."""
        path = self.dir / "stat.csv"
        try:
            rows = [ln.rstrip(";\n").split(";") for ln in path.read_text(errors="replace").splitlines() if ln]
        except OSError:
            return {}
        if len(rows) < 2:
            return {}
        head, last = rows[0], rows[-1]
        st = dict(zip(head, last))
        failed_reasons = {
            k[len("Failed") : -3]: int(v)
            for k, v in st.items()
            if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and v.isdigit() and int(v)
        }
        return {
            "successful": int(st.get("SuccessfulCall(C)", 0) or 0),
            "failed": int(st.get("FailedCall(C)", 0) or 0),
            "failed_reasons": failed_reasons,
            "mean_rtd_ms": _sipp_time_ms(st.get("ResponseTime1(C)", "")),
        }

    def tail(self, n: int = 1500) -> str:
        parts = []
        for name in ("sipp.out", "errors.log"):
            p = self.dir / name
            if p.exists():
                parts.append(f"--- {name} ---\n" + p.read_text(errors="replace")[-n:])
        return "\n".join(parts)


def _sipp_time_ms(text: str) -> float | None:
    # "HH:MM:SS:uuuuuu"
    try:
        h, m, s, us = (int(x) for x in text.split(":"))
    except ValueError:
        return None
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation between the closest ranks, as numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def r(x, nd=3):
    return None if x is None else round(x, nd)


# --- the bench -----------------------------------------------------------------------------------
def _calls_active(st: dict) -> int:
    return st["calls_active"]


def queue_waiting(st: dict) -> int:
    return ((st.get("queues") or {}).get("queues", {}).get(QUEUE_ID) or {}).get("waiting", 0)


def hold_round(
    box: Box,
    sampler: RssSampler,
    sipp: str,
    workdir: Path,
    n: int,
    hold_s: float,
    rate: float,
    echo: bool,
    label: str,
    measure: bool = True,
    expect: int | None = None,
    scenario: Path = SCENARIO,
    lead_ms: int = 0,
    count=_calls_active,
    ramp_extra_s: float = 5,
    in_place: str = "calls held",
) -> dict:
    """One SIPp run of ``n`` calls; CPU is measured while ``expect`` (default ``n``) calls are held.

    ``count`` reads from the box's status how many calls are in place (default: calls active;
    the queue mode counts callers waiting in the queue)."""
    run = SippRun(sipp, workdir, box.port, n, hold_s, rate, echo, scenario=scenario, lead_ms=lead_ms)
    sampler.phase = "calls"
    child0 = cpu_ticks_children(box.pid)
    run.start()
    # All N calls up: the box says so (the control socket is asked only until then).
    ramp_deadline = time.monotonic() + n / rate + ramp_extra_s
    held = 0
    while measure and time.monotonic() < ramp_deadline and run.running():
        try:
            held = count(box.status())
        except Exception:  # noqa: BLE001
            held = 0
        if held >= (expect or n):
            break
        time.sleep(0.05)
    res: dict = {"label": label, "held_at_start": held}
    # The window ends well before the first caller's BYE (hold counts from that caller's ACK).
    window = hold_s - (time.monotonic() - run.started) - 0.7
    if measure and held and window >= 1.0 and run.running():
        win = CpuWindow(box.pid).start()
        time.sleep(window)
        win.stop()
        try:
            st = box.status()
            res["held_at_end"] = count(st)
            # Every pool of the build at the peak (issue 13): legs, players, conference ports...
            res["pools_at_peak"] = (st.get("pools") or {}).get("in_use")
            res["pools_limits"] = (st.get("pools") or {}).get("limits")
        except Exception:  # noqa: BLE001
            res["held_at_end"] = None
        held_both = min(held, res["held_at_end"] or 0)
        res.update(window_s=win.wall, cpu_pct=win.pct, cpu_pct_ns=win.pct_ns, held=held_both)
    else:
        res.update(window_s=0.0, held=0)
        if measure:
            say(
                f"  {label}: no hold window measured ({in_place} {held}/{n}, window {window:.1f} s); "
                f"use a longer --hold"
            )
    rc = run.wait()
    sampler.phase = "between"
    try:
        res["children_cpu_s"] = (cpu_ticks_children(box.pid) - child0) / HZ
    except OSError:
        res["children_cpu_s"] = None
    res["sipp_rc"] = rc
    res.update(run.results())
    res["run"] = run
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=0, help="concurrent calls to hold (default: the box's call limit)")
    ap.add_argument("--hold", type=float, default=None, help="seconds each call is held (default 15; 30 with --queue)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of N held calls (default 2)")
    ap.add_argument(
        "--idle",
        type=float,
        default=6.0,
        help="seconds of idle baseline, before and again after the rounds (default 6)",
    )
    ap.add_argument("--rate", type=float, default=10.0, help="new calls per second while ramping up (default 10)")
    ap.add_argument(
        "--over", action="store_true", help="also offer the callers limit + 2 calls and count the 486 rejections"
    )
    ap.add_argument(
        "--over-hold",
        type=float,
        default=3.0,
        help="seconds the --over calls are held beyond their ramp-up (default 3)",
    )
    ap.add_argument("--no-echo", action="store_true", help="SIPp sends no RTP back (default: echo the box's RTP)")
    ap.add_argument("--sipp", default=os.environ.get("SIPP", "sipp"), help="SIPp binary (default: sipp on PATH)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, SIPp traces)")
    ap.add_argument(
        "--queue",
        action="store_true",
        help="callers press 1 and wait in a queue (hold music, announcements) instead of the menu",
    )
    args = ap.parse_args(argv)
    if args.hold is None:
        args.hold = 30.0 if args.queue else 15.0
    if args.queue and args.hold < QUEUE_KEY_MS / 1000 + 1:
        ap.error(
            f"--hold must be at least {QUEUE_KEY_MS / 1000 + 1:g} s with --queue (the key is pressed after "
            f"{QUEUE_KEY_MS / 1000:g} s)"
        )
    if args.calls < 0 or args.rounds < 1 or args.hold <= 0 or args.idle <= 0 or args.rate <= 0 or args.over_hold <= 0:
        ap.error("--calls must be >= 0; --rounds >= 1; --hold, --idle, --rate and --over-hold > 0")

    sipp = shutil.which(args.sipp)
    if sipp is None:
        print(
            f"bench: SIPp not found ({args.sipp!r}); install the Debian package sip-tester (make setup)",
            file=sys.stderr,
        )
        return EXIT_NO_SIPP

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="centralka-bench-"))
    # The staff phones: a UDP port held open and never read, so a transfer would ring into
    # silence (bench callers stay in the greeting and menu and never get that far).
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    box = None
    sampler = None
    runs: list[SippRun] = []
    exit_code = EXIT_OK
    t_begin = time.monotonic()
    try:
        try:
            phones = f"127.0.0.1:{dead.getsockname()[1]}"
            if args.queue:
                box = Box(work, phones, flow_text=queue_flow_text(phones), staff_text=QUEUE_STAFF)
            else:
                # The demo's agents and queue, so the demo flow's queue node is configured.
                from appliance.testing.demo import demo_staff_text

                box = Box(work, phones, staff_text=demo_staff_text())
            st = box.start()
        except (BoxError, OSError, subprocess.SubprocessError) as exc:
            print(f"bench: the box did not start: {exc}", file=sys.stderr)
            return EXIT_BOX
        legs, build = st["call_limit"], st["build_call_limit"]
        # The callers the box admits: the call legs, or a tighter pool of the build (sockets,
        # players, conference ports — counted per caller with their transfer).
        pools = st.get("pools") or {}
        limit = pools.get("callers_limit", legs)
        n = args.calls or limit
        say(
            f"box: pid {box.pid}, SIP udp 127.0.0.1:{box.port}, call limit {legs} (build {build}), "
            f"callers admitted at once {limit}, reserve_transfer_leg off; started in "
            f"{time.monotonic() - t_begin:.1f} s"
        )
        if pools.get("limits"):
            say("  pools of the build: " + ", ".join(f"{k} {v}" for k, v in pools["limits"].items()))
        if n > limit:
            say(
                f"note: --calls {n} is above the call limit {limit}: {n - limit} call(s) will get 486 and count "
                f"as failures"
            )
        if args.queue:
            q_st = (st.get("queues") or {}).get("queues", {}).get(QUEUE_ID)
            say(
                f"queue mode: callers press 1 (SIP INFO) {QUEUE_KEY_MS / 1000:g} s after the ACK and wait in queue "
                f"{QUEUE_ID!r} (announce_every {QUEUE_ANNOUNCE_EVERY_S} s; its one agent, phone 299, cannot be "
                f"reached: when_no_agents = wait)"
                + ("" if q_st is not None else f"; NOTE: the box reports no queue {QUEUE_ID!r}")
            )
            first_gap = args.hold - QUEUE_KEY_MS / 1000 - 1
            if first_gap < QUEUE_ANNOUNCE_EVERY_S + 5:
                say(
                    f"note: with --hold {args.hold:g} a caller waits about {first_gap:.0f} s in the queue, too short "
                    f"for a second announcement"
                )
        in_menu = None if args.queue else box.seconds_in_menu()
        if in_menu is not None and args.hold > in_menu - 1:
            say(
                f"note: a silent caller leaves the greeting/menu after about {in_menu:.1f} s; with --hold "
                f"{args.hold:g} the calls reach the operator node (no free leg: 'all lines busy' prompts)"
            )
        sampler = RssSampler(box.pid)
        sampler.start()

        # Idle baseline, before the calls (and again after them, below).
        sampler.phase = "settle"
        time.sleep(1.5)
        sampler.phase = "idle"
        idle = CpuWindow(box.pid).start()
        time.sleep(args.idle)
        idle.stop()
        sampler.phase = "between"
        rss_idle = sampler.mb("idle", how=statistics.median)
        say(
            f"idle before the calls: CPU {idle.pct:.2f} % of one core over {idle.wall:.1f} s "
            f"(schedstat {idle.pct_ns:.2f} %), RSS {rss_idle} MB"
        )

        # Rounds of N held calls.
        rounds = []
        for i in range(1, args.rounds + 1):
            if args.queue:
                res = hold_round(
                    box,
                    sampler,
                    sipp,
                    work / f"round{i}",
                    n,
                    args.hold,
                    args.rate,
                    not args.no_echo,
                    f"round {i}",
                    expect=min(n, limit),
                    scenario=QUEUE_SCENARIO,
                    lead_ms=QUEUE_KEY_MS,
                    count=queue_waiting,
                    ramp_extra_s=5 + QUEUE_KEY_MS / 1000,
                    in_place="callers in the queue",
                )
            else:
                res = hold_round(
                    box,
                    sampler,
                    sipp,
                    work / f"round{i}",
                    n,
                    args.hold,
                    args.rate,
                    not args.no_echo,
                    f"round {i}",
                    expect=min(n, limit),
                )
            runs.append(res.pop("run"))
            rounds.append(res)
            line = (
                f"round {i}: {res['answered']}/{n} answered, {'waiting' if args.queue else 'held'} "
                f"{res['held']} over {res['window_s']:.1f} s"
            )
            if res.get("cpu_pct") is not None:
                line += f": box CPU {res['cpu_pct']:.2f} % (schedstat {res['cpu_pct_ns']:.2f} %)"
            if res.get("pools_at_peak") and res.get("pools_limits"):
                used, lim = res["pools_at_peak"], res["pools_limits"]
                shown = ("calls", "players", "conf_ports", "ioqueue_handles")
                line += "; pools at the peak " + ", ".join(f"{k} {used[k]}/{lim[k]}" for k in shown if k in used)
            lat = res["to_200_ms"]
            if lat:
                line += f"; INVITE->200 median {statistics.median(lat):.2f} ms, max {max(lat):.2f} ms"
            say(line)
            problems = _round_problems(res, n)
            if problems:
                say(f"  round {i} failures: {problems}")
                if res["unanswered"] or res["other"] or res["never_sent"] or res["sipp"].get("failed"):
                    say(runs[-1].tail())
            st_after = box.wait_idle()
            if st_after is None:
                say(f"  box stopped answering after round {i}:\n{box.log()}")
                break
            if st_after["calls_active"] or st_after["legs_in_use"]:
                say(
                    f"  after round {i} the box still holds {st_after['calls_active']} call(s), "
                    f"{st_after['legs_in_use']} leg(s)"
                )
            if args.queue:
                try:
                    res["queue"] = queue_check(box, res["answered_ids"])
                except Exception as exc:  # noqa: BLE001 — the callers are counted as not queued
                    res["queue"] = queue_check_failed(res["answered_ids"], exc)
                say(_queue_line(res["queue"], n, res.get("children_cpu_s")))
            time.sleep(1.6)  # let parked pj objects go (stack.PARK_S = 1.5 s)

        # Idle again: brackets the rounds against drift, and shows anything the calls left running.
        idle_after = None
        if box.alive() and any(x.get("cpu_pct") is not None for x in rounds):
            sampler.phase = "idle_after"
            idle_after = CpuWindow(box.pid).start()
            time.sleep(args.idle)
            idle_after.stop()
            sampler.phase = "between"
            say(
                f"idle after the calls: CPU {idle_after.pct:.2f} % over {idle_after.wall:.1f} s "
                f"(schedstat {idle_after.pct_ns:.2f} %), RSS {sampler.mb('idle_after', how=statistics.median)} MB"
            )
        idle_pct = statistics.fmean([w.pct for w in (idle, idle_after) if w is not None])
        idle_pct_ns = statistics.fmean([w.pct_ns for w in (idle, idle_after) if w is not None])
        rss_after = sampler.mb("idle_after", how=statistics.median) or (
            round(sampler.samples[-1][1] / 1024, 1) if sampler.samples else None
        )

        over = None
        if args.over and box.alive():
            try:
                hits0 = box.status()["limit_hits"]
            except Exception:  # noqa: BLE001
                hits0 = None
            m = limit + 2  # two past the edge, whatever --calls held
            # Every call still up when the last one is offered: the hold covers the ramp-up.
            over_hold = args.over_hold + m / args.rate
            res = hold_round(
                box, sampler, sipp, work / "over", m, over_hold, args.rate, not args.no_echo, "over", measure=False
            )
            runs.append(res.pop("run"))
            st_after = box.wait_idle()
            hits = (st_after["limit_hits"] - hits0) if (st_after and hits0 is not None) else None
            over = {
                "calls": m,
                "answered": res["answered"],
                "rejected_486": res["rejected_486"],
                "other_responses": dict(res["other"]),
                "unanswered": res["unanswered"] + res["never_sent"],
                "dropped_by_box": res["dropped_by_box"],
                "box_limit_hits": hits,
                "box_alive": box.alive() and st_after is not None,
                "legs_left": st_after["legs_in_use"] if st_after else None,
            }
            expected = max(0, m - limit)
            clean = (
                res["rejected_486"] == expected
                and res["answered"] == m - expected
                and not res["other"]
                and over["unanswered"] == 0
                and over["dropped_by_box"] == 0
                and over["box_alive"]
                and over["legs_left"] == 0
            )
            over["clean"] = clean
            say(
                f"over: {m} calls offered at once: {res['answered']} answered, {res['rejected_486']} rejected "
                f"with 486 (expected {expected}), other responses {dict(res['other']) or 'none'}, unanswered "
                f"{over['unanswered']}, hung up on by the box {over['dropped_by_box']}; box counted {hits} "
                f"limit hit(s); limit hit cleanly: "
                f"{'yes' if clean else 'NO'}"
            )
            if not clean:
                say(runs[-1].tail())

        # Aggregate.
        measured = [x for x in rounds if x.get("cpu_pct") is not None and x["held"]]
        lat = [v for x in rounds for v in x["to_200_ms"]]
        lat100 = [v for x in rounds for v in x["to_100_ms"]]
        failures = sum(_round_failures(x, n) for x in rounds)
        queue_summary = _queue_summary(rounds) if args.queue else None
        if queue_summary is not None:
            failures += queue_summary["failures"]
        per_call = statistics.fmean([(x["cpu_pct"] - idle_pct) / x["held"] for x in measured]) if measured else None
        per_call_ns = (
            statistics.fmean([(x["cpu_pct_ns"] - idle_pct_ns) / x["held"] for x in measured]) if measured else None
        )
        held_pct = statistics.fmean([x["cpu_pct"] for x in measured]) if measured else None
        problems = box.problems()
        final = box.wait_idle(5) if box.alive() else None
        sampler.phase = "end"
        hwm = proc_status_kb(box.pid, "VmHWM")
        sampler.stop()
        rss_max = sampler.mb(None, how=max)
        box_exit = box.stop()
        problems = box.problems()
        if box_exit not in (0, None):
            problems.append(f"box exit status {box_exit} on SIGTERM")

        what = (
            ("CPU per waiting caller", "callers waiting in the queue")
            if args.queue
            else ("CPU per held call", "calls held")
        )
        say(
            f"{what[0]}: {_fmt(per_call, 3)} % of one core above idle {idle_pct:.2f} % (mean of before "
            f"and after); box at {_fmt(held_pct, 2)} % with {measured[0]['held'] if measured else 0} {what[1]} "
            f"(/proc/<pid>/stat, {1000 // HZ} ms ticks; schedstat says {_fmt(per_call_ns, 3)} %)"
        )
        say(
            f"RSS: idle {rss_idle} MB, max {rss_max} MB during the run, {_fmt(rss_after, 1)} MB idle after the "
            f"rounds (VmHWM incl. start-up {_fmt(hwm and hwm / 1024, 1)} MB)"
        )
        say(
            f"INVITE->200 OK: median {_fmt(statistics.median(lat) if lat else None, 2)} ms, "
            f"p95 {_fmt(pct(lat, 95), 2)} ms over {len(lat)} calls (SIPp -trace_shortmsg timestamps); "
            f"INVITE->100 Trying median {_fmt(statistics.median(lat100) if lat100 else None, 2)} ms"
        )
        if queue_summary is not None:
            qs = queue_summary
            say(
                f"queue (database): {qs['joined']}/{qs['callers']} callers joined the queue, {qs['announced']} heard "
                f"announcements ({qs['announced_2plus']} at least two; {qs['announce_steps']} in all, "
                f"{_fmt(qs['announcements_per_caller_median'], 1)} per announced caller), {qs['head_silent']} at the "
                f"head heard none by design; queue failures {qs['failures']} (not queued {qs['not_joined']}, "
                f"silent with callers ahead {qs['silent_behind']})"
            )
        say(
            f"failures: {failures} of {n * len(rounds)} calls; box log errors: {len(problems)}; "
            f"box exit {box_exit}; {time.monotonic() - t_begin:.0f} s in all"
        )
        for p in problems[:10]:
            say(f"  box: {p}")
        if args.keep:
            say(f"kept: {work}")

        result = {
            "calls": n,
            "call_limit": legs,
            "callers_limit": limit,
            "build_call_limit": build,
            "cpu_pct_per_call": r(per_call),
            "cpu_pct_idle": r(idle_pct),
            "rss_mb_idle": rss_idle,
            "rss_mb_max": rss_max,
            "invite_to_200_ms_median": r(statistics.median(lat) if lat else None, 2),
            "invite_to_200_ms_p95": r(pct(lat, 95), 2),
            "failures": failures,
            "hold_s": args.hold,
            "rounds": len(rounds),
            "rtp_echo": not args.no_echo,
            "cpu_pct_held": r(held_pct),
            "cpu_pct_per_call_schedstat": r(per_call_ns),
            "cpu_pct_idle_before": r(idle.pct),
            "cpu_pct_idle_after": r(idle_after.pct if idle_after else None),
            "invite_to_100_ms_median": r(statistics.median(lat100) if lat100 else None, 2),
            "latency_samples": len(lat),
            "rss_mb_after": r(rss_after, 1),
            "legs_left": final["legs_in_use"] if final else None,
            "box_log_errors": len(problems),
            "box_exit": box_exit,
            "over": over,
        }
        if args.queue:
            result = {"mode": "queue", **result, "queue": queue_summary}
        print(json.dumps(result), flush=True)
        return exit_code
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\nbench: interrupted ({str(exc) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        # Finish cleaning up even if asked twice (the box is killed after 20 s at worst).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for run in runs:
            run.kill()
        _kill_current_sipp()
        if sampler is not None:
            sampler.stop()
        if box is not None:
            box.stop()
        dead.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --- queue mode ------------------------------------------------------------------------------------
QUEUE_FLOW = """\
# bench/calls.py --queue: key 1 waits in the queue; announcements every 10 s.
name = "bench-queue"
start = "powitanie"
operator = "operator"
language = "pl"

[prompts]
greeting = "Dzień dobry, tu przychodnia Centralka."
menu = "Rejestracja, wciśnij 1. Operator, 0."

[nodes.powitanie]
type = "play"
prompt = "greeting"
next = "menu"

[nodes.menu]
type = "menu"
prompt = "menu"
timeout = 5
repeats = 1
on_timeout = "operator"
on_invalid = "operator"

[nodes.menu.options]
"1" = "rejestracja"
"0" = "operator"

[nodes.rejestracja]
type = "queue"
queue = "{queue}"
max_wait = 600
announce_every = {every}
on_timeout = "operator"
on_leave = "operator"
on_no_agents = "operator"

[nodes.operator]
type = "operator"
target = "sip:operator@{phones}"
ring_timeout = 25
remind_every = 12
"""

# One agent whose desk phone (299) is never registered (no registrar runs in the bench): the box
# finds it unreachable and, with when_no_agents = "wait", keeps the callers queued. The minimum
# gap between announcements is lowered to the flow's announce_every, so the flow sets the pace.
QUEUE_STAFF = f"""\
[agents.bench]
name = "Bench agent (phone never registered)"
phones = ["299"]

[queues.{QUEUE_ID}]
name = "Rejestracja (bench)"
strategy = "ring_all"
members = ["bench"]
ring_timeout = 15
wrapup_s = 10
announce_min_gap_s = {QUEUE_ANNOUNCE_EVERY_S}
when_no_agents = "wait"
"""


def queue_flow_text(phones: str) -> str:
    return QUEUE_FLOW.format(queue=QUEUE_ID, every=QUEUE_ANNOUNCE_EVERY_S, phones=phones)


def _iso_s(text: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp() if text else None


def queue_check(box: Box, call_ids: list[str]) -> dict:
    """From the box's database: did each answered caller press 1, join the queue and hear announcements?

    A caller is expected to hear announcements when someone was already waiting ahead when they
    joined: the box announces nothing to the caller at the head of the queue (position 1)."""
    if not call_ids:
        return _queue_counts([])
    con = box.db()
    try:
        ph = ",".join("?" * len(call_ids))
        calls = {
            row["sip_call_id"]: dict(row)
            for row in con.execute(
                f"SELECT id, sip_call_id, answered_at FROM calls WHERE sip_call_id IN ({ph})", call_ids
            )
        }
        ids = [c["id"] for c in calls.values()]
        ph = ",".join("?" * len(ids))
        stays = defaultdict(list)
        for row in con.execute(f"SELECT * FROM queue_calls WHERE call_id IN ({ph}) ORDER BY id", ids):
            stays[row["call_id"]].append(dict(row))
        steps = defaultdict(list)
        for row in con.execute(
            f"SELECT call_id, step, detail FROM call_steps WHERE call_id IN ({ph}) "
            "AND step IN ('choice', 'announce') ORDER BY id",
            ids,
        ):
            steps[row["call_id"]].append((row["step"], json.loads(row["detail"]) if row["detail"] else {}))
        everyone = [
            dict(row)
            for row in con.execute("SELECT id, joined_at, left_at FROM queue_calls WHERE queue = ?", [QUEUE_ID])
        ]
    finally:
        con.close()
    per = []
    for sip_id in call_ids:
        c = calls.get(sip_id)
        if c is None:
            per.append({"in_db": False, "pressed_1": False, "joined": False, "announces": 0, "ahead_at_join": None})
            continue
        st = steps.get(c["id"], [])
        mine = [q for q in stays.get(c["id"], []) if q["queue"] == QUEUE_ID]
        info = {
            "in_db": True,
            "pressed_1": any(s == "choice" and d.get("key") == "1" for s, d in st),
            "joined": bool(mine),
            "announces": sum(1 for s, _ in st if s == "announce"),
            "with_estimate": sum(1 for s, d in st if s == "announce" and d.get("wait_s") is not None),
            "ahead_at_join": None,
        }
        if mine:
            q = mine[0]
            joined = q["joined_at"]
            info["ahead_at_join"] = sum(
                1
                for o in everyone
                if o["id"] != q["id"] and o["joined_at"] < joined and (o["left_at"] is None or o["left_at"] > joined)
            )
            info["reason"] = q["reason"]
            info["wait_s"] = q["wait_s"]
            a, j = _iso_s(c["answered_at"]), _iso_s(joined)
            info["join_after_answer_s"] = (j - a) if a is not None and j is not None else None
        per.append(info)
    return _queue_counts(per)


def queue_check_failed(call_ids: list[str], exc: Exception) -> dict:
    say(f"  queue check: cannot read the box's database: {exc}")
    return _queue_counts(
        [{"in_db": False, "pressed_1": False, "joined": False, "announces": 0, "ahead_at_join": None} for _ in call_ids]
    )


def _queue_counts(per: list[dict]) -> dict:
    joined = [p for p in per if p["joined"]]
    announced = [p for p in per if p["announces"]]
    reasons: dict[str, int] = defaultdict(int)
    for p in joined:
        reasons[p.get("reason") or "still waiting"] += 1
    not_joined = len(per) - len(joined)
    silent_behind = sum(1 for p in joined if p["ahead_at_join"] and not p["announces"])
    return {
        "callers": len(per),
        "in_db": sum(p["in_db"] for p in per),
        "pressed_1": sum(p["pressed_1"] for p in per),
        "joined": len(joined),
        "announced": len(announced),
        "announced_2plus": sum(1 for p in per if p["announces"] >= 2),
        "announce_steps": sum(p["announces"] for p in per),
        "announce_counts": [p["announces"] for p in announced],
        "with_estimate": sum(p.get("with_estimate", 0) for p in per),
        "head_silent": sum(1 for p in joined if not p["ahead_at_join"] and not p["announces"]),
        "not_joined": not_joined,
        "silent_behind": silent_behind,
        "failures": not_joined + silent_behind,
        "reasons": dict(reasons),
        "wait_s": [p["wait_s"] for p in joined if p.get("wait_s") is not None],
        "join_after_answer_s": [p["join_after_answer_s"] for p in joined if p.get("join_after_answer_s") is not None],
    }


def _queue_line(q: dict, n: int, children_cpu_s) -> str:
    counts = q["announce_counts"]
    per = (
        f"{min(counts)}-{max(counts)} each"
        if counts and min(counts) != max(counts)
        else f"{counts[0]} each"
        if counts
        else "none"
    )
    reasons = ", ".join(f"{k} x{v}" for k, v in sorted(q["reasons"].items())) or "none"
    line = (
        f"  queue: {q['pressed_1']}/{n} pressed 1, {q['joined']}/{n} joined {QUEUE_ID!r} "
        f"(median {_fmt(statistics.median(q['join_after_answer_s']) if q['join_after_answer_s'] else None, 2)} s "
        f"after the answer), {q['announced']}/{n} heard announcements ({per}, {q['announce_steps']} in all, "
        f"{q['with_estimate']} with a wait estimate); {q['head_silent']} at the head of the queue heard none "
        f"(nothing is announced to the caller who is next); left: {reasons}; waited median "
        f"{_fmt(statistics.median(q['wait_s']) if q['wait_s'] else None, 1)} s; child processes (espeak-ng, "
        f"sox) used {_fmt(children_cpu_s, 2)} s of CPU in the round"
    )
    if q["failures"]:
        line += (
            f"\n  round queue failures: {q['not_joined']} not queued, {q['silent_behind']} heard no "
            f"announcement although callers were ahead"
        )
    return line


def _queue_summary(rounds: list[dict]) -> dict:
    qs = [x["queue"] for x in rounds if "queue" in x]
    counts = [c for q in qs for c in q["announce_counts"]]
    waits = [w for q in qs for w in q["wait_s"]]
    joins = [j for q in qs for j in q["join_after_answer_s"]]
    reasons: dict[str, int] = defaultdict(int)
    for q in qs:
        for k, v in q["reasons"].items():
            reasons[k] += v
    out = {
        k: sum(q[k] for q in qs)
        for k in (
            "callers",
            "pressed_1",
            "joined",
            "announced",
            "announced_2plus",
            "announce_steps",
            "with_estimate",
            "head_silent",
            "not_joined",
            "silent_behind",
            "failures",
        )
    }
    out.update(
        {
            "queue": QUEUE_ID,
            "announce_every_s": QUEUE_ANNOUNCE_EVERY_S,
            "key_after_ack_s": QUEUE_KEY_MS / 1000,
            "announcements_per_caller_min": min(counts) if counts else None,
            "announcements_per_caller_median": statistics.median(counts) if counts else None,
            "announcements_per_caller_max": max(counts) if counts else None,
            "wait_s_median": r(statistics.median(waits), 2) if waits else None,
            "join_after_answer_s_median": r(statistics.median(joins), 3) if joins else None,
            "reasons": dict(reasons),
            "children_cpu_s": [r(x.get("children_cpu_s"), 2) for x in rounds],
        }
    )
    return out


def _kill_current_sipp():
    # A round interrupted mid-way: its SippRun is not in ``runs`` yet.
    for run in list(SippRun._live):
        run.kill()


def _round_failures(res: dict, n: int) -> int:
    """Calls of a round that did not go 200 -> held -> BYE answered, as SIPp and the responses tell."""
    not_answered = n - res["answered"]
    sipp_failed = res["sipp"].get("failed", 0)
    # A call answered but failed later (e.g. the BYE unanswered) is counted once, by SIPp.
    answered_then_failed = max(0, sipp_failed - (res["unanswered"] + sum(res["other"].values())))
    return not_answered + answered_then_failed


def _round_problems(res: dict, n: int) -> str:
    parts = []
    if res["answered"] < n:
        parts.append(f"{n - res['answered']} not answered")
    if res["rejected_486"]:
        parts.append(f"{res['rejected_486']} x 486")
    if res["other"]:
        parts.append("responses " + ", ".join(f"{k} x{v}" for k, v in sorted(res["other"].items())))
    if res["unanswered"]:
        parts.append(f"{res['unanswered']} without a final response")
    if res["never_sent"]:
        parts.append(f"{res['never_sent']} never sent")
    st = res["sipp"]
    if st.get("failed"):
        parts.append(f"SIPp failed calls {st['failed']} {st.get('failed_reasons') or ''}".strip())
    if res.get("sipp_rc") not in (0, 1):
        parts.append(f"SIPp exit {res.get('sipp_rc')}")
    return "; ".join(parts)


def _fmt(x, nd):
    return "n/a" if x is None else f"{x:.{nd}f}"


if __name__ == "__main__":
    sys.exit(main())
