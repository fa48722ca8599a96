"""A planning pass and the plan it hands back to be stored.

The outbox decides nothing about mail here: it reads the alerts that have no mail yet, their
threads and the devices' suppressed counts (agent.outbox.backlog), hands them to a decide
function (the planner's), and stores what comes back, all in one write transaction, so two
passes never plan the same alert and a plan is stored whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.models import AlertState, MailKind, Severity
from agent.outbox._db import Database, translated
from agent.outbox._schema import MailState
from agent.outbox.audit import AuditEntry, write_audit
from agent.outbox.backlog import (
    UNPLANNED,
    Backlog,
    MailIds,
    ThreadState,
    next_mail_ids,
    read_backlog,
    read_unplanned,
)


@dataclass(frozen=True, slots=True)
class NewMail:
    """A mail as the planner decided it, with its final id and Message-ID."""

    id: int
    message_id: str
    kind: MailKind
    recipients: tuple[str, ...]
    severity_rank: int
    created_at: float
    alert_ids: tuple[int, ...] = ()
    thread_key: str | None = None
    in_reply_to: str | None = None
    suppressed_before: int = 0
    notice: dict[str, Any] | None = None


@dataclass
class MailPlan:
    """What a planning pass stores: new mails, thread states, suppressed counts reported."""

    mails: list[NewMail] = field(default_factory=list)
    threads: list[ThreadState] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    # Devices caught rotating codes in this pass: their `suspicious` counter goes up by one.
    suspicious: set[str] = field(default_factory=set)


def taken_message_ids(conn: sqlite3.Connection, mails: Sequence[NewMail]) -> frozenset[str]:
    """Which of these mails' Message-IDs the outbox already holds (its unique index)."""
    if not mails:
        return frozenset()
    rows = conn.execute(
        "SELECT message_id FROM mails WHERE message_id IN (SELECT value FROM json_each(?))",
        (json.dumps([m.message_id for m in mails]),),
    )
    return frozenset(str(mid) for (mid,) in rows)


def unique_mails(
    conn: sqlite3.Connection, ids: MailIds, make: Callable[[MailIds], list[NewMail]]
) -> list[NewMail]:
    """The mails `make` plans, asked once more with the Message-IDs the outbox already holds
    as taken if any of them clashed (only a group mode identity can)."""
    mails = make(ids)
    taken = taken_message_ids(conn, mails)
    return make(dataclasses.replace(ids, taken=taken)) if taken else mails


_INSERT_MAIL = (
    "INSERT INTO mails (id, message_id, created_at, recipients, severity_rank, state, "
    "next_attempt_at, kind, thread_key, in_reply_to, notice, suppressed_before) "
    f"VALUES (?, ?, ?, ?, ?, '{MailState.PENDING}', ?, ?, ?, ?, ?, ?)"
)


def insert_mail(conn: sqlite3.Connection, mail: NewMail) -> None:
    """One pending mail row and the alerts it carries, in the caller's transaction."""
    insert_mails(conn, (mail,))


def insert_mails(conn: sqlite3.Connection, mails: Sequence[NewMail]) -> None:
    """Pending mail rows and the alerts they carry, in the caller's transaction.

    Two executemany calls for the whole plan: a pass over a burst stores thousands of mails,
    and each execute is a round trip through the sqlite3 module. An alert is tied to its mail
    by its primary key (one statement text whatever a digest's size, as the statement cache
    wants), not by a variable IN (?, ...) list.
    """
    # The few recipient lists of a pass's thousands of mails, encoded once each.
    to_json: dict[tuple[str, ...], str] = {}
    conn.executemany(_INSERT_MAIL, (_mail_row(mail, to_json) for mail in mails))
    conn.executemany(
        "UPDATE alerts SET mail_id = ? WHERE id = ?",
        ((mail.id, alert_id) for mail in mails for alert_id in mail.alert_ids),
    )


def _mail_row(mail: NewMail, to_json: dict[tuple[str, ...], str]) -> tuple[Any, ...]:
    to = to_json.get(mail.recipients)
    if to is None:
        to = to_json[mail.recipients] = json.dumps(list(mail.recipients))
    return (
        mail.id,
        mail.message_id,
        mail.created_at,
        to,
        mail.severity_rank,
        mail.created_at,
        mail.kind.value,
        mail.thread_key,
        mail.in_reply_to,
        json.dumps(mail.notice) if mail.notice is not None else None,
        mail.suppressed_before,
    )


