"""Child processes that cannot outlive the core.

When the core dies — a crash, SIGKILL, an abort inside pjsip — its children must go with it, or
the next start finds Kamailio (or a voice pipe) still holding the ports and devices. Linux's
PR_SET_PDEATHSIG does that: the kernel sends the child a signal the moment its parent thread
exits, whatever the reason. systemd's control group does the same for the unit on a Pi; this
covers ``centralka run`` by hand, the demo and the tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux: nothing to set
    _prctl = None


def die_with_parent(sig: int = signal.SIGTERM):
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when the core dies.

    Only a prepared foreign function is called in the child (no imports, no allocation), which
    keeps it safe in a process that has other threads. The signal is sent when the *thread*
    that started the child ends, so children are started from the core's main (event loop)
    thread."""
    prctl = _prctl

    def preexec():
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec
