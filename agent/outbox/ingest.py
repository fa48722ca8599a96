"""Storing what intake decided, one batch per transaction (group commit): alerts (and every
suppression and rejection), device counters, devices the flood guard blocked with the notices
the planner made of them, and the poison list of messages present when intake died.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.identity import decision_identity
from agent.models import PAYLOAD_SAMPLE_BYTES, AlertState, BlockEvent, Decision, DeviceDelta
from agent.outbox._db import Database, translated
from agent.outbox._schema import DeviceState, MirrorState
from agent.outbox.audit import AuditEntry, write_audit
from agent.outbox.backlog import MailIds, next_mail_ids
from agent.outbox.plans import NewMail, insert_mail, unique_mails
from agent.outbox.silences import silences_for
from agent.sanitize import valid_text
from agent.silences import Silence, find_silence

# Rejected payloads keep this many bytes for forensics; the rest is not worth the disk.
REJECTED_SAMPLE_BYTES = PAYLOAD_SAMPLE_BYTES


class PlannedBlock(Protocol):
    """A device the flood guard blocked, and the notices the planner made of it
    (agent.planner.BlockNotice)."""

    @property
    def event(self) -> BlockEvent: ...

    def notice_mails(self, ids: MailIds) -> list[NewMail]: ...


@dataclass(frozen=True, slots=True)
class IngestResult:
    stored: int
    duplicates: int


def dedupe_key(decision: Decision) -> str | None:
    # A retransmission (a redelivery after a crash, or a device repeating itself) carries the
    # same seq and the same bytes. MQTT packet ids are reused, so they cannot serve here.
    fault = decision.fault
    if fault is None or fault.seq is None:
        return None
    digest = hashlib.sha256(decision.raw.payload).hexdigest()[:32]
    return f"{fault.uid}\x1f{fault.seq}\x1f{digest}"


def content_key(decision: Decision) -> str:
    """What a message's topic and payload hash to (and, for an oversized payload kept only as
    a sample, its size): the same message replayed by the broker has the same key."""
    raw = decision.raw
    digest = hashlib.sha256(raw.topic.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(raw.payload)
    if raw.size is not None and raw.size != len(raw.payload):
        digest.update(f"\x00{raw.size}".encode())
    return digest.hexdigest()[:32]


def _replayed(conn: sqlite3.Connection, decision: Decision, key: str) -> bool:
    """A retained message whose content the outbox already holds: the broker replayed it to
    a new SUBSCRIBE (each reconnect under MQTT 3.1.1, or a session that expired), it is not a
    new alert. The horizon is the history kept (outbox.keep_days). A message that arrives live
    (retain flag clear) is always new: a device may repeat itself."""
    if not decision.raw.retain:
        return False
    row = conn.execute("SELECT 1 FROM alerts WHERE content_key = ? LIMIT 1", (key,)).fetchone()
    return row is not None


class IngestStore(Database):
    def ingest(
        self,
        decisions: Sequence[Decision],
        devices: Sequence[DeviceDelta] = (),
        blocks: Sequence[PlannedBlock] = (),
    ) -> IngestResult:
        """Store a batch in one transaction (group commit): alerts, device counters, blocks."""
        stored = duplicates = 0
        with translated("storing alerts"), self._transaction() as conn:
            silences = (
                silences_for(conn, min(d.raw.received_at for d in decisions)) if decisions else []
            )
            for decision in decisions:
                silence_id = _silenced_by(silences, decision)
                alert_id = _insert_alert(conn, decision, silence_id, self.group)
                if alert_id is None:
                    duplicates += 1
                    continue
                stored += 1
                if silence_id is not None:
                    write_audit(
                        conn,
                        AuditEntry(
                            "silenced",
                            AlertState.SILENCED.value,
                            alert_ids=(alert_id,),
                            detail=f"silence {silence_id}",
                        ),
                        ts=decision.raw.received_at,
                    )
                elif decision.state is not AlertState.PENDING:
                    write_audit(
                        conn,
                        AuditEntry(
                            event=decision.state.value,
                            outcome=decision.state.value,
                            alert_ids=(alert_id,),
                            detail=decision.reason,
                        ),
                        ts=decision.raw.received_at,
                    )
            for delta in devices:
                _count(conn, delta)
            for block in blocks:
                _block(conn, block.event)
                # The notices are stored with the block: a crash cannot leave one without
                # the other.
                ids = next_mail_ids(conn, self.instance, self.group)
                for mail in unique_mails(conn, ids, block.notice_mails):
                    insert_mail(conn, mail)
        return IngestResult(stored=stored, duplicates=duplicates)

    def blocked_uids(self) -> set[str]:
        with translated("reading blocked devices"):
            rows = self._conn.execute(
                f"SELECT uid FROM devices WHERE state = '{DeviceState.BLOCKED}'"
            )
            return {str(r[0]) for r in rows}

    # ---- poison messages -------------------------------------------------------------------

    def has_poison(self) -> bool:
        """Whether any message was ever recorded as present at an intake death."""
        with translated("reading the poison list"):
            return bool(self._conn.execute("SELECT EXISTS (SELECT 1 FROM poison)").fetchone()[0])

    def poison_deaths(self, fingerprints: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Deaths and last error of those fingerprints that were present at an intake death."""
        with translated("reading the poison list"):
            rows = self._conn.execute(
                "SELECT fingerprint, deaths, error FROM poison "
                "WHERE fingerprint IN (SELECT value FROM json_each(?))",
                (json.dumps(list(fingerprints)),),
            )
            return {str(fp): (int(deaths), str(error)) for fp, deaths, error in rows}

    def record_poison(self, messages: Sequence[tuple[str, str]], error: str, now: float) -> None:
        """Count one intake death against each (fingerprint, topic), in its own transaction."""
        with translated("recording poison messages"), self._transaction() as conn:
            conn.executemany(
                "INSERT INTO poison (fingerprint, deaths, first_at, last_at, topic, error) "
                "VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET "
                "deaths = deaths + 1, last_at = excluded.last_at, error = excluded.error",
                [(fp, now, now, valid_text(topic), valid_text(error)) for fp, topic in messages],
            )


