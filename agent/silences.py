"""Silences: what they cover, how long they may last, and what their notices say.

Pure functions over values the outbox reads (agent.outbox.silences stores them). A silence
covers a device pattern and a code pattern, shell-style (`pump-*`, `E04?`), matched with
fnmatchcase: case-sensitive on every platform, like device UIDs themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo

from agent import i18n

# What a pattern may contain: UID / code characters plus the shell wildcards * ? [ ] ! (\Z as
# in models.UID_RE: nothing after them, not even a line break).
PATTERN_RE = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,64}\Z")

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


# Weekday names of [[maintenance]] days, in datetime.weekday() order.
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# How far ahead a maintenance window's silences are stored: an alert arriving in the first
# seconds of a window finds its silence already there. A window's longest duration (7 days).
MAINTENANCE_AHEAD_S = 3600.0
MAX_WINDOW_S = 7 * 86400.0


def parse_hhmm(text: str) -> time:
    """ "HH:MM" (24 h) → time; ValueError otherwise."""
    match = _HHMM_RE.match(text)
    if match is None:
        raise ValueError(f"not a time of day: {text!r} (HH:MM, 00:00 to 23:59)")
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True, slots=True)
class Window:
    """A recurring maintenance window ([[maintenance]]): on `days` at `start` local time in
    `zone`, for `duration` seconds or until the local time `end` (the next day when not after
    `start`). Local times follow the zone's DST: a 22:00-06:00 window is 22:00-06:00 on the
    clock, so 7 or 9 hours on the nights the clocks change; a `duration` is elapsed time."""

    name: str
    devices: tuple[str, ...]
    codes: tuple[str, ...]
    days: tuple[str, ...]
    start: time
    zone: str
    reason: str
    duration: float | None = None
    end: time | None = None

    def occurrences(self, since: float, until: float) -> list[tuple[float, float]]:
        """(starts_at, ends_at) of every occurrence overlapping [since, until), in order."""
        tz = ZoneInfo(self.zone)
        first = datetime.fromtimestamp(since - MAX_WINDOW_S, tz).date()
        last = datetime.fromtimestamp(until, tz).date()
        out: list[tuple[float, float]] = []
        day = first
        while day <= last:
            if WEEKDAYS[day.weekday()] in self.days:
                begin, finish = self._span(day, tz)
                if begin < until and finish > since:
                    out.append((begin, finish))
            day += timedelta(days=1)
        return out

    def _span(self, day: date, tz: ZoneInfo) -> tuple[float, float]:
        # A start inside a spring-forward gap (02:30 that day) maps, with fold=0, to the
        # instant the clock shows 03:30: the window begins as soon as the clock has passed it.
        begin = datetime.combine(day, self.start, tz).timestamp()
        if self.duration is not None:
            return begin, begin + self.duration
        end = self.end if self.end is not None else self.start  # no end: a whole day
        end_day = day if end > self.start else day + timedelta(days=1)
        return begin, datetime.combine(end_day, end, tz).timestamp()

    def silences(self, now: float) -> list[tuple[str, str, float, float]]:
        """(device, code, starts_at, ends_at) of the silences this window wants stored at
        `now`: those running now or starting within MAINTENANCE_AHEAD_S."""
        return [
            (device, code, begin, finish)
            for begin, finish in self.occurrences(now, now + MAINTENANCE_AHEAD_S)
            for device in self.devices
            for code in self.codes
        ]


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


def when(ts: float | None, zone: str = "UTC", lang: str = "en") -> str:
    """A time for people: UTC, and local time where the gateway's zone differs (as `lang`
    writes dates: agent.i18n)."""
    if ts is None:
        return "-"
    if lang == "en":
        utc = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
        local = datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")
    else:
        utc = i18n.datetime_text(lang, ts, UTC)
        local = i18n.datetime_text(lang, ts, ZoneInfo(zone))
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


def notice_scope(notice: dict[str, Any], lang: str = "en") -> str:
    """What the silence covers, in `lang`: "device pump-*, code E04?" (Silence.scope)."""
    device, code = notice.get("device"), notice.get("code")
    if not isinstance(device, str) or not isinstance(code, str):
        return str(notice.get("scope", ""))  # a notice stored without its patterns
    scope = i18n.t(lang, "silence.scope", device=device)
    return scope if code == "*" else scope + i18n.t(lang, "silence.scope_code", code=code)


def notice_subject(notice: dict[str, Any], gateway: str, lang: str = "en") -> str:
    """The subject of a silence notice (start or end), in `lang`."""
    scope = notice_scope(notice, lang)
    if notice.get("event") == "started":
        return i18n.t(
            lang,
            "subject.silence",
            scope=scope,
            gateway=gateway,
            until=when(_num(notice.get("ends_at")), lang=lang),
            author=str(notice.get("author")),
        )
    total = sum(int(r.get("count", 0)) for r in notice.get("summary", []))
    active = len(notice.get("still_active", []))
    return i18n.t(
        lang,
        "subject.silence_ended",
        scope=scope,
        gateway=gateway,
        alerts=i18n.n(lang, "silenced_alert", total),
        active=i18n.n(lang, "still_active", active),
    )


# An item of a notice's still_active list, as planner.py stores it.
_ACTIVE_ITEM = re.compile(r"^(?P<uid>\S+) (?P<code>\S+) \(alert (?P<id>\d+)\)$")


def _label_lines(lang: str, rows: list[tuple[str, str]]) -> list[str]:
    """ "Label:" padded so that the values line up (14 columns in English)."""
    labels = [i18n.t(lang, f"silence.label.{key}") + ":" for key, _ in rows]
    width = max(len(label) for label in labels) + 3
    return [f"{label:<{width}}{value}" for label, (_, value) in zip(labels, rows, strict=True)]


def notice_text(notice: dict[str, Any], gateway: str, zone: str = "UTC", lang: str = "en") -> str:
    """The plain-text body of a silence notice in `lang`: who, why, scope, until when; at its
    end, what happened during it and what is still active."""

    def at(value: object) -> str:
        return when(_num(value), zone, lang)

    def t(key: str, **values: Any) -> str:
        return i18n.t(lang, key, **values)

    scope = notice_scope(notice, lang)
    silence_id = str(notice.get("silence_id"))
    lines: list[str] = []
    started = notice.get("event") == "started"
    if started:
        lines.append(t("silence.started", scope=scope, gateway=gateway))
    else:
        lines.append(t("silence.ended", scope=scope, gateway=gateway))
    rows = [
        ("id", silence_id),
        ("scope", scope),
        ("author", str(notice.get("author"))),
        ("reason", str(notice.get("reason"))),
        ("from", at(notice.get("starts_at"))),
        ("until", at(notice.get("ends_at"))),
    ]
    if not started:
        by = notice.get("ended_by")
        by_text = t("silence.expired") if by in (None, "", "expired") else str(by)
        rows.append(("ended", f"{at(notice.get('ended_at'))} ({by_text})"))
    lines += ["", *_label_lines(lang, rows)]
    if not started:
        summary = notice.get("summary", [])
        lines += ["", t("silence.summary") if summary else t("silence.no_alerts")]
        for row in summary:
            severity, state = str(row["severity"]), str(row["last_state"])
            lines.append(
                "  "
                + t(
                    "silence.row",
                    uid=row["uid"],
                    code=row["code"],
                    severity=_known(lang, f"severity.{severity}", severity),
                    count=i18n.n(lang, "silence_row", int(row["count"])),
                    first=at(row["first_at"]),
                    last=at(row["last_at"]),
                    state=_known(lang, f"silence.state.{state}", state),
                    message=row["message"],
                )
            )
        active = notice.get("still_active", [])
        if active:
            lines += ["", t("silence.still_active")]
            for item in active:
                found = _ACTIVE_ITEM.match(str(item))
                shown = t("silence.active_item", **found.groupdict()) if found else str(item)
                lines.append(f"  {shown}")
    else:
        command = f"faultmail silence expire {silence_id}"
        lines += ["", t("silence.end_early", command=command)]
    lines += ["", "-- ", t("footer.notice", gateway=gateway)]
    return "\n".join(lines) + "\n"


def _known(lang: str, key: str, fallback: str) -> str:
    """The catalogue text for a stored value (a severity, a fault state), or the value."""
    return i18n.t(lang, key) if key in i18n.CATALOGUE["en"] else fallback


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
