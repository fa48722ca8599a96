"""What a planning pass decides from, read in its write transaction: the alerts that have no
mail yet, their threads, the devices' suppressed counts and, with a device window, what each
waiting device caused within it (mails, distinct codes, code-rotation notices). agent.outbox.plans
hands it to the planner and stores the plan.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.models import AlertState, FaultState, MailKind, Severity
from agent.outbox._schema import thread_key


@dataclass(frozen=True, slots=True)
class UnplannedAlert:
    """A pending alert that no mail carries yet."""

    id: int
    uid: str
    code: str
    severity: Severity
    fault_state: FaultState
    received_at: float
    recipients: tuple[str, ...]
    # agent.identity.alert_identity of the alert; None for one stored before schema 5 (its
    # mails keep single-mode Message-IDs).
    identity: str | None = None

    @property
    def key(self) -> str:
        return thread_key(self.uid, self.code)


@dataclass(frozen=True, slots=True)
class ThreadState:
    """A device + code problem: open or closed, its repeat window, its first mail's ID."""

    key: str
    opened_at: float
    is_open: bool
    window_until: float | None
    severity_rank: int
    root_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class MailIds:
    """What a new mail's identity is made of: ids are handed out in order from `first`.

    With a `group` (group mode) Message-IDs come from what the mail is about
    (agent.identity), except those in `taken`: already in the outbox (a device that repeats
    the same payload without a seq gives alerts one identity), so the planner gives that mail
    a single-mode one instead of breaking the mails table's unique Message-IDs.
    """

    first: int
    instance: str
    group: str | None = None
    taken: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CodeSpread:
    """The distinct fault codes one device sent within the device window (code rotation)."""

    codes: int
    first_at: float
    last_at: float
    messages: int
    topic: str
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Backlog:
    """Everything a planning pass decides from, read in its transaction."""

    alerts: list[UnplannedAlert]
    # The threads of these alerts' device + code keys that exist already.
    threads: dict[str, ThreadState]
    # Alerts the rate limit suppressed since each device's last mail (devices with any).
    suppressed: dict[str, int]
    ids: MailIds
    # Mails created within the device window that carry each waiting device's alerts.
    device_mails: dict[str, int] = field(default_factory=dict)
    # Waiting devices with CODE_EXAMPLES or more distinct codes in the device window...
    code_spread: dict[str, CodeSpread] = field(default_factory=dict)
    # ...and those of them already named in a code-rotation notice within the notice horizon.
    rotation_noticed: frozenset[str] = frozenset()


