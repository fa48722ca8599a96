"""Silences: what they cover, how long they may last, and what their notices say.

Pure functions over values the outbox reads (agent.outbox.silences stores them). A silence
covers a device pattern and a code pattern, shell-style (`pump-*`, `E04?`), matched with
fnmatchcase: case-sensitive on every platform, like device UIDs themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo

# What a pattern may contain: UID / code characters plus the shell wildcards * ? [ ] !
PATTERN_RE = re.compile(r"^[A-Za-z0-9._*?\[\]!-]{1,64}$")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence as stored: scope, time span, who and why."""

    id: int
    device: str
    code: str
    starts_at: float
    ends_at: float
    author: str
    reason: str
    ended_at: float | None = None
    ended_by: str | None = None

    def covers(self, uid: str, code: str, ts: float) -> bool:
        """Whether an alert of `uid` + `code` received at `ts` falls under this silence."""
        end = self.ends_at if self.ended_at is None else min(self.ends_at, self.ended_at)
        return (
            self.starts_at <= ts < end
            and fnmatchcase(uid, self.device)
            and fnmatchcase(code, self.code)
        )

    @property
    def scope(self) -> str:
        return f"device {self.device}" + ("" if self.code == "*" else f", code {self.code}")


def find_silence(silences: Iterable[Silence], uid: str, code: str, ts: float) -> int | None:
    """The id of the first (oldest) silence covering this alert, or None."""
    for silence in silences:
        if silence.covers(uid, code, ts):
            return silence.id
    return None


def parse_duration(text: str) -> float:
    """`90m`, `2h`, `1.5d`, `3600` (seconds) → seconds; ValueError for anything else."""
    match = _DURATION_RE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 30m, 2h, 1d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def check_pattern(pattern: str, what: str) -> str:
    """The pattern, if it has the shape of a UID / code pattern; ValueError otherwise."""
    if not PATTERN_RE.match(pattern):
        raise ValueError(f"{what} pattern {pattern!r}: letters, digits, . _ - and * ? [ ] ! only")
    return pattern


def when(ts: float | None, zone: str = "UTC") -> str:
    """A time for people: UTC, and local time where the gateway's zone differs."""
    if ts is None:
        return "-"
    utc = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    local = datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")
    return utc if local == utc else f"{utc} / {local}"


def summarise(alerts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What happened during a silence, per device + code: count, span, last state."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for alert in alerts:
        key = (str(alert["uid"]), str(alert["code"]))
        row = rows.setdefault(
            key,
            {"uid": key[0], "code": key[1], "count": 0, "first_at": alert["received_at"]},
        )
        row["count"] += 1
        row["last_at"] = alert["received_at"]
        row["last_state"] = alert["fault_state"]
        row["severity"] = alert["severity"]
        row["message"] = alert["message"]
    return list(rows.values())


def notice_subject(notice: dict[str, Any], gateway: str) -> str:
    """The subject of a silence notice (start or end)."""
    scope = str(notice.get("scope", ""))
    if notice.get("event") == "started":
        return (
            f"[SILENCE] {scope} on {gateway} silenced until "
            f"{when(_num(notice.get('ends_at')))} by {notice.get('author')}"
        )
    total = sum(int(r.get("count", 0)) for r in notice.get("summary", []))
    active = len(notice.get("still_active", []))
    return (
        f"[SILENCE ENDED] {scope} on {gateway}: {total} alert(s) during it, {active} still active"
    )


def notice_text(notice: dict[str, Any], gateway: str, zone: str = "UTC") -> str:
    """The plain-text body of a silence notice: who, why, scope, until when; at its end,
    what happened during it and what is still active."""
    lines: list[str] = []
    started = notice.get("event") == "started"
    if started:
        lines.append(
            f"Alerts of {notice.get('scope')} on gateway {gateway} are silenced: they are "
            "recorded (state `silenced`) but not mailed until the silence ends."
        )
    else:
        lines.append(f"The silence of {notice.get('scope')} on gateway {gateway} has ended.")
    lines += [
        "",
        f"Silence id:   {notice.get('silence_id')}",
        f"Scope:        {notice.get('scope')}",
        f"Created by:   {notice.get('author')}",
        f"Reason:       {notice.get('reason')}",
        f"From:         {when(_num(notice.get('starts_at')), zone)}",
        f"Until:        {when(_num(notice.get('ends_at')), zone)}",
    ]
    if not started:
        lines.append(
            f"Ended:        {when(_num(notice.get('ended_at')), zone)} "
            f"({notice.get('ended_by') or 'expired'})"
        )
        summary = notice.get("summary", [])
        lines += ["", "What happened during it:" if summary else "No alerts during it."]
        for row in summary:
            lines.append(
                f"  {row['uid']} {row['code']} ({row['severity']}): {row['count']} alert(s), "
                f"{when(_num(row['first_at']), zone)} .. {when(_num(row['last_at']), zone)}, "
                f"last {row['last_state']}: {row['message']}"
            )
        active = notice.get("still_active", [])
        if active:
            lines += ["", "Still active, mailed now as active alerts:"]
            lines += [f"  {item}" for item in active]
    else:
        lines += [
            "",
            f"To end it early:  faultmail silence expire {notice.get('silence_id')}",
        ]
    lines += ["", "-- ", f"faultmail on {gateway}"]
    return "\n".join(lines) + "\n"


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
