"""The commands: parse arguments → load the configuration → call a handler → print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from agent.cli import acks, actions, reports, silences
from agent.cli.common import EXIT_FAILURE, reported, until_reader_leaves
from agent.cli.parser import build_parser
from agent.settings import Settings, load_settings

Handler = Callable[[Settings, argparse.Namespace], int]

# Commands that need the configuration, by name; `queue` and `devices` list without an action.
_HANDLERS: dict[str, Handler] = {
    "run": actions.run,
    "alerts": reports.alerts,
    "audit": reports.audit,
    "status": reports.status,
    "send-test": actions.send_test,
    "config": actions.config_check,
    "silence": silences.silence,
    "ack": acks.ack,
}


# Commands that only read the outbox: they need no secret file (load_settings(secrets=False)).
_READ_ONLY = {reports.alerts, reports.audit, reports.status, reports.queue, reports.devices}


def _handler(args: argparse.Namespace) -> Handler:
    if args.command == "queue":
        return reports.queue if args.queue_command is None else actions.queue
    if args.command == "devices":
        return reports.devices if args.devices_command is None else actions.devices
    return _HANDLERS[args.command]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        if argv is not None:
            # run replaces this process (exec); called with arguments, that would be a test's.
            print("faultmail: run is started as its own process, not called", file=sys.stderr)
            return EXIT_FAILURE
        # The daemon's stdout is the journal: a write error there is its own failure.
        return _call(args)
    return until_reader_leaves(lambda: _call(args))


def _call(args: argparse.Namespace) -> int:
    if args.command == "dkim":
        return actions.dkim_keygen(args)
    if args.command == "doctor":
        # It reports a bad configuration as one of its checks, so it loads the file itself.
        from agent import doctor

        return doctor.main(args.config, resolver=args.resolver, timeout=args.timeout)
    handler = _handler(args)
    return reported(
        lambda: handler(load_settings(args.config, secrets=handler not in _READ_ONLY), args)
    )
