"""The mail queue: claiming due mails and recording each attempt's outcome.

Every state the SQL writes or tests is spelt with MailState / AlertState (one spelling of each,
see _schema.MailState for the transitions). An outcome and its audit row are one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from agent.models import Alert, AlertState, FaultState, Mail, MailKind, Severity
from agent.outbox._db import Database, translated
from agent.outbox._schema import MailState, thread_device_sql
from agent.outbox.audit import AuditEntry, valid_entry, write_audit

_PENDING, _SENT, _DEAD = MailState.PENDING, MailState.SENT, MailState.DEAD

# The due mails in claim order (see MailQueue.claim_due). A mail's device: the UID of its
# first alert, or the one its notice is about (a digest across devices counts for its first).
# A mail in a thread carries that thread's alerts only, so its thread key names the device
# without looking up an alert per due mail (a third of the claim in a backlog of thousands).
# Every due mail is numbered on each claim, so the numbering reads and sorts only the narrow
# columns it needs and the chosen few are joined back to their rows: sorting whole rows twice
# (with the device looked up twice per row) cost twice the time in a backlog of thousands.
_CLAIM = (
    "WITH due AS (SELECT m.id, m.severity_rank, m.created_at, CASE WHEN m.thread_key IS NULL "
    "THEN COALESCE((SELECT a.uid FROM alerts a WHERE a.mail_id = m.id ORDER BY a.id LIMIT 1), "
    f"json_extract(m.notice, '$.uid'), '') ELSE {thread_device_sql('m.thread_key')} END "
    "AS device FROM mails m "
    f"WHERE m.state = '{_PENDING}' AND m.next_attempt_at <= ? {{critical}}), "
    "turns AS (SELECT id, severity_rank, created_at, ROW_NUMBER() OVER (PARTITION BY device "
    "ORDER BY severity_rank, created_at, id) AS turn FROM due), "
    f"chosen AS (SELECT id, severity_rank > {Severity.CRITICAL.rank} AS later, turn, "
    "severity_rank, created_at FROM turns "
    "ORDER BY later, turn, severity_rank, created_at, id LIMIT ?) "
    "SELECT m.* FROM chosen JOIN mails m ON m.id = chosen.id "
    "ORDER BY chosen.later, chosen.turn, chosen.severity_rank, chosen.created_at, chosen.id"
)
_FAIR_CLAIM = _CLAIM.format(critical="")
# The same claim among the critical mails alone. Critical mails come first in a device's own
# order too, so each keeps the turn it has among all: the result is the full claim's first
# rows. It reads the critical mails through mails_due instead of numbering the whole backlog
# (109 ms for 40,000 due mails): what a critical alert waits for in a storm.
_CRITICAL_CLAIM = _CLAIM.format(critical=f"AND m.severity_rank <= {Severity.CRITICAL.rank}")


class MailQueue(Database):
    def claim_due(self, now: float, limit: int, *, critical_only: bool = False) -> list[Mail]:
        """Pending mails whose time has come: critical first, then round-robin across devices.

        A device's due mails are numbered in its own order (most severe, then oldest); the
        queue takes every device's first, then every device's second, and so on, critical
        mails before all others. Under delivery.max_mails_per_minute one device with a
        hundred due mails so takes one slot in each round, not every slot.

        critical_only: the critical mails of that claim and no others.
        """
        with translated("reading the queue"):
            claim = _CRITICAL_CLAIM if critical_only else _FAIR_CLAIM
            mails = self._conn.execute(claim, (now, limit)).fetchall()
            # Three queries per claim, not two more per mail.
            alerts: dict[int, list[Alert]] = {}
            for a in self._conn.execute(
                "SELECT * FROM alerts WHERE mail_id IN (SELECT value FROM json_each(?)) "
                "ORDER BY id",
                (json.dumps([row["id"] for row in mails]),),
            ):
                alerts.setdefault(a["mail_id"], []).append(_alert(a))
            keys = [row["thread_key"] for row in mails if row["thread_key"]]
            opened: dict[str, float] = dict(
                self._conn.execute(
                    "SELECT key, opened_at FROM threads "
                    "WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(keys),),
                ).fetchall()
            )
            return [
                Mail(
                    id=row["id"],
                    message_id=row["message_id"],
                    created_at=row["created_at"],
                    recipients=tuple(json.loads(row["recipients"])),
                    attempts=row["attempts"],
                    alerts=tuple(alerts.get(row["id"], ())),
                    kind=MailKind(row["kind"]),
                    thread_root=row["in_reply_to"],
                    opened_at=opened.get(row["thread_key"]),
                    suppressed_before=row["suppressed_before"],
                    notice=json.loads(row["notice"]) if row["notice"] else None,
                    severity_rank=row["severity_rank"],
                )
                for row in mails
            ]

    def next_due(self) -> float | None:
        """When the next pending mail is due or a repeat window releases held alerts."""
        with translated("reading the queue"):
            row = self._conn.execute(
                "SELECT MIN(t) FROM (SELECT MIN(next_attempt_at) AS t FROM mails "
                f"WHERE state = '{_PENDING}' UNION ALL SELECT MIN(window_until) FROM threads t "
                "WHERE is_open AND window_until IS NOT NULL AND EXISTS (SELECT 1 FROM alerts a "
                f"WHERE a.state = '{AlertState.PENDING}' AND a.mail_id IS NULL "
                "AND thread_key(a.uid, a.code) = t.key))"
            ).fetchone()
            return None if row[0] is None else float(row[0])

    def clamp_due(self, now: float, retry_max: float, repeat_window: float) -> int:
        """After a wall-clock step backwards: bring due times that lie further ahead than their
        longest possible delay (retry_max for a mail, repeat_window for a thread) back to that
        delay from `now`, so a 1 h step back does not hold mail for 1 h. Returns rows changed.

        Read first, write only when needed: this runs on every pass of the delivery loop.
        """
        mail_limit, window_limit = now + retry_max, now + repeat_window
        with translated("reading the queue"):
            found = self._conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM mails WHERE state = '{_PENDING}' "
                "AND next_attempt_at > ?) OR EXISTS (SELECT 1 FROM threads "
                "WHERE window_until > ?)",
                (mail_limit, window_limit),
            ).fetchone()[0]
        if not found:
            return 0
        with translated("rescheduling after a clock step"), self._transaction() as conn:
            mails = conn.execute(
                f"UPDATE mails SET next_attempt_at = ? WHERE state = '{_PENDING}' "
                "AND next_attempt_at > ?",
                (mail_limit, mail_limit),
            ).rowcount
            threads = conn.execute(
                "UPDATE threads SET window_until = ? WHERE window_until > ?",
                (window_limit, window_limit),
            ).rowcount
            return int(mails) + int(threads)

    def expedite(self, now: float) -> int:
        """Make every pending mail due now (the relay is back: no need to wait out backoffs)."""
        with translated("expediting the queue"), self._transaction() as conn:
            cur = conn.execute(
                f"UPDATE mails SET next_attempt_at = ? WHERE state = '{_PENDING}' "
                "AND next_attempt_at > ?",
                (now, now),
            )
            return cur.rowcount

    def internal_errors(self, mail_id: int) -> int:
        """Internal errors recorded for this mail since an operator last re-queued it."""
        with translated("reading the audit log"):
            row = self._conn.execute(
                "SELECT COUNT(*) FROM audit WHERE mail_id = ? AND outcome = 'retry:internal' "
                "AND id > (SELECT COALESCE(MAX(id), 0) FROM audit WHERE mail_id = ? "
                "AND event = 'operator' AND outcome = 'requeued')",
                (mail_id, mail_id),
            ).fetchone()
            return int(row[0])

    def mark_sent(
        self,
        mail: Mail,
        now: float,
        audit: AuditEntry,
        *,
        accepted: Sequence[str] = (),
        refused: dict[str, str] | None = None,
        retry_recipients: Sequence[str] = (),
        retry_at: float = 0.0,
    ) -> None:
        """The relay took the mail for `accepted`. Recipients refused with 4xx stay queued.

        The alerts count as sent once any recipient has the mail; the mail row goes on
        retrying `retry_recipients` with the same Message-ID.
        """
        audit = valid_entry(audit)
        with translated("recording a sent mail"), self._transaction() as conn:
            row = conn.execute(
                "SELECT delivered_to, refused_to FROM mails WHERE id = ?", (mail.id,)
            ).fetchone()
            delivered = json.loads(row["delivered_to"]) + list(accepted or mail.recipients)
            refused_all = json.loads(row["refused_to"]) | dict(refused or {})
            conn.execute(
                "UPDATE mails SET state = ?, sent_at = ?, attempts = attempts + 1, "
                "last_reply = ?, delivered_to = ?, refused_to = ?, recipients = ?, "
                "next_attempt_at = ? WHERE id = ?",
                (
                    (_PENDING if retry_recipients else _SENT).value,
                    now,
                    audit.detail,
                    json.dumps(delivered),
                    json.dumps(refused_all),
                    json.dumps(list(retry_recipients) or list(mail.recipients)),
                    retry_at if retry_recipients else now,
                    mail.id,
                ),
            )
            conn.execute(
                f"UPDATE alerts SET state = '{AlertState.SENT}', sent_at = COALESCE(sent_at, ?) "
                f"WHERE mail_id = ? AND state IN ('{AlertState.PENDING}', '{AlertState.SENT}')",
                (now, mail.id),
            )
            write_audit(conn, audit, ts=now)

    def mark_retry(self, mail: Mail, now: float, retry_at: float, audit: AuditEntry) -> None:
        audit = valid_entry(audit)
        with translated("recording a retry"), self._transaction() as conn:
            conn.execute(
                "UPDATE mails SET attempts = attempts + 1, next_attempt_at = ?, last_reply = ? "
                "WHERE id = ?",
                (retry_at, audit.detail, mail.id),
            )
            write_audit(conn, audit, ts=now)

    def mark_dead(self, mail: Mail, now: float, audit: AuditEntry) -> None:
        audit = valid_entry(audit)
        with translated("recording a dead mail"), self._transaction() as conn:
            conn.execute(
                f"UPDATE mails SET state = '{_DEAD}', attempts = attempts + 1, last_reply = ? "
                "WHERE id = ?",
                (audit.detail, mail.id),
            )
            # Alerts that already reached a recipient stay sent.
            conn.execute(
                f"UPDATE alerts SET state = '{AlertState.DEAD}', reason = ? WHERE mail_id = ? "
                f"AND state = '{AlertState.PENDING}'",
                (audit.detail, mail.id),
            )
            write_audit(conn, audit, ts=now)


def _alert(row: sqlite3.Row) -> Alert:
    return Alert(
        id=row["id"],
        topic=row["topic"],
        uid=row["uid"],
        seq=row["seq"],
        code=row["code"],
        severity=Severity(row["severity"]),
        fault_state=FaultState(row["fault_state"]),
        message=row["message"],
        details=json.loads(row["details"] or "{}"),
        device_ts=row["device_ts"],
        received_at=row["received_at"],
    )
