"""The read-only commands: alerts, audit, queue and devices listings, status.

Each opens the outbox read-only (safe while the daemon runs), asks it for rows and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from itertools import chain
from typing import Any

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    iso,
    open_outbox,
    print_rows,
    reader_may_leave,
)
from agent.models import AlertState
from agent.outbox.limits import auth_alarm
from agent.sanitize import escaped_sample
from agent.settings import Settings

# Stage states (agent.liveness.StageState) that `status` counts as healthy.
_STAGE_OK = ("alive", "starting")


def alerts(settings: Settings, args: argparse.Namespace) -> int:
    outbox = open_outbox(settings)
    state = AlertState(args.state) if args.state else None
    rows = outbox.alerts(uid=args.uid, state=state, since=args.since, holds=True)
    print_rows(
        (_alert_row(row) for row in rows),
        args.json,
        ["id", "received_at", "uid", "seq", "severity", "code", "state", "message_id", "reason"],
    )
    outbox.close()
    return EXIT_OK


def _alert_row(row: dict[str, Any]) -> dict[str, Any]:
    """`sample`: a rejected alert's stored payload sample (its first 512 bytes) as printable
    text, ASCII as it is and every other byte as \\xNN, nothing cut; null for the others."""
    raw = row.pop("payload_sample")
    sample = None if raw is None else escaped_sample(raw, 4 * len(raw))
    return {**row, "retained": bool(row["retained"]), "sample": sample}


def audit(settings: Settings, args: argparse.Namespace) -> int:
    outbox = open_outbox(settings)
    print_rows(
        outbox.audit_log(since=args.since),
        args.json,
        [
            "id",
            "ts",
            "event",
            "outcome",
            "mail_id",
            "alert_ids",
            "smtp_code",
            "duration_ms",
            "detail",
        ],
    )
    outbox.close()
    return EXIT_OK


def queue(settings: Settings, args: argparse.Namespace) -> int:
    """Held alerts (not in a mail yet: one row per device, code and reason), then pending and
    dead mails: age, attempts, why and until when they wait, last reply."""
    now = time.time()
    outbox = open_outbox(settings)
    rows = (
        {**row, "age_s": round(now - row["created_at"], 1)}
        for row in chain(outbox.held(now), outbox.mails(now=now))
    )
    print_rows(
        rows,
        args.json,
        [
            "id",
            "state",
            "age_s",
            "attempts",
            "recipients",
            "alert_ids",
            "reason",
            "due_at",
            "last_reply",
        ],
    )
    outbox.close()
    return EXIT_OK


def devices(settings: Settings, args: argparse.Namespace) -> int:
    """Devices with their state and counters."""
    outbox = open_outbox(settings)
    print_rows(
        outbox.devices(),
        args.json,
        [
            "uid",
            "state",
            "received",
            "suppressed",
            "dropped",
            "rejected",
            "suspicious",
            "last_seen",
            "block_reason",
        ],
    )
    outbox.close()
    return EXIT_OK


def status(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the daemon is running (a fresh heartbeat from a live process) and every
    stage is alive; else 1, naming the stage that is stalled or dead."""
    now = time.time()
    outbox = open_outbox(settings)
    beat = outbox.heartbeat()
    gauges = outbox.gauges(now)
    reasons = outbox.pending_reasons(now)
    alarm = auth_alarm(outbox)
    outbox.close()
    running = False
    age = None if beat is None else now - float(beat["ts"])
    # abs(): a heartbeat "from the future" after the clock stepped back is still fresh.
    if age is not None and abs(age) < 3 * settings.health.interval + 5:
        try:
            os.kill(int(beat["pid"]), 0)
            running = True
        except PermissionError:
            running = True  # alive, owned by the service user
        except ProcessLookupError:
            running = False
    stages: dict[str, dict[str, Any]] = dict(beat.get("stages") or {}) if beat else {}
    troubled = {
        name: stage for name, stage in stages.items() if stage.get("state") not in _STAGE_OK
    }
    report = {
        "running": running,
        "healthy": running and not troubled,
        "heartbeat_age_s": None if age is None else round(age, 1),
        "pending_alerts": gauges.pending_alerts,
        "pending_by_reason": reasons,
        "pending_mails": gauges.pending_mails,
        "dead_mails": gauges.dead_mails,
        "oldest_pending_age_s": round(gauges.oldest_pending_age_s, 1),
        "blocked_devices": gauges.blocked_devices,
        "last_successful_send": iso(gauges.last_sent_at),
        # The dispatcher's login alarm: mail waits until the credentials work again.
        "relay_login": (
            None
            if not running
            else f"REFUSED since {iso(alarm['since'])}: {alarm['reply']}"
            if alarm
            else "ok"
        ),
        "stages": stages if running else {},
    }
    code = EXIT_OK if report["healthy"] else EXIT_FAILURE
    with reader_may_leave():  # the exit code says it all, read or not
        _print_status(report, args.json)
        sys.stdout.flush()
    return code


def _print_status(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        if key == "stages":
            continue
        if key == "pending_by_reason":
            value = ", ".join(f"{n} {reason}" for reason, n in value.items()) or None
        print(f"{key.replace('_', ' '):<24}{'-' if value is None else value}")
    for name, stage in report["stages"].items():
        line = f"{stage.get('state')}, last sign of life {stage.get('silent_s')} s ago"
        if stage.get("error"):
            line += f": {stage['error']}"
        print(f"{'stage ' + name:<24}{line}")