def _silenced_by(silences: Sequence[Silence], decision: Decision) -> int | None:
    """The silence that covers a pending alert, if any: it is stored as `silenced` instead."""
    fault = decision.fault
    if not silences or fault is None or decision.state is not AlertState.PENDING:
        return None
    return find_silence(silences, fault.uid, fault.code, decision.raw.received_at)


def _insert_alert(
    conn: sqlite3.Connection,
    decision: Decision,
    silence_id: int | None = None,
    group: str | None = None,
) -> int | None:
    """The new alert's id, or None for a duplicate (a retransmission or a retained replay).

    In group mode an alert intake accepted (pending) is stored as mirrored: intake published
    its held record before the ack, so mirror_done must report it once it is no longer pending
    for the record to be cleared. One a silence covers is mirrored too (intake could not know
    of the silence), and so reported at once.
    """
    raw, fault = decision.raw, decision.fault
    key = content_key(decision)
    if _replayed(conn, decision, key):
        return None
    values: dict[str, Any] = {
        "received_at": raw.received_at,
        # The one text parse does not return: ingest decodes it with "replace", this keeps a
        # topic from anywhere else storable too.
        "topic": valid_text(raw.topic),
        "uid": decision.uid,
        "state": decision.state.value,
        "reason": decision.reason,
        "recipients": json.dumps(list(decision.recipients)),
        "dedupe_key": dedupe_key(decision),
        "retained": int(raw.retain),
        "content_key": key,
        "identity": decision_identity(decision, group),
    }
    if group is not None and decision.state is AlertState.PENDING:
        values["mirror"] = MirrorState.HELD.value
    if silence_id is not None:
        values |= {
            "state": AlertState.SILENCED.value,
            "reason": f"silence {silence_id}",
            "silence_id": silence_id,
        }
    if fault is not None:
        values |= {
            "seq": fault.seq,
            "code": fault.code,
            "severity": fault.severity.value,
            "fault_state": fault.state.value,
            "message": fault.message,
            "details": json.dumps(fault.details, ensure_ascii=False),
            "device_ts": fault.device_ts.timestamp() if fault.device_ts else None,
        }
    else:
        values["payload_sample"] = raw.payload[:REJECTED_SAMPLE_BYTES]
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    cur = conn.execute(
        f"INSERT OR IGNORE INTO alerts ({columns}) VALUES ({marks})", tuple(values.values())
    )
    return cur.lastrowid if cur.rowcount == 1 else None


def _count(conn: sqlite3.Connection, d: DeviceDelta) -> None:
    conn.execute(
        "INSERT INTO devices (uid, first_seen, last_seen, last_topic, received, suppressed, "
        "dropped, rejected, suspicious, unreported_suppressed) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET "
        "last_seen = excluded.last_seen, last_topic = excluded.last_topic, "
        "received = received + excluded.received, "
        "suppressed = suppressed + excluded.suppressed, "
        "dropped = dropped + excluded.dropped, rejected = rejected + excluded.rejected, "
        "suspicious = suspicious + excluded.suspicious, "
        "unreported_suppressed = unreported_suppressed + excluded.unreported_suppressed",
        (
            d.uid,
            d.last_seen,
            d.last_seen,
            d.last_topic,
            d.received,
            d.suppressed,
            d.dropped,
            d.rejected,
            d.suspicious,
            d.suppressed,
        ),
    )
    if d.suppressed:
        # One audit row per batch and device, with the count: a flood costs no row per message.
        write_audit(
            conn,
            AuditEntry(
                "suppressed",
                "rate_limited",
                detail=f"{d.suppressed} alert(s) from {d.uid} over the per-device rate limit",
            ),
            ts=d.last_seen,
        )


def _block(conn: sqlite3.Connection, event: BlockEvent) -> None:
    conn.execute(
        "INSERT INTO devices (uid, first_seen, last_seen, last_topic) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (uid) DO NOTHING",
        (event.uid, event.started_at, event.blocked_at, event.topic),
    )
    conn.execute(
        f"UPDATE devices SET state = '{DeviceState.BLOCKED}', blocked_at = ?, "
        "blocked_by = 'flood guard', block_reason = ? WHERE uid = ?",
        (event.blocked_at, event.reason, event.uid),
    )
    write_audit(
        conn,
        AuditEntry(
            "blocked",
            "blocked",
            detail=f"{event.uid} blocked automatically: "
            f"{event.reason} ({event.count} messages, {event.rate_per_s}/s)",
        ),
        ts=event.blocked_at,
    )
