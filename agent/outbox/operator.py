"""What a technician does to the outbox from the CLI: re-queue or drop mails, block or
unblock a device. Each action is one transaction with an audit row naming who did it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from agent.models import AlertState
from agent.outbox._db import Database, translated
from agent.outbox._schema import DeviceState, MailState
from agent.outbox.audit import AuditEntry, alert_ids_of, write_audit


class OperatorActions(Database):
    def dead_mail_ids(self) -> list[int]:
        with translated("reading the queue"):
            rows = self._conn.execute(
                f"SELECT id FROM mails WHERE state = '{MailState.DEAD}' ORDER BY id"
            )
            return [int(r["id"]) for r in rows]

    def requeue(self, mail_ids: Sequence[int], now: float, actor: str) -> list[int]:
        """Put these dead (or pending) mails back in the queue, due now."""
        with translated("re-queueing mails"), self._transaction() as conn:
            rows = conn.execute(
                f"SELECT id FROM mails WHERE state IN ('{MailState.DEAD}', "
                f"'{MailState.PENDING}') AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(mail_ids)),),
            ).fetchall()
            ids = [int(r["id"]) for r in rows]
            for mail_id in ids:
                conn.execute(
                    f"UPDATE mails SET state = '{MailState.PENDING}', next_attempt_at = ? "
                    "WHERE id = ?",
                    (now, mail_id),
                )
                alert_ids = alert_ids_of(conn, mail_id)
                conn.execute(
                    f"UPDATE alerts SET state = '{AlertState.PENDING}', reason = NULL "
                    f"WHERE mail_id = ? AND state = '{AlertState.DEAD}'",
                    (mail_id,),
                )
                write_audit(
                    conn,
                    AuditEntry("operator", "requeued", mail_id, alert_ids, detail=f"by {actor}"),
                    ts=now,
                )
            return ids

    def drop(self, mail_id: int, reason: str, now: float, actor: str) -> bool:
        """Give up on a pending mail on purpose: it becomes dead with the operator's reason."""
        with translated("dropping a mail"), self._transaction() as conn:
            row = conn.execute(
                f"SELECT id FROM mails WHERE id = ? AND state = '{MailState.PENDING}'", (mail_id,)
            ).fetchone()
            if row is None:
                return False
            detail = f"dropped by {actor}: {reason}"
            conn.execute(
                f"UPDATE mails SET state = '{MailState.DEAD}', last_reply = ? WHERE id = ?",
                (detail, mail_id),
            )
            conn.execute(
                f"UPDATE alerts SET state = '{AlertState.DEAD}', reason = ? WHERE mail_id = ? "
                f"AND state = '{AlertState.PENDING}'",
                (detail, mail_id),
            )
            write_audit(
                conn,
                AuditEntry(
                    "operator", "dropped", mail_id, alert_ids_of(conn, mail_id), detail=detail
                ),
                ts=now,
            )
            return True

    def set_blocked(self, uid: str, blocked: bool, reason: str, now: float, actor: str) -> bool:
        """Block or unblock a device by hand. False when it already was in that state."""
        state = DeviceState.BLOCKED if blocked else DeviceState.OK
        with translated("changing a device"), self._transaction() as conn:
            conn.execute(
                "INSERT INTO devices (uid, first_seen, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (uid) DO NOTHING",
                (uid, now, now),
            )
            cur = conn.execute(
                "UPDATE devices SET state = ?, blocked_at = ?, blocked_by = ?, block_reason = ? "
                "WHERE uid = ? AND state != ?",
                (
                    state.value,
                    now if blocked else None,
                    actor if blocked else None,
                    reason if blocked else None,
                    uid,
                    state.value,
                ),
            )
            if cur.rowcount == 0:
                return False
            write_audit(
                conn,
                AuditEntry(
                    "operator",
                    state.value if blocked else "unblocked",
                    detail=f"{uid} {'blocked' if blocked else 'unblocked'} by {actor}"
                    + (f": {reason}" if reason else ""),
                ),
                ts=now,
            )
            return True
