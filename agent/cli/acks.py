"""ack: acknowledge an open device + code problem in the outbox (audited); the running daemon
holds its repeat follow-ups until it resolves or escalates."""

from __future__ import annotations

import argparse
import sys
import time

from agent.acks import note_text, thread_of, who
from agent.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, actor, open_outbox
from agent.settings import Settings


def ack(settings: Settings, args: argparse.Namespace) -> int:
    try:
        uid, code, alert_id = thread_of(args.thread)
        by = who(args.by if args.by is not None else actor())
        note = note_text(args.note)
    except ValueError as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    outbox = open_outbox(settings, readonly=False)
    try:
        result = outbox.acknowledge(uid, code, by, note, time.time(), alert_id=alert_id)
    finally:
        outbox.close()
    if result.error:
        print(f"faultmail: {result.error}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"{result.uid} {result.code} acknowledged by {by}: no repeat follow-ups until it "
        "resolves or escalates"
    )
    return EXIT_OK
