"""Acknowledgements in the outbox: a technician says "I have this problem" for one open device +
code thread (`faultmail ack`, or the MQTT ack topic), audited.

An ack stops the thread's repeat follow-ups (agent.grouping) while it holds: the thread is
still open, was opened before the ack and has not escalated above the severity it had when
acknowledged. The planner puts who acknowledged and when into the thread's next mail (its
resolve or escalation); `clear_acks` then deletes the acks that no longer hold, audited.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from agent.outbox._db import Database, translated
from agent.outbox._schema import thread_key
from agent.outbox.audit import AuditEntry, write_audit


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged device + code thread."""

    thread_key: str
    acked_at: float
    acked_by: str
    note: str
    # The thread's severity when acknowledged: a more severe alert (lower rank) ends the ack.
    severity_rank: int

    def as_notice(self) -> dict[str, object]:
        """What a mail says of it (JSON in the mail's notice, key "acknowledged")."""
        return {"by": self.acked_by, "at": self.acked_at, "note": self.note}


@dataclass(frozen=True, slots=True)
class AckResult:
    """What `acknowledge` did: the thread it acknowledged, or why not (`error`)."""

    uid: str = ""
    code: str = ""
    error: str = ""


def _ack(row: sqlite3.Row) -> Ack:
    return Ack(
        thread_key=str(row["thread_key"]),
        acked_at=float(row["acked_at"]),
        acked_by=str(row["acked_by"]),
        note=str(row["note"]),
        severity_rank=int(row["severity_rank"]),
    )


class AckStore(Database):
    def acknowledge(
        self,
        uid: str | None,
        code: str | None,
        by: str,
        note: str,
        now: float,
        *,
        alert_id: int | None = None,
        source: str = "cli",
    ) -> AckResult:
        """Acknowledge the open thread of `uid` + `code` (or of alert `alert_id`), audited.

        Acknowledging again replaces the earlier ack (who, when, note)."""
        with translated("acknowledging"), self._transaction() as conn:
            if alert_id is not None:
                row = conn.execute("SELECT uid, code FROM alerts WHERE id = ?", (alert_id,))
                found = row.fetchone()
                if found is None:
                    return AckResult(error=f"no alert {alert_id}")
                uid, code = str(found["uid"]), str(found["code"])
            if uid is None or code is None:
                return AckResult(error="say which device and code, or an alert id")
            key = thread_key(uid, code)
            thread = conn.execute(
                "SELECT is_open, severity_rank FROM threads WHERE key = ?", (key,)
            ).fetchone()
            if thread is None or not thread["is_open"]:
                return AckResult(uid, code, error=f"no open problem {uid} {code}")
            conn.execute(
                "INSERT OR REPLACE INTO acks (thread_key, acked_at, acked_by, note, "
                "severity_rank) VALUES (?, ?, ?, ?, ?)",
                (key, now, by, note, int(thread["severity_rank"])),
            )
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM alerts WHERE uid = ? AND code = ? ORDER BY id DESC LIMIT 1",
                    (uid, code),
                )
            ]
            write_audit(
                conn,
                AuditEntry(
                    "ack",
                    "acknowledged",
                    alert_ids=ids,
                    detail=f"{uid} {code} by {by} ({source})" + (f": {note}" if note else ""),
                ),
                ts=now,
            )
            return AckResult(uid, code)

    def acks(self) -> dict[str, Ack]:
        """Every stored ack by thread key (whether it still holds is the planner's question)."""
        with translated("reading acknowledgements"):
            return {r["thread_key"]: _ack(r) for r in self._conn.execute("SELECT * FROM acks")}

    def list_acks(self) -> list[dict[str, object]]:
        """Acks for the CLI: device, code, who, when, note, newest first."""
        with translated("reading acknowledgements"):
            rows = self._conn.execute(
                "SELECT substr(thread_key, 1, instr(thread_key, char(31)) - 1) AS device, "
                "substr(thread_key, instr(thread_key, char(31)) + 1) AS code, acked_at, "
                "acked_by, note FROM acks ORDER BY acked_at DESC"
            )
            return [dict(r) for r in rows]

    def clear_acks(self, now: float) -> int:
        """Delete the acks that no longer hold (the thread resolved, reopened or escalated),
        each audited; return how many."""
        with translated("clearing acknowledgements"), self._transaction() as conn:
            stale = conn.execute(
                "SELECT a.thread_key, a.acked_by, t.is_open, t.severity_rank < a.severity_rank "
                "AS escalated FROM acks a LEFT JOIN threads t ON t.key = a.thread_key "
                "WHERE t.key IS NULL OR NOT t.is_open OR t.opened_at > a.acked_at "
                "OR t.severity_rank < a.severity_rank"
            ).fetchall()
            for row in stale:
                conn.execute("DELETE FROM acks WHERE thread_key = ?", (row["thread_key"],))
                why = "escalated" if row["escalated"] else "resolved"
                write_audit(
                    conn,
                    AuditEntry(
                        "ack",
                        "cleared",
                        detail=f"{row['thread_key'].replace(chr(31), ' ')} ({why}; "
                        f"acknowledged by {row['acked_by']})",
                    ),
                    ts=now,
                )
            return len(stale)
