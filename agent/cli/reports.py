"""The read-only commands: alerts, audit, queue and devices listings, status.

Each opens the outbox read-only (safe while the daemon runs), asks it for rows and prints them.
`status` of a group member also reads `group.json`, the group view the daemon's group runtime
writes into the state directory (issue 17).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from itertools import chain
from pathlib import Path
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
from agent.sanitize import clean_text, escaped_sample
from agent.settings import Settings

# Stage states (agent.liveness.StageState) that `status` counts as healthy.
_STAGE_OK = ("alive", "starting")

GROUP_FILE = "group.json"
# Names and roles in group.json come from other members' retained messages: shown cut to this.
_NAME_CHARS = 64


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


def daemon_running(beat: dict[str, Any] | None, now: float, interval: float) -> bool:
    """A heartbeat row (outbox `heartbeat()`) says the daemon runs: it is fresh (within three
    health intervals and 5 s) and its pid is a live process."""
    if beat is None:
        return False
    try:
        age = now - float(beat["ts"])
        pid = int(beat["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    # abs(): a heartbeat "from the future" after the clock stepped back is still fresh.
    if not abs(age) < 3 * interval + 5:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, owned by the service user
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


def status(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the daemon is running (a fresh heartbeat from a live process) and every
    stage is alive; else 1, naming the stage that is stalled or dead. A group member adds the
    group view (it never changes the exit code)."""
    now = time.time()
    outbox = open_outbox(settings)
    beat = outbox.heartbeat()
    gauges = outbox.gauges(now)
    reasons = outbox.pending_reasons(now)
    alarm = auth_alarm(outbox)
    outbox.close()
    running = daemon_running(beat, now, settings.health.interval)
    age = None if beat is None else now - float(beat["ts"])
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
    if settings.cluster.grouped:
        report["group"] = group_report(settings, running)
    code = EXIT_OK if report["healthy"] else EXIT_FAILURE
    with reader_may_leave():  # the exit code says it all, read or not
        _print_status(report, args.json)
        sys.stdout.flush()
    return code


class GroupFileError(ValueError):
    """group.json is missing or not what the daemon writes; the message says which and why."""


def group_file(settings: Settings) -> Path:
    return settings.gateway.state_dir / GROUP_FILE


def read_group_file(path: Path) -> dict[str, Any]:
    """group.json as the daemon wrote it, checked and cleaned: group, instance, mode, role,
    lease (None: nobody holds it), members {name: {state, role, since}}, adopted [names],
    updated_at. Names and roles are made printable (they come from other members' messages).

    Raises GroupFileError naming the problem when the file is missing or garbled.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise GroupFileError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GroupFileError(f"{path} cannot be read: {exc}") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise GroupFileError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise GroupFileError(f"{path} is not a JSON object")
    members = doc.get("members", {})
    adopted = doc.get("adopted", [])
    if not isinstance(members, dict) or not isinstance(adopted, list):
        raise GroupFileError(f"{path}: members is not an object or adopted not a list")
    return {
        "group": _name(doc.get("group")),
        "instance": _name(doc.get("instance")),
        "mode": _name(doc.get("mode")),
        "role": _name(doc.get("role")),
        "lease": _name(doc.get("lease")),
        "members": {_name(name) or "?": _member(value) for name, value in sorted(members.items())},
        "adopted": sorted(_name(name) or "?" for name in adopted),
        "updated_at": _time(doc.get("updated_at")),
    }


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _name(value: Any) -> str | None:
    """A name or role from the file, printable; None when absent or not text."""
    if value is None or value == "":
        return None
    return clean_text(str(value), _NAME_CHARS) if isinstance(value, str) else "?"


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _member(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {"state": "?", "role": None, "since": None}
    return {
        "state": _name(value.get("state")) or "?",
        "role": _name(value.get("role")),
        "since": _time(value.get("since")),
    }


def group_report(settings: Settings, running: bool) -> dict[str, Any]:
    """The group part of `status`: the daemon's group.json with times in RFC 3339, `stale`
    when the daemon that wrote it is not running, and `problem` (None, or why there is no
    view: missing or garbled file)."""
    cluster = settings.cluster
    path = group_file(settings)
    try:
        view = read_group_file(path)
    except GroupFileError as exc:
        why = (
            "the daemon writes it once it has joined the group"
            if not path.exists()
            else "the daemon rewrites it while it runs; if this stays, remove the file and "
            "restart faultmail"
        )
        return {
            "group": cluster.group,
            "instance": cluster.instance,
            "mode": cluster.mode,
            "problem": f"no group view: {exc} ({why})",
        }
    view["members"] = {
        name: {**member, "since": iso(member["since"])} for name, member in view["members"].items()
    }
    return {
        **view,
        "updated_at": iso(view["updated_at"]),
        "stale": not running,
        "problem": None,
    }


def _print_status(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        if key in ("stages", "group"):
            continue
        if key == "pending_by_reason":
            value = ", ".join(f"{n} {reason}" for reason, n in value.items()) or None
        print(f"{key.replace('_', ' '):<24}{'-' if value is None else value}")
    for name, stage in report["stages"].items():
        line = f"{stage.get('state')}, last sign of life {stage.get('silent_s')} s ago"
        if stage.get("error"):
            line += f": {stage['error']}"
        print(f"{'stage ' + name:<24}{line}")
    if "group" in report:
        for label, text in _group_lines(report["group"]):
            print(f"{label:<24}{text}")


def _group_lines(view: dict[str, Any]) -> list[tuple[str, str]]:
    """The group view as (label, text) lines: who we are, the lease, each member, adopted."""
    head = f"{view['group']} (mode {view['mode']}, instance {view['instance']})"
    if view["problem"]:
        return [("group", head), ("group view", view["problem"])]
    lines = [("group", head)]
    role = view["role"] or "-"
    if view["stale"]:
        role += f" (as of {view['updated_at'] or '?'}: the daemon is not running)"
    lines.append(("role", role))
    if view["mode"] == "standby":
        lines.append(("lease", view["lease"] or "nobody: no member is active"))
    for name, member in view["members"].items():
        text = ", ".join(
            part
            for part in (
                member["state"],
                member["role"],
                member["since"] and f"since {member['since']}",
            )
            if part
        )
        lines.append((f"member {name}", text))
    lines.append(("adopted", ", ".join(view["adopted"]) or "-"))
    return lines