class PlanStore(Database):
    def unplanned_critical(self) -> tuple[int, frozenset[str]]:
        """How many alerts wait for a mail, and the devices with a critical one among them."""
        with translated("reading the alerts that wait for a mail"):
            count, devices = self._conn.execute(
                "SELECT COUNT(*), json_group_array(DISTINCT uid) "
                f"FILTER (WHERE severity = '{Severity.CRITICAL}') {UNPLANNED}"
            ).fetchone()
        return int(count), frozenset(json.loads(devices))

    def unplanned_devices(self) -> list[str]:
        """The devices with alerts that wait for a mail."""
        with translated("reading the alerts that wait for a mail"):
            rows = self._conn.execute(f"SELECT DISTINCT uid {UNPLANNED} ORDER BY uid")
            return [str(row[0]) for row in rows]

    def give_up_planning(self, uid: str, detail: str, now: float) -> list[int]:
        """The device's waiting alerts, which planning cannot turn into mails, become dead
        with `detail` as their reason, audited; returns their ids."""
        with translated("recording alerts that cannot be planned"), self._transaction() as conn:
            ids = [
                int(row[0])
                for row in conn.execute(f"SELECT id {UNPLANNED} AND uid = ? ORDER BY id", (uid,))
            ]
            conn.executemany(
                f"UPDATE alerts SET state = '{AlertState.DEAD}', reason = ? WHERE id = ?",
                ((detail, alert_id) for alert_id in ids),
            )
            write_audit(conn, AuditEntry("planned", "dead", alert_ids=ids, detail=detail), ts=now)
            return ids

    def plan(
        self,
        decide: Callable[[Backlog], MailPlan],
        *,
        now: float | None = None,
        device_window: float = 0.0,
        notice_horizon: float = 0.0,
        devices: frozenset[str] | None = None,
    ) -> int:
        """Read the alerts that have no mail yet, let `decide` plan their mails, store the
        plan; return how many mails it made. Nothing happens when no alert waits.

        With `now` and a `device_window`, the backlog also says what each waiting device
        caused within the window (mails, distinct codes) and which devices were named in a
        code-rotation notice within `notice_horizon` seconds. With `devices`, only those
        devices' alerts are read; the others wait for the next pass."""
        with translated("planning mails"), self._transaction() as conn:
            alerts = read_unplanned(conn, devices)
            if not alerts:
                return 0
            backlog = read_backlog(
                conn,
                alerts,
                next_mail_ids(conn, self.instance, self.group),
                now=now,
                device_window=device_window,
                notice_horizon=notice_horizon,
            )
            plan = decide(backlog)
            taken = taken_message_ids(conn, plan.mails)
            if taken:
                # Decided again (it is pure) with those Message-IDs taken: thread roots and
                # In-Reply-To then follow the Message-IDs that are stored.
                ids = dataclasses.replace(backlog.ids, taken=taken)
                plan = decide(dataclasses.replace(backlog, ids=ids))
            insert_mails(conn, plan.mails)
            conn.executemany(
                "INSERT OR REPLACE INTO threads (key, opened_at, is_open, window_until, "
                "severity_rank, root_message_id) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (
                        t.key,
                        t.opened_at,
                        int(t.is_open),
                        t.window_until,
                        t.severity_rank,
                        t.root_message_id,
                    )
                    for t in plan.threads
                ),
            )
            _reset_suppressed(conn, plan.reported)
            if plan.suspicious:
                conn.execute(
                    "UPDATE devices SET suspicious = suspicious + 1 "
                    "WHERE uid IN (SELECT value FROM json_each(?))",
                    (json.dumps(sorted(plan.suspicious)),),
                )
            return len(plan.mails)


def _reset_suppressed(conn: sqlite3.Connection, uids: set[str]) -> None:
    """The counts a plan reported start again from zero (in the plan's transaction)."""
    if uids:
        conn.execute(
            "UPDATE devices SET unreported_suppressed = 0 WHERE unreported_suppressed > 0 "
            "AND uid IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(uids)),),
        )
