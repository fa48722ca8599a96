"""silence add / list / expire: silences in the outbox, applied by the running daemon."""

from __future__ import annotations

import argparse
import sys
import time

from agent.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, actor, open_outbox, print_rows
from agent.cli.parser import time_arg
from agent.settings import Settings
from agent.silences import check_pattern, parse_duration

LIST_COLUMNS = ["id", "device", "code", "starts_at", "ends_at", "author", "reason", "ended_at"]


def silence(settings: Settings, args: argparse.Namespace) -> int:
    if args.silence_command == "add":
        return _add(settings, args)
    if args.silence_command == "expire":
        return _expire(settings, args)
    return _list(settings, args)


def _add(settings: Settings, args: argparse.Namespace) -> int:
    now = time.time()
    try:
        device = check_pattern(args.device, "device")
        code = check_pattern(args.code, "code")
        until = now + parse_duration(args.for_) if args.for_ else time_arg(args.until)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    reason = args.reason.strip()
    if not reason:
        print("faultmail: --reason must say why", file=sys.stderr)
        return EXIT_CONFIG
    limit = settings.silence.max_duration
    if until <= now or until - now > limit:
        print(
            f"faultmail: a silence must end in the future and within silence.max_duration "
            f"({limit:g} s)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    outbox = open_outbox(settings, readonly=False)
    try:
        silence_id = outbox.add_silence(device, code, now, until, actor(), reason)
    finally:
        outbox.close()
    print(f"silence {silence_id} added; the daemon applies it to the next alert")
    return EXIT_OK


def _list(settings: Settings, args: argparse.Namespace) -> int:
    outbox = open_outbox(settings)
    try:
        rows = outbox.list_silences()
    finally:
        outbox.close()
    print_rows(rows, args.json, LIST_COLUMNS)
    return EXIT_OK


def _expire(settings: Settings, args: argparse.Namespace) -> int:
    outbox = open_outbox(settings, readonly=False)
    try:
        ended = outbox.expire_silence(args.silence_id, time.time(), actor())
    finally:
        outbox.close()
    if not ended:
        print(f"faultmail: no running silence {args.silence_id}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"silence {args.silence_id} ended; the daemon mails its summary")
    return EXIT_OK
