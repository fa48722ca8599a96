"""The outbox: the only module that speaks SQL.

One SQLite file in WAL mode. Durability choice: `synchronous=FULL`, so a commit is on disk
before we acknowledge the MQTT message; a power cut then costs nothing that the broker was told
we have. (With NORMAL the last commits before a power cut can vanish after their PUBACK left.)
Ingest batches what arrived meanwhile into one transaction, so FULL costs one fsync per batch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import grouping as grouping_mod
from agent.errors import OutboxCorrupt, OutboxError, OutboxUnavailable
from agent.models import (
    Alert,
    AlertState,
    BlockEvent,
    Decision,
    DeviceDelta,
    FaultState,
    Gauges,
    Mail,
    MailKind,
    Severity,
)
from agent.sanitize import valid_text

SCHEMA_VERSION = 2
# Rejected payloads keep this many bytes for forensics; the rest is not worth the disk.
_REJECTED_SAMPLE_BYTES = 512

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE mails (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        recipients TEXT NOT NULL,
        severity_rank INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_reply TEXT,
        sent_at REAL,
        delivered_to TEXT NOT NULL DEFAULT '[]',
        refused_to TEXT NOT NULL DEFAULT '{}',
        kind TEXT NOT NULL DEFAULT 'alert',
        thread_key TEXT,
        in_reply_to TEXT,
        suppressed_before INTEGER NOT NULL DEFAULT 0,
        notice TEXT
    );
    CREATE TABLE devices (
        uid TEXT PRIMARY KEY,
        state TEXT NOT NULL DEFAULT 'ok',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        last_topic TEXT,
        received INTEGER NOT NULL DEFAULT 0,
        suppressed INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        suspicious INTEGER NOT NULL DEFAULT 0,
        unreported_suppressed INTEGER NOT NULL DEFAULT 0,
        blocked_at REAL,
        blocked_by TEXT,
        block_reason TEXT
    );
    CREATE TABLE threads (
        key TEXT PRIMARY KEY,
        opened_at REAL NOT NULL,
        is_open INTEGER NOT NULL,
        window_until REAL,
        severity_rank INTEGER NOT NULL,
        root_message_id TEXT
    );
    CREATE INDEX mails_due ON mails (state, severity_rank, next_attempt_at);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,
        topic TEXT NOT NULL,
        uid TEXT,
        seq INTEGER,
        code TEXT,
        severity TEXT,
        fault_state TEXT,
        message TEXT,
        details TEXT,
        device_ts REAL,
        recipients TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        dedupe_key TEXT UNIQUE,
        payload_sample BLOB,
        mail_id INTEGER REFERENCES mails (id),
        sent_at REAL
    );
    CREATE INDEX alerts_unplanned ON alerts (state, mail_id);
    CREATE INDEX alerts_age ON alerts (state, received_at);
    CREATE INDEX alerts_mail ON alerts (mail_id);
    CREATE INDEX alerts_uid ON alerts (uid, received_at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        mail_id INTEGER,
        alert_ids TEXT,
        relay TEXT,
        outcome TEXT NOT NULL,
        smtp_code INTEGER,
        detail TEXT,
        duration_ms REAL
    );
    CREATE INDEX audit_ts ON audit (ts);
    """,
    # Messages that were being handled when the intake thread died: one that kills it twice is
    # quarantined instead of killing every restart (the broker redelivers what was not acked).
    2: """
    CREATE TABLE poison (
        fingerprint TEXT PRIMARY KEY,
        deaths INTEGER NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        topic TEXT NOT NULL,
        error TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
}


@dataclass(frozen=True, slots=True)
class GroupingRules:
    repeat_window: float = 0.0
    # 10**9: no digests unless asked for.
    digest_threshold: int = 10**9


@dataclass(frozen=True, slots=True)
class BlockNotice:
    """A block to persist, and who hears of it: the security team and operations."""

    event: BlockEvent
    security: tuple[str, ...]
    operations: tuple[str, ...]
    gateway_id: str
    domain: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    stored: int
    duplicates: int


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


# SQLite's primary result codes (sqlite3.Error.sqlite_errorname, minus any extended suffix such
# as SQLITE_IOERR_WRITE) → what the caller can do about them. Mapped by type, never by the text.
_UNAVAILABLE_FIX = "free disk space or check the state dir's permissions"
_CORRUPT_FIX = (
    "The outbox database is damaged; stop faultmail, move the file aside "
    "(mv FILE FILE.damaged), then start faultmail again (a fresh outbox is created; "
    "`faultmail doctor` says the same)"
)
_ERROR_TABLE: dict[str, tuple[type[OutboxError], str]] = {
    "SQLITE_FULL": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_IOERR": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_READONLY": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_CANTOPEN": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_PERM": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_BUSY": (OutboxUnavailable, "another process holds the outbox; retrying"),
    "SQLITE_LOCKED": (OutboxUnavailable, "another process holds the outbox; retrying"),
    "SQLITE_NOMEM": (OutboxUnavailable, "the gateway is out of memory"),
    "SQLITE_CORRUPT": (OutboxCorrupt, _CORRUPT_FIX),
    "SQLITE_NOTADB": (OutboxCorrupt, _CORRUPT_FIX),
}


def outbox_error(action: str, exc: sqlite3.Error) -> OutboxError:
    """The faultmail error for one sqlite3 error, chosen by its result code."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    primary = "_".join(name.split("_")[:2])
    kind, fix = _ERROR_TABLE.get(primary, (OutboxError, ""))
    text = f"{action}: {exc}" + (f" [{name}]" if name else "")
    return kind(f"{text} ({fix})" if fix else text)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn sqlite3 exceptions into ours, once, with what a technician can do about them."""
    try:
        yield
    except sqlite3.Error as exc:
        raise outbox_error(action, exc) from exc


def _dedupe_key(decision: Decision) -> str | None:
    # A retransmission (a redelivery after a crash, or a device repeating itself) carries the
    # same seq and the same bytes. MQTT packet ids are reused, so they cannot serve here.
    fault = decision.fault
    if fault is None or fault.seq is None:
        return None
    digest = hashlib.sha256(decision.raw.payload).hexdigest()[:32]
    return f"{fault.uid}\x1f{fault.seq}\x1f{digest}"


class Outbox:
    """One connection to the outbox database. Use one Outbox per thread."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._readonly = readonly
        with _translated(f"opening {path}"):
            if readonly:
                if not path.exists():
                    raise OutboxError(f"{path} does not exist yet: has the daemon ever run?")
                self._conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5.0
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(
                    path, isolation_level=None, timeout=5.0, check_same_thread=False
                )
            self._conn.row_factory = sqlite3.Row
            self._setup()

    def _setup(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 5000")
        # 1 MiB of page cache per connection instead of 2: the hot pages are few (pending
        # rows, indexes) and the OS caches the rest; a gateway counts every megabyte.
        conn.execute("PRAGMA cache_size = -1024")
        if self._readonly:
            self._check_version(conn.execute("PRAGMA user_version").fetchone()[0])
            return
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise OutboxError(f"{self.path}: could not switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            # Only takes effect before the first table exists: lets housekeeping give freed
            # pages back to the file system (the outbox has a size cap).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"{self.path} has schema version {version}, newer than this faultmail "
                f"({SCHEMA_VERSION}); upgrade faultmail or use the matching version"
            )

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        self._check_version(version)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                if target == 1:
                    self._conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('instance', ?)",
                        (secrets.token_hex(6),),
                    )
                self._conn.execute(f"PRAGMA user_version = {target}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front: no deadlock upgrade from a read.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    @functools.cached_property
    def _db(self) -> Any:
        """sqlite-utils for the CLI's listings; imported on first use, so the daemon, which
        never lists, does not carry it (about 3 MB resident with its dependencies)."""
        import sqlite_utils

        return sqlite_utils.Database(self._conn)

    @functools.cached_property
    def instance(self) -> str:
        """A random id of this database file, part of every Message-ID it creates."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        return str(row[0])

    # ---- ingest ----------------------------------------------------------------------------

    def ingest(
        self,
        decisions: Sequence[Decision],
        devices: Sequence[DeviceDelta] = (),
        blocks: Sequence[BlockNotice] = (),
    ) -> IngestResult:
        """Store a batch in one transaction (group commit): alerts, device counters, blocks."""
        stored = duplicates = 0
        with _translated("storing alerts"), self._transaction() as conn:
            for decision in decisions:
                alert_id = self._insert_alert(conn, decision)
                if alert_id is None:
                    duplicates += 1
                    continue
                stored += 1
                if decision.state is not AlertState.PENDING:
                    self._audit(
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
                self._count(conn, delta)
            for block in blocks:
                self._block(conn, block)
        return IngestResult(stored=stored, duplicates=duplicates)

    @staticmethod
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
            # One audit row per batch and device, with the count: a flood costs no row per
            # message.
            Outbox._audit(
                conn,
                AuditEntry(
                    "suppressed",
                    "rate_limited",
                    detail=f"{d.suppressed} alert(s) from {d.uid} over the per-device rate limit",
                ),
                ts=d.last_seen,
            )

    def _block(self, conn: sqlite3.Connection, notice: BlockNotice) -> None:
        event = notice.event
        conn.execute(
            "INSERT INTO devices (uid, first_seen, last_seen, last_topic) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (uid) DO NOTHING",
            (event.uid, event.started_at, event.blocked_at, event.topic),
        )
        conn.execute(
            "UPDATE devices SET state = 'blocked', blocked_at = ?, blocked_by = 'flood guard', "
            "block_reason = ? WHERE uid = ?",
            (event.blocked_at, event.reason, event.uid),
        )
        self._audit(
            conn,
            AuditEntry(
                "blocked",
                "blocked",
                detail=f"{event.uid} blocked automatically: "
                f"{event.reason} ({event.count} messages, {event.rate_per_s}/s)",
            ),
            ts=event.blocked_at,
        )
        body = {
            "uid": event.uid,
            "topic": event.topic,
            "started_at": event.started_at,
            "blocked_at": event.blocked_at,
            "rate_per_s": event.rate_per_s,
            "count": event.count,
            "samples": list(event.samples),
            "reason": event.reason,
        }
        for kind, recipients in (
            (MailKind.SECURITY_NOTICE, notice.security),
            (MailKind.BLOCK_NOTICE, notice.operations),
        ):
            if recipients:
                self._insert_mail(
                    conn,
                    kind,
                    recipients,
                    Severity.CRITICAL.rank,
                    event.blocked_at,
                    notice=body,
                    gateway_id=notice.gateway_id,
                    domain=notice.domain,
                )

    def _insert_mail(
        self,
        conn: sqlite3.Connection,
        kind: MailKind,
        recipients: Sequence[str],
        severity_rank: int,
        now: float,
        *,
        gateway_id: str,
        domain: str,
        thread_key: str | None = None,
        in_reply_to: str | None = None,
        notice: dict[str, Any] | None = None,
        suppressed_before: int = 0,
    ) -> tuple[int, str]:
        """One mail row with its final Message-ID, in the caller's transaction."""
        cur = conn.execute(
            "INSERT INTO mails (message_id, created_at, recipients, severity_rank, state, "
            "next_attempt_at, kind, thread_key, in_reply_to, notice, suppressed_before) "
            "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
            (
                f"<pending-{secrets.token_hex(8)}>",
                now,
                json.dumps(list(recipients)),
                severity_rank,
                now,
                kind.value,
                thread_key,
                in_reply_to,
                json.dumps(notice) if notice is not None else None,
                suppressed_before,
            ),
        )
        mail_id = int(cur.lastrowid or 0)
        message_id = f"<faultmail.{gateway_id}.{self.instance}.{mail_id}@{domain}>"
        conn.execute("UPDATE mails SET message_id = ? WHERE id = ?", (message_id, mail_id))
        return mail_id, message_id

    def _insert_alert(self, conn: sqlite3.Connection, decision: Decision) -> int | None:
        raw, fault = decision.raw, decision.fault
        values: dict[str, Any] = {
            "received_at": raw.received_at,
            # The one text parse does not return: ingest decodes it with "replace", this
            # keeps a topic from anywhere else storable too.
            "topic": valid_text(raw.topic),
            "uid": decision.uid,
            "state": decision.state.value,
            "reason": decision.reason,
            "recipients": json.dumps(list(decision.recipients)),
            "dedupe_key": _dedupe_key(decision),
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
            values["payload_sample"] = raw.payload[:_REJECTED_SAMPLE_BYTES]
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = conn.execute(
            f"INSERT OR IGNORE INTO alerts ({columns}) VALUES ({marks})", tuple(values.values())
        )
        return cur.lastrowid if cur.rowcount == 1 else None

    # ---- poison messages -------------------------------------------------------------------

    def has_poison(self) -> bool:
        """Whether any message was ever recorded as present at an intake death."""
        with _translated("reading the poison list"):
            return bool(self._conn.execute("SELECT EXISTS (SELECT 1 FROM poison)").fetchone()[0])

    def poison_deaths(self, fingerprints: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Deaths and last error of those fingerprints that were present at an intake death."""
        with _translated("reading the poison list"):
            rows = self._conn.execute(
                "SELECT fingerprint, deaths, error FROM poison "
                "WHERE fingerprint IN (SELECT value FROM json_each(?))",
                (json.dumps(list(fingerprints)),),
            )
            return {str(fp): (int(deaths), str(error)) for fp, deaths, error in rows}

    def record_poison(self, messages: Sequence[tuple[str, str]], error: str, now: float) -> None:
        """Count one intake death against each (fingerprint, topic), in its own transaction."""
        with _translated("recording poison messages"), self._transaction() as conn:
            conn.executemany(
                "INSERT INTO poison (fingerprint, deaths, first_at, last_at, topic, error) "
                "VALUES (?, 1, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET "
                "deaths = deaths + 1, last_at = excluded.last_at, error = excluded.error",
                [(fp, now, now, valid_text(topic), valid_text(error)) for fp, topic in messages],
            )

    # ---- dispatch --------------------------------------------------------------------------

    def plan_mails(
        self, now: float, domain: str, gateway_id: str, grouping: GroupingRules | None = None
    ) -> int:
        """Turn alerts that have no mail yet into mails, as grouping decides; return how many.

        Each mail gets its Message-ID (this database's instance id + the mail id) before the
        first attempt, so a retry after a crash carries the same one. A device + code's
        thread remembers the Message-ID of its first mail for In-Reply-To / References.
        """
        with _translated("planning mails"), self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, uid, code, severity, fault_state, received_at, recipients "
                "FROM alerts WHERE state = 'pending' AND mail_id IS NULL ORDER BY id"
            ).fetchall()
            if not rows:
                return 0
            unplanned = [
                grouping_mod.Unplanned(
                    id=r["id"],
                    uid=r["uid"],
                    code=r["code"],
                    severity=Severity(r["severity"]),
                    fault_state=FaultState(r["fault_state"]),
                    received_at=r["received_at"],
                    recipients=tuple(json.loads(r["recipients"])),
                )
                for r in rows
            ]
            threads = self._threads(conn, {u.key for u in unplanned})
            rules = grouping or GroupingRules()
            planned = grouping_mod.plan(
                unplanned,
                threads,
                now,
                repeat_window=rules.repeat_window,
                digest_threshold=rules.digest_threshold,
            )
            roots: dict[str, str] = {}
            uid_of = {u.key: u.uid for u in unplanned}
            suppressed = self._take_suppressed(
                conn, {uid_of[m.thread_key] for m in planned.mails if m.thread_key}
            )
            for mail in planned.mails:
                # Every mail with a thread key has its thread in the plan (digests have none).
                thread = planned.threads.get(mail.thread_key or "")
                root = roots.get(mail.thread_key or "") or (
                    thread.root_message_id if thread else None
                )
                mail_id, message_id = self._insert_mail(
                    conn,
                    mail.kind,
                    mail.recipients,
                    mail.severity_rank,
                    now,
                    gateway_id=gateway_id,
                    domain=domain,
                    thread_key=mail.thread_key,
                    in_reply_to=root,
                    # The first mail of a device in this pass reports its suppressed count.
                    suppressed_before=suppressed.pop(uid_of[mail.thread_key], 0)
                    if mail.thread_key
                    else 0,
                )
                if mail.thread_key and root is None:
                    roots[mail.thread_key] = message_id
                # One statement text whatever the count (json_each): a variable IN (?, ...)
                # list would fill sqlite3's statement cache with one entry per length.
                conn.execute(
                    "UPDATE alerts SET mail_id = ? WHERE id IN (SELECT value FROM json_each(?))",
                    (mail_id, json.dumps(list(mail.alert_ids))),
                )
            for key, thread in planned.threads.items():
                conn.execute(
                    "INSERT OR REPLACE INTO threads (key, opened_at, is_open, window_until, "
                    "severity_rank, root_message_id) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        thread.opened_at,
                        int(thread.is_open),
                        thread.window_until,
                        thread.severity_rank,
                        roots.get(key) or thread.root_message_id,
                    ),
                )
            return len(planned.mails)

    @staticmethod
    def _take_suppressed(conn: sqlite3.Connection, uids: set[str]) -> dict[str, int]:
        """How many alerts of each device the rate limit suppressed since its last mail; the
        counters are reset, in the caller's transaction."""
        wanted = json.dumps(sorted(uids))
        rows = conn.execute(
            "SELECT uid, unreported_suppressed FROM devices WHERE unreported_suppressed > 0 "
            "AND uid IN (SELECT value FROM json_each(?))",
            (wanted,),
        ).fetchall()
        if rows:
            conn.execute(
                "UPDATE devices SET unreported_suppressed = 0 WHERE unreported_suppressed > 0 "
                "AND uid IN (SELECT value FROM json_each(?))",
                (wanted,),
            )
        return {str(uid): int(count) for uid, count in rows}

    @staticmethod
    def _threads(conn: sqlite3.Connection, keys: set[str]) -> dict[str, grouping_mod.Thread]:
        found: dict[str, grouping_mod.Thread] = {}
        wanted = json.dumps(sorted(keys))
        for r in conn.execute(
            "SELECT * FROM threads WHERE key IN (SELECT value FROM json_each(?))", (wanted,)
        ):
            found[r["key"]] = grouping_mod.Thread(
                key=r["key"],
                opened_at=r["opened_at"],
                is_open=bool(r["is_open"]),
                window_until=r["window_until"],
                severity_rank=r["severity_rank"],
                root_message_id=r["root_message_id"],
            )
        return found

    def claim_due(self, now: float, limit: int) -> list[Mail]:
        """Pending mails whose time has come: most severe first, then oldest."""
        with _translated("reading the queue"):
            mails = self._conn.execute(
                "SELECT * FROM mails WHERE state = 'pending' AND next_attempt_at <= ? "
                "ORDER BY severity_rank, created_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
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
            result = []
            for row in mails:
                result.append(
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
                )
            return result

    def clamp_due(self, now: float, retry_max: float, repeat_window: float) -> int:
        """After a wall-clock step backwards: bring due times that lie further ahead than their
        longest possible delay (retry_max for a mail, repeat_window for a thread) back to that
        delay from `now`, so a 1 h step back does not hold mail for 1 h. Returns rows changed.

        Read first, write only when needed: this runs on every pass of the delivery loop.
        """
        mail_limit, window_limit = now + retry_max, now + repeat_window
        with _translated("reading the queue"):
            found = self._conn.execute(
                "SELECT EXISTS (SELECT 1 FROM mails WHERE state = 'pending' "
                "AND next_attempt_at > ?) OR EXISTS (SELECT 1 FROM threads "
                "WHERE window_until > ?)",
                (mail_limit, window_limit),
            ).fetchone()[0]
        if not found:
            return 0
        with _translated("rescheduling after a clock step"), self._transaction() as conn:
            mails = conn.execute(
                "UPDATE mails SET next_attempt_at = ? WHERE state = 'pending' "
                "AND next_attempt_at > ?",
                (mail_limit, mail_limit),
            ).rowcount
            threads = conn.execute(
                "UPDATE threads SET window_until = ? WHERE window_until > ?",
                (window_limit, window_limit),
            ).rowcount
            return int(mails) + int(threads)

    def internal_errors(self, mail_id: int) -> int:
        """Internal errors recorded for this mail since an operator last re-queued it."""
        with _translated("reading the audit log"):
            row = self._conn.execute(
                "SELECT COUNT(*) FROM audit WHERE mail_id = ? AND outcome = 'retry:internal' "
                "AND id > (SELECT COALESCE(MAX(id), 0) FROM audit WHERE mail_id = ? "
                "AND event = 'operator' AND outcome = 'requeued')",
                (mail_id, mail_id),
            ).fetchone()
            return int(row[0])

    def next_due(self) -> float | None:
        """When the next pending mail is due or a repeat window releases held alerts."""
        with _translated("reading the queue"):
            row = self._conn.execute(
                "SELECT MIN(t) FROM (SELECT MIN(next_attempt_at) AS t FROM mails "
                "WHERE state = 'pending' UNION ALL SELECT MIN(window_until) FROM threads t "
                "WHERE is_open AND window_until IS NOT NULL AND EXISTS (SELECT 1 FROM alerts a "
                "WHERE a.state = 'pending' AND a.mail_id IS NULL "
                "AND a.uid || char(31) || a.code = t.key))"
            ).fetchone()
            return None if row[0] is None else float(row[0])

    def expedite(self, now: float) -> int:
        """Make every pending mail due now (the relay is back: no need to wait out backoffs)."""
        with _translated("expediting the queue"), self._transaction() as conn:
            cur = conn.execute(
                "UPDATE mails SET next_attempt_at = ? WHERE state = 'pending' "
                "AND next_attempt_at > ?",
                (now, now),
            )
            return cur.rowcount

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
        audit = _valid_entry(audit)
        with _translated("recording a sent mail"), self._transaction() as conn:
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
                    "pending" if retry_recipients else "sent",
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
                "UPDATE alerts SET state = 'sent', sent_at = COALESCE(sent_at, ?) "
                "WHERE mail_id = ? AND state IN ('pending', 'sent')",
                (now, mail.id),
            )
            self._audit(conn, audit, ts=now)

    def mark_retry(self, mail: Mail, now: float, retry_at: float, audit: AuditEntry) -> None:
        audit = _valid_entry(audit)
        with _translated("recording a retry"), self._transaction() as conn:
            conn.execute(
                "UPDATE mails SET attempts = attempts + 1, next_attempt_at = ?, last_reply = ? "
                "WHERE id = ?",
                (retry_at, audit.detail, mail.id),
            )
            self._audit(conn, audit, ts=now)

    def mark_dead(self, mail: Mail, now: float, audit: AuditEntry) -> None:
        audit = _valid_entry(audit)
        with _translated("recording a dead mail"), self._transaction() as conn:
            conn.execute(
                "UPDATE mails SET state = 'dead', attempts = attempts + 1, last_reply = ? "
                "WHERE id = ?",
                (audit.detail, mail.id),
            )
            # Alerts that already reached a recipient stay sent.
            conn.execute(
                "UPDATE alerts SET state = 'dead', reason = ? WHERE mail_id = ? "
                "AND state = 'pending'",
                (audit.detail, mail.id),
            )
            self._audit(conn, audit, ts=now)

    def record(self, audit: AuditEntry, now: float) -> None:
        """An audit row on its own (e.g. a refused attempt that changes no mail)."""
        with _translated("writing the audit log"), self._transaction() as conn:
            self._audit(conn, audit, ts=now)

    @staticmethod
    def _audit(conn: sqlite3.Connection, entry: AuditEntry, ts: float) -> None:
        entry = _valid_entry(entry)
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

    # ---- operator actions (faultmail queue) ------------------------------------------------

    def dead_mail_ids(self) -> list[int]:
        with _translated("reading the queue"):
            rows = self._conn.execute("SELECT id FROM mails WHERE state = 'dead' ORDER BY id")
            return [int(r["id"]) for r in rows]

    def requeue(self, mail_ids: Sequence[int], now: float, actor: str) -> list[int]:
        """Put these dead (or pending) mails back in the queue, due now."""
        with _translated("re-queueing mails"), self._transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM mails WHERE state IN ('dead', 'pending') "
                "AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(mail_ids)),),
            ).fetchall()
            ids = [int(r["id"]) for r in rows]
            for mail_id in ids:
                conn.execute(
                    "UPDATE mails SET state = 'pending', next_attempt_at = ? WHERE id = ?",
                    (now, mail_id),
                )
                alert_ids = self._alert_ids(conn, mail_id)
                conn.execute(
                    "UPDATE alerts SET state = 'pending', reason = NULL "
                    "WHERE mail_id = ? AND state = 'dead'",
                    (mail_id,),
                )
                self._audit(
                    conn,
                    AuditEntry("operator", "requeued", mail_id, alert_ids, detail=f"by {actor}"),
                    ts=now,
                )
            return ids

    def drop(self, mail_id: int, reason: str, now: float, actor: str) -> bool:
        """Give up on a pending mail on purpose: it becomes dead with the operator's reason."""
        with _translated("dropping a mail"), self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM mails WHERE id = ? AND state = 'pending'", (mail_id,)
            ).fetchone()
            if row is None:
                return False
            detail = f"dropped by {actor}: {reason}"
            conn.execute(
                "UPDATE mails SET state = 'dead', last_reply = ? WHERE id = ?", (detail, mail_id)
            )
            conn.execute(
                "UPDATE alerts SET state = 'dead', reason = ? WHERE mail_id = ? "
                "AND state = 'pending'",
                (detail, mail_id),
            )
            self._audit(
                conn,
                AuditEntry(
                    "operator", "dropped", mail_id, self._alert_ids(conn, mail_id), detail=detail
                ),
                ts=now,
            )
            return True

    @staticmethod
    def _alert_ids(conn: sqlite3.Connection, mail_id: int) -> list[int]:
        rows = conn.execute("SELECT id FROM alerts WHERE mail_id = ? ORDER BY id", (mail_id,))
        return [int(r[0]) for r in rows]

    # ---- devices ---------------------------------------------------------------------------

    def blocked_uids(self) -> set[str]:
        with _translated("reading blocked devices"):
            rows = self._conn.execute("SELECT uid FROM devices WHERE state = 'blocked'")
            return {str(r[0]) for r in rows}

    def devices(self) -> Iterator[dict[str, Any]]:
        with _translated("reading devices"):
            yield from self._db.query("SELECT * FROM devices ORDER BY uid")

    def set_blocked(self, uid: str, blocked: bool, reason: str, now: float, actor: str) -> bool:
        """Block or unblock a device by hand. False when it already was in that state."""
        state = "blocked" if blocked else "ok"
        with _translated("changing a device"), self._transaction() as conn:
            conn.execute(
                "INSERT INTO devices (uid, first_seen, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (uid) DO NOTHING",
                (uid, now, now),
            )
            cur = conn.execute(
                "UPDATE devices SET state = ?, blocked_at = ?, blocked_by = ?, block_reason = ? "
                "WHERE uid = ? AND state != ?",
                (
                    state,
                    now if blocked else None,
                    actor if blocked else None,
                    reason if blocked else None,
                    uid,
                    state,
                ),
            )
            if cur.rowcount == 0:
                return False
            self._audit(
                conn,
                AuditEntry(
                    "operator",
                    state if blocked else "unblocked",
                    detail=f"{uid} {'blocked' if blocked else 'unblocked'} by {actor}"
                    + (f": {reason}" if reason else ""),
                ),
                ts=now,
            )
            return True

    # ---- health ----------------------------------------------------------------------------

    def health(
        self, now: float, pid: int, stages: dict[str, dict[str, object]] | None = None
    ) -> Gauges:
        """Record the daemon's heartbeat and what each stage is doing (for `faultmail status`),
        and return queue figures."""
        beat = {"ts": now, "pid": pid, "stages": stages or {}}
        with _translated("writing the heartbeat"), self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('heartbeat', ?)",
                (json.dumps(beat),),
            )
        return self.gauges(now)

    def gauges(self, now: float) -> Gauges:
        """Queue figures for metrics, STATUS= and `faultmail status` (read-only)."""
        with _translated("reading queue figures"):
            conn = self._conn
            pending, oldest = conn.execute(
                "SELECT COUNT(*), MIN(received_at) FROM alerts WHERE state = 'pending'"
            ).fetchone()
            mails = dict(
                conn.execute(
                    "SELECT state, COUNT(*) FROM mails WHERE state IN ('pending', 'dead') "
                    "GROUP BY state"
                ).fetchall()
            )
            blocked = conn.execute(
                "SELECT COUNT(*) FROM devices WHERE state = 'blocked'"
            ).fetchone()[0]
            last = conn.execute("SELECT MAX(sent_at) FROM mails").fetchone()[0]
        return Gauges(
            pending_alerts=int(pending),
            pending_mails=int(mails.get("pending", 0)),
            dead_mails=int(mails.get("dead", 0)),
            oldest_pending_age_s=max(0.0, now - oldest) if oldest is not None else 0.0,
            blocked_devices=int(blocked),
            last_sent_at=last,
        )

    def heartbeat(self) -> dict[str, Any] | None:
        with _translated("reading the heartbeat"):
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'heartbeat'").fetchone()
            return json.loads(row[0]) if row else None

    # ---- bounds and housekeeping -----------------------------------------------------------

    def pending_count(self) -> int:
        with _translated("counting pending alerts"):
            row = self._conn.execute("SELECT COUNT(*) FROM alerts WHERE state = 'pending'")
            return int(row.fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes the database holds in live pages (the WAL is checkpointed into these)."""
        with _translated("measuring the outbox"):
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
        with _translated("evicting alerts"), self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, mail_id FROM alerts WHERE state = 'pending' AND severity != ? "
                "ORDER BY CASE severity WHEN 'info' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, "
                "received_at, id LIMIT ?",
                (Severity.CRITICAL.value, count),
            ).fetchall()
            ids = [int(r["id"]) for r in rows]
            if not ids:
                return []
            reason = f"evicted: {why}"
            conn.execute(
                "UPDATE alerts SET state = 'dead', reason = ? "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (reason, json.dumps(ids)),
            )
            # A mail whose alerts all gave way has nothing left to say.
            conn.execute(
                "UPDATE mails SET state = 'dead', last_reply = ? WHERE state = 'pending' AND "
                "NOT EXISTS (SELECT 1 FROM alerts a WHERE a.mail_id = mails.id "
                "AND a.state IN ('pending', 'sent'))",
                (reason,),
            )
            self._audit(
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
        recipients, retrying others after a 4xx): the retry is composed from them. Returns how
        many alerts went.
        """
        with _translated("pruning history"), self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts a "
                "WHERE a.state != 'pending' AND a.received_at < ? AND (a.mail_id IS NULL "
                "OR NOT EXISTS (SELECT 1 FROM mails m WHERE m.id = a.mail_id "
                "AND m.state = 'pending')) ORDER BY a.received_at LIMIT ?)",
                (before, limit),
            )
            conn.execute(
                "DELETE FROM mails WHERE state != 'pending' AND NOT EXISTS "
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
            with _translated("returning free pages"):
                self._conn.execute("PRAGMA incremental_vacuum")
        return deleted

    def oldest_finished(self) -> float | None:
        with _translated("reading history"):
            row = self._conn.execute(
                "SELECT MIN(received_at) FROM alerts WHERE state != 'pending'"
            ).fetchone()
            return None if row[0] is None else float(row[0])

    # ---- queries for the CLI ---------------------------------------------------------------

    def alerts(
        self, *, uid: str | None = None, state: AlertState | None = None, since: float = 0.0
    ) -> Iterator[dict[str, Any]]:
        """Every alert with its outcome and the Message-ID of the mail that carried it."""
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
            "m.attempts, m.last_reply "
            "FROM alerts a LEFT JOIN mails m ON m.id = a.mail_id "
            f"WHERE {' AND '.join(where)} ORDER BY a.id"
        )
        with _translated("reading alerts"):
            yield from self._db.query(sql, params)

    def mails(self, states: Sequence[str] = ("pending", "dead")) -> Iterator[dict[str, Any]]:
        """Mails in the given states, with their alerts' ids, oldest first."""
        marks = ",".join("?" for _ in states)
        sql = (
            "SELECT m.id, m.message_id, m.state, m.created_at, m.attempts, m.next_attempt_at, "
            "m.last_reply, m.recipients, m.delivered_to, m.refused_to, "
            "(SELECT json_group_array(a.id) FROM alerts a WHERE a.mail_id = m.id) AS alert_ids "
            f"FROM mails m WHERE m.state IN ({marks}) ORDER BY m.created_at, m.id"
        )
        with _translated("reading the queue"):
            for row in self._db.query(sql, tuple(states)):
                for key in ("recipients", "delivered_to", "refused_to", "alert_ids"):
                    row[key] = json.loads(row[key])
                yield row

    def audit_log(self, *, since: float = 0.0) -> Iterator[dict[str, Any]]:
        with _translated("reading the audit log"):
            for row in self._db.query(
                "SELECT * FROM audit WHERE ts >= :since ORDER BY id", {"since": since}
            ):
                row["alert_ids"] = json.loads(row["alert_ids"] or "[]")
                yield row

    def counts(self) -> dict[str, int]:
        """Alerts per state: the one-line health figure for logs and status."""
        with _translated("counting alerts"):
            rows = self._conn.execute("SELECT state, COUNT(*) FROM alerts GROUP BY state")
            return {str(state): int(n) for state, n in rows}


def _valid_entry(entry: AuditEntry) -> AuditEntry:
    """The entry with every text valid (defence in depth: submit already cleans relay text)."""
    return dataclasses.replace(
        entry,
        event=valid_text(entry.event),
        outcome=valid_text(entry.outcome),
        relay=None if entry.relay is None else valid_text(entry.relay),
        detail=None if entry.detail is None else valid_text(entry.detail),
    )


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
