"""Faults a test injects into a running box, through the services object (never an environment
variable read by product code).

``python -m appliance.testing.faults --raise-at NODE --config FILE run`` runs the core exactly as
``centralka run`` does, except that a call entering flow node NODE meets an :class:`InjectedFault`
— the proof that any failure inside the engine still ends at the operator (R6). ``--hang-at NODE
SECONDS`` blocks the event loop there instead (a hung core, for the watchdog).
``--take-players-at NODE`` takes every player the pjsua2 build has left as a call enters NODE (the
players pool at its end, for the no-player fallback).

``--clock-at 2027-03-29T10:00:00+02:00`` starts the box's wall clock at that moment (it then runs
at the normal pace): business hours, holidays and callback windows are tested on the day they
are about (Easter Monday of any year) instead of today. ``--clock-shift SECONDS`` moves it by an
exact amount instead, so a test that knows the shift can read the box's stamps as its own time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..services import Faults


class InjectedFault(RuntimeError):
    """Raised on purpose by a test's fault plan."""


class RaiseAtNode(Faults):
    def __init__(self, node_id: str):
        self.node_id = node_id

    def at_node(self, node_id: str, services) -> None:
        if node_id == self.node_id:
            raise InjectedFault(f"injected fault at node {node_id}")


class HangAtNode(Faults):
    """The event loop stuck for ``seconds`` as a call enters the node (a callback that blocks):
    the watchdog pings stop, which is how systemd tells a hung core from a busy one."""

    def __init__(self, node_id: str, seconds: float):
        self.node_id, self.seconds = node_id, seconds

    def at_node(self, node_id: str, services) -> None:
        if node_id == self.node_id:
            time.sleep(self.seconds)


class TakePlayersAtNode(Faults):
    """As the first call enters the node, every player the pjsua2 build has left is taken (held
    as shared players until the box stops): the build's ``PJSUA_MAX_PLAYERS`` reached for real,
    as on a box past its size, while admission — counting callers, not players — still lets
    the caller in. What the caller hears then is the no-player fallback."""

    def __init__(self, node_id: str):
        self.node_id = node_id
        self.taken = 0

    def at_node(self, node_id: str, services) -> None:
        if node_id != self.node_id or self.taken:
            return
        from ..media.holdmusic import ensure_hold_music
        from ..sip.stack import SipError

        music = ensure_hold_music(services.settings.data_dir, services.settings.sip.clock_rate)
        while self.taken < 4096:
            try:
                services.stack.shared_player(music)
            except SipError:
                break
            self.taken += 1
        logging.getLogger("centralka.faults").warning("fault: took the %d players left at node %s", self.taken, node_id)


def main(argv=None) -> int:
    from ..cli import build_parser, cmd_run

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--raise-at", metavar="NODE")
    pre.add_argument("--hang-at", nargs=2, metavar=("NODE", "SECONDS"))
    pre.add_argument("--take-players-at", metavar="NODE")
    pre.add_argument("--clock-at", metavar="ISO")
    pre.add_argument("--clock-shift", metavar="SECONDS", type=float)
    ours, rest = pre.parse_known_args(argv)
    args = build_parser().parse_args(rest)
    if args.func is not cmd_run:
        raise SystemExit("appliance.testing.faults runs the core only (`... --config FILE run`)")
    from .clock import ShiftedClock

    faults = (
        RaiseAtNode(ours.raise_at)
        if ours.raise_at
        else HangAtNode(ours.hang_at[0], float(ours.hang_at[1]))
        if ours.hang_at
        else TakePlayersAtNode(ours.take_players_at)
        if ours.take_players_at
        else None
    )
    clock = (
        ShiftedClock(shift=ours.clock_shift)
        if ours.clock_shift is not None
        else ShiftedClock(ours.clock_at)
        if ours.clock_at
        else None
    )
    return cmd_run(args, faults=faults, clock=clock)


if __name__ == "__main__":
    sys.exit(main())
