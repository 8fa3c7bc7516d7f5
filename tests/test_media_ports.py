"""A GSM leg's conference port (a pjsua2 ``AudioMediaPort`` whose frame callbacks are Python) is
freed without crashing the box, however busy the event loop is when its time comes.

The bridge's clock thread calls such a port every 20 ms up to its destructor's last step. When
Python itself freed the object, a callback that was waiting for the GIL then ran on a freed
object: SIGSEGV, seen when GSM calls ended under load and at stop. The scenario runs in its own
process (a crash must not take the test runner with it) and measures nothing: it frees ports
the way the stack does, right after the loop was busy in Python.
"""

import subprocess
import sys
import textwrap

from .sipkit import ROOT

SCENARIO = textwrap.dedent(
    """
    import asyncio, random, sys, time
    import pjsua2 as pj
    from appliance.sip.stack import SipStack
    from appliance.sip.gsmleg import _VoicePort

    if sys.argv[1] == "python-frees":  # the old way: Python's own freeing destroys the port
        _VoicePort.release_now = None

    def busy(seconds):  # the loop in Python code: the clock thread waits for the GIL meanwhile
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    async def main():
        stack = SipStack(address="127.0.0.1", port=0, transports=("udp",))
        await stack.start()
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, 8000, 1, 20000, 16)
        rng = random.Random(7)
        for n in range(int(sys.argv[2])):
            port = _VoicePort(None)
            port.createPort(f"gsm-{n}", fmt)
            stack.park(port)
            del port
            await asyncio.sleep(0.03)  # the port in the bridge, called by its clock
            busy(rng.random() * 0.04)
            stack._free_parked(everything=True)  # what the stack does when a port's time is up
        await stack.stop()
        print("freed", n + 1, flush=True)

    asyncio.run(main())
    """
)


def run(mode: str, cycles: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", SCENARIO, mode, str(cycles)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gsm_ports_are_freed_without_crashing_while_the_loop_is_busy():
    done = run("stack-frees", 60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "freed 60" in done.stdout


def test_the_scenario_does_crash_when_python_frees_the_port_itself():
    """The scenario can fail: with the port left to Python's freeing, the process dies."""
    done = run("python-frees", 200)  # (it dies within a few ports; 200 leaves no doubt)
    assert done.returncode != 0 and "Segmentation fault" in done.stderr, (done.returncode, done.stderr[-2000:])