def next_mail_ids(conn: sqlite3.Connection, instance: str, group: str | None = None) -> MailIds:
    """The ids new mails get, in the caller's (write) transaction: the same max + 1 that
    SQLite gives a row inserted without an id, so a plan can carry its Message-IDs."""
    (top,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM mails").fetchone()
    return MailIds(first=int(top) + 1, instance=instance, group=group)


# Code-rotation examples quoted in a notice; a spread is read only from this many codes up.
CODE_EXAMPLES = 5
# What marks a security notice as one about code rotation (notice JSON "cause").
ROTATION_CAUSE = "code_rotation"


UNPLANNED = f"FROM alerts WHERE state = '{AlertState.PENDING}' AND mail_id IS NULL"
_UNPLANNED_ROWS = (
    f"SELECT id, uid, code, severity, fault_state, received_at, recipients, identity {UNPLANNED}"
)
_SEVERITIES = {s.value: s for s in Severity}
_FAULT_STATES = {s.value: s for s in FaultState}


def _unplanned_alerts(rows: Iterable[tuple[Any, ...]]) -> list[UnplannedAlert]:
    """The rows of _UNPLANNED_ROWS as alerts. The few distinct recipient lists and enum
    values are converted once each, not once per row."""
    recipients: dict[str, tuple[str, ...]] = {}
    alerts = []
    for alert_id, uid, code, severity, fault_state, received_at, to, identity in rows:
        to_tuple = recipients.get(to)
        if to_tuple is None:
            to_tuple = recipients[to] = tuple(json.loads(to))
        alerts.append(
            UnplannedAlert(
                id=alert_id,
                uid=uid,
                code=code,
                severity=_SEVERITIES[severity],
                fault_state=_FAULT_STATES[fault_state],
                received_at=received_at,
                recipients=to_tuple,
                identity=identity,
            )
        )
    return alerts


def read_unplanned(
    conn: sqlite3.Connection, devices: frozenset[str] | None
) -> list[UnplannedAlert]:
    """The alerts without a mail, oldest first; with `devices`, only those devices' alerts."""
    # Plain tuples, not sqlite3.Row: a storm's pass reads thousands of rows.
    cursor = conn.cursor()
    cursor.row_factory = None
    if devices is None:
        cursor.execute(f"{_UNPLANNED_ROWS} ORDER BY id")
    else:
        cursor.execute(
            f"{_UNPLANNED_ROWS} AND uid IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(sorted(devices)),),
        )
    return _unplanned_alerts(cursor)


def read_backlog(
    conn: sqlite3.Connection,
    alerts: list[UnplannedAlert],
    ids: MailIds,
    *,
    now: float | None,
    device_window: float,
    notice_horizon: float,
) -> Backlog:
    """The Backlog of `alerts` (see PlanStore.plan for `now`, `device_window`, `notice_horizon`)."""
    uids = {a.uid for a in alerts}
    backlog = Backlog(
        alerts=alerts,
        threads=_threads(conn, {a.key for a in alerts}),
        suppressed=_suppressed(conn, uids),
        ids=ids,
    )
    if now is None or device_window <= 0:
        return backlog
    spread = _code_spread(conn, uids, now - device_window)
    return dataclasses.replace(
        backlog,
        device_mails=_device_mails(conn, uids, now, device_window),
        code_spread=spread,
        rotation_noticed=_rotation_noticed(conn, set(spread), now - notice_horizon),
    )


def _threads(conn: sqlite3.Connection, keys: set[str]) -> dict[str, ThreadState]:
    found: dict[str, ThreadState] = {}
    for r in conn.execute(
        "SELECT * FROM threads WHERE key IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(keys)),),
    ):
        found[r["key"]] = ThreadState(
            key=r["key"],
            opened_at=r["opened_at"],
            is_open=bool(r["is_open"]),
            window_until=r["window_until"],
            severity_rank=r["severity_rank"],
            root_message_id=r["root_message_id"],
        )
    return found


def _device_mails(
    conn: sqlite3.Connection, uids: set[str], now: float, window: float
) -> dict[str, int]:
    """Mails created within (now - window, now + window] carrying each device's alerts.

    The upper end: after a wall-clock step back, mails stamped further ahead than a window
    no longer count, so a step cannot hold a device's alerts for longer than the window.
    """
    rows = conn.execute(
        "SELECT a.uid, COUNT(DISTINCT m.id) FROM mails m JOIN alerts a ON a.mail_id = m.id "
        "WHERE m.created_at > ? AND m.created_at <= ? "
        "AND a.uid IN (SELECT value FROM json_each(?)) GROUP BY a.uid",
        (now - window, now + window, json.dumps(sorted(uids))),
    )
    return {str(uid): int(count) for uid, count in rows}


def _code_spread(conn: sqlite3.Connection, uids: set[str], since: float) -> dict[str, CodeSpread]:
    """Devices with at least CODE_EXAMPLES distinct codes received since `since` (alerts_uid
    index: only the window's rows are read)."""
    found: dict[str, CodeSpread] = {}
    for r in conn.execute(
        "SELECT uid, COUNT(DISTINCT code) AS codes, MIN(received_at) AS first_at, "
        "MAX(received_at) AS last_at, COUNT(*) AS messages, MAX(topic) AS topic FROM alerts "
        "WHERE uid IN (SELECT value FROM json_each(?)) AND received_at > ? "
        "AND code IS NOT NULL GROUP BY uid HAVING COUNT(DISTINCT code) >= ?",
        (json.dumps(sorted(uids)), since, CODE_EXAMPLES),
    ):
        examples = conn.execute(
            "SELECT DISTINCT code FROM alerts WHERE uid = ? AND received_at > ? "
            "AND code IS NOT NULL ORDER BY id LIMIT ?",
            (r["uid"], since, CODE_EXAMPLES),
        ).fetchall()
        found[str(r["uid"])] = CodeSpread(
            codes=int(r["codes"]),
            first_at=float(r["first_at"]),
            last_at=float(r["last_at"]),
            messages=int(r["messages"]),
            topic=str(r["topic"]),
            examples=tuple(str(code) for (code,) in examples),
        )
    return found


def _rotation_noticed(conn: sqlite3.Connection, uids: set[str], since: float) -> frozenset[str]:
    """Which of `uids` a code-rotation security notice created after `since` named."""
    if not uids:
        return frozenset()
    rows = conn.execute(
        "SELECT DISTINCT json_extract(notice, '$.uid') FROM mails "
        f"WHERE kind = '{MailKind.SECURITY_NOTICE}' AND created_at > ? "
        f"AND json_extract(notice, '$.cause') = '{ROTATION_CAUSE}' "
        "AND json_extract(notice, '$.uid') IN (SELECT value FROM json_each(?))",
        (since, json.dumps(sorted(uids))),
    )
    return frozenset(str(uid) for (uid,) in rows)


def _suppressed(conn: sqlite3.Connection, uids: set[str]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT uid, unreported_suppressed FROM devices WHERE unreported_suppressed > 0 "
        "AND uid IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(uids)),),
    )
    return {str(uid): int(count) for uid, count in rows}
