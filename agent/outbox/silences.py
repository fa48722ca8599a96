"""Silences in the outbox: creating, listing and ending them (audited), the ones that apply to
an ingest batch, and the pass that turns a silence's start and end into notice mails.

A silence's start and end notices are planned exactly once each (start_noticed, end_noticed),
in the transaction that stores them. At the end, the last alert of every device + code the
silence held that is still active goes back to `pending` (its thread closed), so the planner
mails it as an active alert.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.models import AlertState, FaultState
from agent.outbox._db import Database, translated
from agent.outbox._schema import thread_key
from agent.outbox.audit import AuditEntry, write_audit
from agent.outbox.backlog import MailIds, next_mail_ids
from agent.outbox.plans import NewMail, insert_mail, unique_mails
from agent.silences import Silence, Window


@dataclass(frozen=True, slots=True)
class EndedSilence:
    """A silence that has ended, with the alerts it held and those mailed again as active."""

    silence: Silence
    alerts: list[dict[str, Any]]
    still_active: list[int]


@dataclass
class SilenceEvents:
    """What a silence pass found: silences that began and silences that ended."""

    started: list[Silence] = field(default_factory=list)
    ended: list[EndedSilence] = field(default_factory=list)


def _silence(row: sqlite3.Row) -> Silence:
    return Silence(
        id=int(row["id"]),
        device=str(row["device"]),
        code=str(row["code"]),
        starts_at=float(row["starts_at"]),
        ends_at=float(row["ends_at"]),
        author=str(row["author"]),
        reason=str(row["reason"]),
        ended_at=row["ended_at"],
        ended_by=row["ended_by"],
    )


def silences_for(conn: sqlite3.Connection, since: float) -> list[Silence]:
    """Silences that may cover an alert received at `since` or later, oldest first."""
    rows = conn.execute(
        "SELECT * FROM silences WHERE end_noticed = 0 AND ends_at > ? "
        "AND (ended_at IS NULL OR ended_at > ?) ORDER BY id",
        (since, since),
    )
    return [_silence(r) for r in rows]


class SilenceStore(Database):
    def add_silence(
        self,
        device: str,
        code: str,
        starts_at: float,
        ends_at: float,
        author: str,
        reason: str,
        *,
        source: str = "cli",
    ) -> int:
        """Store a new silence (audited); its start notice goes out with the next pass."""
        with translated("adding a silence"), self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO silences (device, code, starts_at, ends_at, created_at, author, "
                "reason, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (device, code, starts_at, ends_at, starts_at, author, reason, source),
            )
            silence_id = int(cur.lastrowid or 0)
            write_audit(
                conn,
                AuditEntry(
                    "silence",
                    "created",
                    detail=f"silence {silence_id} by {author}: device {device}, code {code}, "
                    f"until {ends_at:.0f}: {reason}",
                ),
                ts=starts_at,
            )
            return silence_id

    def list_silences(self, *, include_ended: bool = True) -> list[dict[str, Any]]:
        """Every silence (or only those not ended), newest first, with how many alerts it held."""
        where = "" if include_ended else "WHERE s.end_noticed = 0 AND s.ended_at IS NULL"
        with translated("reading silences"):
            rows = self._conn.execute(
                "SELECT s.id, s.device, s.code, s.starts_at, s.ends_at, s.author, s.reason, "
                "s.source, s.ended_at, s.ended_by, (SELECT COUNT(*) FROM alerts a "
                f"WHERE a.silence_id = s.id) AS alerts FROM silences s {where} ORDER BY s.id DESC"
            )
            return [dict(r) for r in rows]

    def expire_silence(self, silence_id: int, now: float, actor: str) -> bool:
        """End a silence early (audited). False when there is no such silence still running."""
        with translated("ending a silence"), self._transaction() as conn:
            cur = conn.execute(
                "UPDATE silences SET ended_at = ?, ended_by = ? WHERE id = ? "
                "AND ended_at IS NULL AND ends_at > ?",
                (now, actor, silence_id, now),
            )
            if cur.rowcount != 1:
                return False
            write_audit(
                conn,
                AuditEntry("silence", "ended_early", detail=f"silence {silence_id} by {actor}"),
                ts=now,
            )
            return True

    def sync_maintenance(self, now: float, windows: Iterable[Window]) -> int:
        """Store the silences of maintenance windows running now or starting soon (source
        'maintenance', audited like any); each occurrence once. Return how many were new."""
        wanted = [(w, item) for w in windows for item in w.silences(now)]
        if not wanted:
            return 0
        with translated("reading silences"):
            have = {
                (r[0], r[1], float(r[2]))
                for r in self._conn.execute(
                    "SELECT device, code, starts_at FROM silences WHERE source = 'maintenance' "
                    "AND ends_at > ?",
                    (now,),
                )
            }
        made = 0
        for window, (device, code, starts_at, ends_at) in wanted:
            if (device, code, starts_at) in have:
                continue
            self.add_silence(
                device,
                code,
                starts_at,
                ends_at,
                f"maintenance {window.name}",
                window.reason,
                source="maintenance",
            )
            have.add((device, code, starts_at))
            made += 1
        return made

    def silence_pass(
        self, now: float, decide: Callable[[SilenceEvents, MailIds], list[NewMail]]
    ) -> int:
        """Plan the notices of silences that began or ended by `now`; return the mails made."""
        with translated("planning silence notices"), self._transaction() as conn:
            events = SilenceEvents(
                started=[
                    _silence(r)
                    for r in conn.execute(
                        "SELECT * FROM silences WHERE start_noticed = 0 AND starts_at <= ? "
                        "ORDER BY id",
                        (now,),
                    )
                ]
            )
            for row in conn.execute(
                "SELECT * FROM silences WHERE start_noticed = 1 AND end_noticed = 0 "
                "AND (ended_at IS NOT NULL OR ends_at <= ?) ORDER BY id",
                (now,),
            ).fetchall():
                events.ended.append(_end(conn, _silence(row), now))
            if not events.started and not events.ended:
                return 0
            ids = next_mail_ids(conn, self.instance, self.group)
            mails = unique_mails(conn, ids, lambda chosen: decide(events, chosen))
            for mail in mails:
                insert_mail(conn, mail)
            conn.executemany(
                "UPDATE silences SET start_noticed = 1 WHERE id = ?",
                [(s.id,) for s in events.started],
            )
            conn.executemany(
                "UPDATE silences SET end_noticed = 1 WHERE id = ?",
                [(e.silence.id,) for e in events.ended],
            )
            return len(mails)


def _end(conn: sqlite3.Connection, silence: Silence, now: float) -> EndedSilence:
    """Close one silence: an expiry is audited; active faults it held are pending again."""
    if silence.ended_at is None:
        conn.execute(
            "UPDATE silences SET ended_at = ends_at, ended_by = 'expired' WHERE id = ?",
            (silence.id,),
        )
        write_audit(
            conn,
            AuditEntry("silence", "expired", detail=f"silence {silence.id}"),
            ts=now,
        )
        silence = dataclasses.replace(silence, ended_at=silence.ends_at)
    alerts = [
        dict(r)
        for r in conn.execute(
            "SELECT id, uid, code, severity, fault_state, message, received_at, recipients "
            f"FROM alerts WHERE silence_id = ? AND state = '{AlertState.SILENCED}' ORDER BY id",
            (silence.id,),
        )
    ]
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for alert in alerts:
        last[(alert["uid"], alert["code"])] = alert
    still_active = [a["id"] for a in last.values() if a["fault_state"] == FaultState.ACTIVE]
    for alert_id in still_active:
        alert = next(a for a in alerts if a["id"] == alert_id)
        conn.execute(
            f"UPDATE alerts SET state = '{AlertState.PENDING}', reason = NULL WHERE id = ?",
            (alert_id,),
        )
        # A new ALERT mail in the same conversation, not a follow-up held by a repeat window.
        conn.execute(
            "UPDATE threads SET is_open = 0, window_until = NULL WHERE key = ?",
            (thread_key(alert["uid"], alert["code"]),),
        )
    write_audit(
        conn,
        AuditEntry(
            "silence",
            "ended",
            alert_ids=still_active,
            detail=f"silence {silence.id}: {len(alerts)} alert(s) held, "
            f"{len(still_active)} still active mailed again",
        ),
        ts=now,
    )
    for alert in alerts:
        alert["recipients"] = tuple(json.loads(alert["recipients"] or "[]"))
    return EndedSilence(silence, alerts, still_active)
