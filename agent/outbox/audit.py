"""The audit table: one row per delivery attempt, operator action and ingest verdict.

Rows are written in the same transaction as the change they record (see write_audit), so the
log and the state it explains can never disagree.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from agent.outbox._db import Database, translated
from agent.sanitize import valid_text


@dataclass(frozen=True, slots=True)
class AuditEntry:
    event: str
    outcome: str
    mail_id: int | None = None
    alert_ids: Sequence[int] = ()
    relay: str | None = None
    smtp_code: int | None = None
    detail: str | None = None
    duration_ms: float | None = None


def valid_entry(entry: AuditEntry) -> AuditEntry:
    """The entry with every text valid (defence in depth: submit already cleans relay text).
    The usual all-ASCII entry is returned as it is, without a copy (two per sent mail)."""
    if (entry.event + entry.outcome + (entry.relay or "") + (entry.detail or "")).isascii():
        return entry
    return dataclasses.replace(
        entry,
        event=valid_text(entry.event),
        outcome=valid_text(entry.outcome),
        relay=None if entry.relay is None else valid_text(entry.relay),
        detail=None if entry.detail is None else valid_text(entry.detail),
    )


def write_audit(conn: sqlite3.Connection, entry: AuditEntry, ts: float) -> None:
    """One audit row, in the caller's transaction."""
    entry = valid_entry(entry)
    conn.execute(
        "INSERT INTO audit (ts, event, mail_id, alert_ids, relay, outcome, smtp_code, "
        "detail, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ts,
            entry.event,
            entry.mail_id,
            json.dumps(list(entry.alert_ids)),
            entry.relay,
            entry.outcome,
            entry.smtp_code,
            entry.detail,
            entry.duration_ms,
        ),
    )


def alert_ids_of(conn: sqlite3.Connection, mail_id: int) -> list[int]:
    """The alerts a mail carries, for its audit rows."""
    rows = conn.execute("SELECT id FROM alerts WHERE mail_id = ? ORDER BY id", (mail_id,))
    return [int(r[0]) for r in rows]


class AuditLog(Database):
    def record(self, audit: AuditEntry, now: float) -> None:
        """An audit row on its own (e.g. a refused attempt that changes no mail)."""
        with translated("writing the audit log"), self._transaction() as conn:
            write_audit(conn, audit, ts=now)
