"""Rows for people and monitors: the CLI's listings (alerts, queue, audit log, devices), the
queue figures for metrics and `faultmail status`, and the daemon's heartbeat."""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from agent.models import AlertState, Gauges
from agent.outbox._db import Database, translated
from agent.outbox._schema import DeviceState, MailState
from agent.outbox.holds import (
    GATE_KEY,
    HOLD_COLUMNS,
    HOLD_JOINS,
    RELAY_UNREACHABLE,
    BudgetRules,
    Gate,
    HoldContext,
    read_context,
    retry_reason,
)


class Reports(Database):
    @functools.cached_property
    def _db(self) -> Any:
        """sqlite-utils for the CLI's listings; imported on first use, so the daemon, which
        never lists, does not carry it (about 3 MB resident with its dependencies)."""
        import sqlite_utils

        return sqlite_utils.Database(self._conn)

    # The gate as this connection last recorded it (record_gate writes only changes).
    _gate_recorded: Gate | None = None

    def alerts(
        self,
        *,
        uid: str | None = None,
        state: AlertState | None = None,
        since: float = 0.0,
        holds: bool = False,
        now: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every alert with its outcome and the Message-ID of the mail that carried it; a
        rejected one with its payload sample (bytes). With `holds`, a pending one says why it
        waits (`reason`) and until when (`due_at`, None when it waits on nothing with a time;
        see agent.outbox.holds), and `due_at` is None for the others."""
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
            "m.attempts, m.last_reply, a.retained, a.payload_sample, "
            f"{HOLD_COLUMNS} FROM alerts a {HOLD_JOINS} "
            f"WHERE {' AND '.join(where)} ORDER BY a.id"
        )
        with translated("reading alerts"):
            ctx = read_context(self._conn, time.time() if now is None else now) if holds else None
            for row in self._db.query(sql, params):
                due = None
                if ctx is not None and row["state"] == AlertState.PENDING:
                    row["reason"], due = ctx.alert_hold(row)
                out = {k: v for k, v in row.items() if not k.startswith("_")}
                yield out | {"due_at": due} if holds else out

    def held(self, now: float) -> Iterator[dict[str, Any]]:
        """Pending alerts not in any mail yet, as `faultmail queue` shows them: one row per
        device, code, reason and due time (95 repeats held by one window are one row)."""
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        with translated("reading held alerts"):
            ctx = read_context(self._conn, now)
            sql = (
                "SELECT a.id, a.uid, a.code, a.severity, a.fault_state, a.received_at, "
                f"a.recipients, a.mail_id, m.attempts, {HOLD_COLUMNS} FROM alerts a "
                f"{HOLD_JOINS} WHERE a.state = '{AlertState.PENDING}' AND a.mail_id IS NULL "
                "ORDER BY a.id"
            )
            for row in self._db.query(sql):
                reason, due = ctx.alert_hold(row)
                key = (row["uid"], row["code"], reason, due, row["recipients"])
                group = groups.get(key)
                if group is None:
                    group = groups[key] = {
                        "id": None,
                        "kind": "held",
                        "state": "held",
                        "uid": row["uid"],
                        "code": row["code"],
                        "created_at": row["received_at"],
                        "attempts": 0,
                        "next_attempt_at": None,
                        "recipients": json.loads(row["recipients"] or "[]"),
                        "alert_ids": [],
                        "reason": reason,
                        "due_at": due,
                        "last_reply": None,
                    }
                group["alert_ids"].append(row["id"])
        yield from groups.values()

    def pending_reasons(self, now: float) -> dict[str, int]:
        """Pending alerts per reason they wait (`faultmail status`), most first."""
        reasons = Counter(
            row["reason"] for row in self.alerts(state=AlertState.PENDING, holds=True, now=now)
        )
        return dict(reasons.most_common())

    def record_gate(
        self,
        now: float,
        pause_left: float,
        cap_wait: float | None,
        probing: bool,
        rules: BudgetRules | None = None,
        budget_wait: float | None = None,
    ) -> None:
        """The delivery loop, idling, records what holds the whole queue back (relay pause,
        per-minute cap, daily recipient budget: `budget_wait` seconds until a slot frees) and
        the device budget, for the listings; writes only a change."""
        reason = RELAY_UNREACHABLE
        if pause_left > 0 and not probing:
            with translated("reading the audit log"):
                last = self._conn.execute(
                    "SELECT outcome, smtp_code FROM audit WHERE event = 'send_attempt' "
                    "AND outcome LIKE 'retry:%' ORDER BY id DESC LIMIT 1"
                ).fetchone()
            reason = retry_reason(*last) if last else reason
        gate = Gate.recorded(now, pause_left, cap_wait, reason, rules, budget_wait)
        if gate == self._gate_recorded:
            return
        with translated("recording the delivery gate"), self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (GATE_KEY, gate.as_json())
            )
        self._gate_recorded = gate

    def mails(
        self,
        states: Sequence[str] = (MailState.PENDING, MailState.DEAD),
        now: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Mails in the given states, with their alerts' ids, oldest first; a pending one says
        why it waits (`reason`) and until when (`due_at`)."""
        marks = ",".join("?" for _ in states)
        sql = (
            "SELECT m.id, m.kind, m.message_id, m.state, m.created_at, m.attempts, "
            "m.next_attempt_at, "
            "m.last_reply, m.recipients, m.delivered_to, m.refused_to, "
            "(SELECT json_group_array(a.id) FROM alerts a WHERE a.mail_id = m.id) AS alert_ids "
            f"FROM mails m WHERE m.state IN ({marks}) ORDER BY m.created_at, m.id"
        )
        with translated("reading the queue"):
            ctx: HoldContext = read_context(self._conn, time.time() if now is None else now)
            for row in self._db.query(sql, tuple(str(s) for s in states)):
                for key in ("recipients", "delivered_to", "refused_to", "alert_ids"):
                    row[key] = json.loads(row[key])
                reason, due = None, None
                if row["state"] == MailState.PENDING:
                    reason, due = ctx.mail_hold(
                        row["id"], row["kind"], row["attempts"], row["next_attempt_at"]
                    )
                yield row | {"reason": reason, "due_at": due}

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
