"""Keeping the outbox within its bounds: measuring it, evicting pending alerts that may give
way, pruning finished history and giving freed pages back. What gives way in which order is
decided by agent.bounds; this module only does it."""

from __future__ import annotations

import json

from agent.models import AlertState, Severity
from agent.outbox._db import Database, translated
from agent.outbox._schema import MailState, MirrorState
from agent.outbox.audit import AuditEntry, write_audit


class Housekeeping(Database):
    def pending_count(self) -> int:
        with translated("counting pending alerts"):
            row = self._conn.execute(
                f"SELECT COUNT(*) FROM alerts WHERE state = '{AlertState.PENDING}'"
            )
            return int(row.fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes the database holds in live pages (the WAL is checkpointed into these)."""
        with translated("measuring the outbox"):
            page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            return int((pages - free) * page_size)

    def evict_pending(self, count: int, now: float, why: str) -> list[int]:
        """Make room for `count` alerts: the least severe, oldest pending ones give way first.

        Critical alerts never give way: when only they are left, the caller stops
        acknowledging instead (the broker keeps the messages). Every eviction is recorded:
        the alerts become dead with the reason, and one audit row lists them.
        """
        with translated("evicting alerts"), self._transaction() as conn:
            rows = conn.execute(
                f"SELECT id, mail_id FROM alerts WHERE state = '{AlertState.PENDING}' "
                f"AND severity != ? ORDER BY CASE severity WHEN '{Severity.INFO}' THEN 0 "
                f"WHEN '{Severity.WARNING}' THEN 1 ELSE 2 END, received_at, id LIMIT ?",
                (Severity.CRITICAL.value, count),
            ).fetchall()
            ids = [int(r["id"]) for r in rows]
            if not ids:
                return []
            reason = f"evicted: {why}"
            conn.execute(
                f"UPDATE alerts SET state = '{AlertState.DEAD}', reason = ? "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (reason, json.dumps(ids)),
            )
            # A mail whose alerts all gave way has nothing left to say.
            conn.execute(
                f"UPDATE mails SET state = '{MailState.DEAD}', last_reply = ? "
                f"WHERE state = '{MailState.PENDING}' AND NOT EXISTS (SELECT 1 FROM alerts a "
                f"WHERE a.mail_id = mails.id AND a.state IN ('{AlertState.PENDING}', "
                f"'{AlertState.SENT}'))",
                (reason,),
            )
            write_audit(
                conn,
                AuditEntry(
                    "evicted", "evicted", alert_ids=ids, detail=f"{len(ids)} alert(s) {reason}"
                ),
                ts=now,
            )
            return ids

    def prune_history(self, before: float, limit: int = 5000) -> int:
        """Delete finished alerts (and their mails and audit rows) received before `before`.

        Pending alerts are never pruned, nor the alerts of a mail still pending (sent to some
        recipients, retrying others after a 4xx): the retry is composed from them. Nor, in
        group mode, an alert whose held record is not cleared yet: mirror_done must still
        report it, or the record would stay on the broker for a survivor to mail again.
        Returns how many alerts went.
        """
        with translated("pruning history"), self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts a "
                f"WHERE a.state != '{AlertState.PENDING}' AND a.received_at < ? "
                f"AND a.mirror IS NOT {MirrorState.HELD.value} "
                "AND (a.mail_id IS NULL OR NOT EXISTS (SELECT 1 FROM mails m "
                f"WHERE m.id = a.mail_id AND m.state = '{MailState.PENDING}')) "
                "ORDER BY a.received_at LIMIT ?)",
                (before, limit),
            )
            conn.execute(
                f"DELETE FROM mails WHERE state != '{MailState.PENDING}' AND NOT EXISTS "
                "(SELECT 1 FROM alerts a WHERE a.mail_id = mails.id)"
            )
            # Audit rows of mails still in the outbox (pending ones above all) stay with them.
            conn.execute(
                "DELETE FROM audit WHERE ts < ? AND (mail_id IS NULL "
                "OR NOT EXISTS (SELECT 1 FROM mails m WHERE m.id = audit.mail_id))",
                (before,),
            )
            deleted = cur.rowcount
        if deleted:
            with translated("returning free pages"):
                self._conn.execute("PRAGMA incremental_vacuum")
        return deleted

    def oldest_finished(self) -> float | None:
        with translated("reading history"):
            row = self._conn.execute(
                f"SELECT MIN(received_at) FROM alerts WHERE state != '{AlertState.PENDING}'"
            ).fetchone()
            return None if row[0] is None else float(row[0])
