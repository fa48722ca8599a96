"""Rows for people and monitors: the CLI's listings (alerts, queue, audit log, devices), the
queue figures for metrics and `faultmail status`, and the daemon's heartbeat."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any

from agent.models import AlertState, Gauges
from agent.outbox._db import Database, translated
from agent.outbox._schema import DeviceState, MailState


class Reports(Database):
    @functools.cached_property
    def _db(self) -> Any:
        """sqlite-utils for the CLI's listings; imported on first use, so the daemon, which
        never lists, does not carry it (about 3 MB resident with its dependencies)."""
        import sqlite_utils

        return sqlite_utils.Database(self._conn)

    def alerts(
        self, *, uid: str | None = None, state: AlertState | None = None, since: float = 0.0
    ) -> Iterator[dict[str, Any]]:
        """Every alert with its outcome and the Message-ID of the mail that carried it; a
        rejected one with its payload sample (bytes)."""
        where = ["a.received_at >= :since"]
        params: dict[str, Any] = {"since": since}
        if uid is not None:
            where.append("a.uid = :uid")
            params["uid"] = uid
        if state is not None:
            where.append("a.state = :state")
            params["state"] = state.value
        sql = (
            "SELECT a.id, a.uid, a.seq, a.code, a.severity, a.fault_state, a.state, "
            "m.message_id, a.received_at, a.sent_at, a.reason, a.topic, a.mail_id, "
            "m.attempts, m.last_reply, a.retained, a.payload_sample "
            "FROM alerts a LEFT JOIN mails m ON m.id = a.mail_id "
            f"WHERE {' AND '.join(where)} ORDER BY a.id"
        )
        with translated("reading alerts"):
            yield from self._db.query(sql, params)

    def mails(
        self, states: Sequence[str] = (MailState.PENDING, MailState.DEAD)
    ) -> Iterator[dict[str, Any]]:
        """Mails in the given states, with their alerts' ids, oldest first."""
        marks = ",".join("?" for _ in states)
        sql = (
            "SELECT m.id, m.message_id, m.state, m.created_at, m.attempts, m.next_attempt_at, "
            "m.last_reply, m.recipients, m.delivered_to, m.refused_to, "
            "(SELECT json_group_array(a.id) FROM alerts a WHERE a.mail_id = m.id) AS alert_ids "
            f"FROM mails m WHERE m.state IN ({marks}) ORDER BY m.created_at, m.id"
        )
        with translated("reading the queue"):
            for row in self._db.query(sql, tuple(str(s) for s in states)):
                for key in ("recipients", "delivered_to", "refused_to", "alert_ids"):
                    row[key] = json.loads(row[key])
                yield row

    def audit_log(self, *, since: float = 0.0) -> Iterator[dict[str, Any]]:
        with translated("reading the audit log"):
            for row in self._db.query(
                "SELECT * FROM audit WHERE ts >= :since ORDER BY id", {"since": since}
            ):
                row["alert_ids"] = json.loads(row["alert_ids"] or "[]")
                yield row

    def devices(self) -> Iterator[dict[str, Any]]:
        with translated("reading devices"):
            yield from self._db.query("SELECT * FROM devices ORDER BY uid")

    def counts(self) -> dict[str, int]:
        """Alerts per state: the one-line health figure for logs and status."""
        with translated("counting alerts"):
            rows = self._conn.execute("SELECT state, COUNT(*) FROM alerts GROUP BY state")
            return {str(state): int(n) for state, n in rows}

    def health(
        self, now: float, pid: int, stages: dict[str, dict[str, object]] | None = None
    ) -> Gauges:
        """Record the daemon's heartbeat and what each stage is doing (for `faultmail status`),
        and return queue figures."""
        beat = {"ts": now, "pid": pid, "stages": stages or {}}
        with translated("writing the heartbeat"), self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('heartbeat', ?)",
                (json.dumps(beat),),
            )
        return self.gauges(now)

    def gauges(self, now: float) -> Gauges:
        """Queue figures for metrics, STATUS= and `faultmail status` (read-only)."""
        with translated("reading queue figures"):
            conn = self._conn
            pending, oldest = conn.execute(
                "SELECT COUNT(*), MIN(received_at) FROM alerts "
                f"WHERE state = '{AlertState.PENDING}'"
            ).fetchone()
            mails = dict(
                conn.execute(
                    "SELECT state, COUNT(*) FROM mails "
                    f"WHERE state IN ('{MailState.PENDING}', '{MailState.DEAD}') GROUP BY state"
                ).fetchall()
            )
            blocked = conn.execute(
                f"SELECT COUNT(*) FROM devices WHERE state = '{DeviceState.BLOCKED}'"
            ).fetchone()[0]
            last = conn.execute("SELECT MAX(sent_at) FROM mails").fetchone()[0]
        return Gauges(
            pending_alerts=int(pending),
            pending_mails=int(mails.get(MailState.PENDING, 0)),
            dead_mails=int(mails.get(MailState.DEAD, 0)),
            oldest_pending_age_s=max(0.0, now - oldest) if oldest is not None else 0.0,
            blocked_devices=int(blocked),
            last_sent_at=last,
        )

    def heartbeat(self) -> dict[str, Any] | None:
        with translated("reading the heartbeat"):
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'heartbeat'").fetchone()
            return json.loads(row[0]) if row else None
