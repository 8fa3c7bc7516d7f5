"""Faults a test injects into a running box, through the services object (never an environment
variable read by product code).

``python -m appliance.testing.faults --raise-at NODE --config FILE run`` runs the core exactly as
``centralka run`` does, except that a call entering flow node NODE meets an :class:`InjectedFault`
— the proof that any failure inside the engine still ends at the operator (R6).
"""

from __future__ import annotations

import argparse
import sys

from ..services import Faults


class InjectedFault(RuntimeError):
    """Raised on purpose by a test's fault plan."""


class RaiseAtNode(Faults):
    def __init__(self, node_id: str):
        self.node_id = node_id

    def at_node(self, node_id: str) -> None:
        if node_id == self.node_id:
            raise InjectedFault(f"injected fault at node {node_id}")


def main(argv=None) -> int:
    from ..cli import build_parser, cmd_run

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--raise-at", required=True, metavar="NODE")
    ours, rest = pre.parse_known_args(argv)
    args = build_parser().parse_args(rest)
    if args.func is not cmd_run:
        raise SystemExit("appliance.testing.faults runs the core only (`... --config FILE run`)")
    return cmd_run(args, faults=RaiseAtNode(ours.raise_at))


if __name__ == "__main__":
    sys.exit(main())
