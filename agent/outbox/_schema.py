"""The outbox's tables, their versioned migrations (`PRAGMA user_version`), and the values
stored in them that are spelt in one place: the mail and device states and the thread key.

Migrations are append-only: a database at version N gets N+1.. applied in order, each in its
own transaction, so a crash during an upgrade leaves a consistent older version.
"""

from __future__ import annotations

import enum
import secrets
import sqlite3
from pathlib import Path

from agent.errors import OutboxError

SCHEMA_VERSION = 5


class MailState(enum.StrEnum):
    """Where a mail is. The transitions, all in SQL that spells the state with this enum:

    - pending → sent: the relay's 250 for every recipient (queue.mark_sent);
    - pending → pending: a retry at a later time, or some recipients still to go (queue);
    - pending → dead: a 5xx, too many internal errors (queue.mark_dead), dropped by a
      technician (operator.drop), or every alert of it evicted (housekeeping.evict_pending);
    - dead → pending: re-queued by a technician (operator.requeue).
    """

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


class DeviceState(enum.StrEnum):
    """A device as the flood guard and technicians see it."""

    OK = "ok"
    BLOCKED = "blocked"


class MirrorState(enum.IntEnum):
    """An alert's held record (faultmail/<group>/held/<instance>/<identity>) in group mode;
    NULL in the column: never mirrored (single mode, or not pending when stored).

    - HELD → CLEARED: the alert is no longer pending and the empty retained message that
      clears its record was published (mirror.mark_mirror_cleared).
    """

    HELD = 1
    CLEARED = 2


def thread_key(uid: str, code: str) -> str:
    """The key of a device + code problem ("thread") in the threads table.

    The one spelling of it: Python (grouping) calls this and SQL calls it too, registered on
    every connection as the function thread_key(uid, code). The unit separator (US, 0x1f) cannot
    occur in a cleaned uid or code, so two problems never share a key.
    """
    return f"{uid}\x1f{code}"


def thread_device_sql(column: str) -> str:
    """SQL for the uid in a thread key held in `column`: thread_key read back (its first part),
    without a Python call per row."""
    return f"substr({column}, 1, instr({column}, char(31)) - 1)"


MIGRATIONS: dict[int, str] = {
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
    # The retain flag each alert arrived with, and what its topic and payload hash to: a
    # retained message the broker replays (at every subscribe under MQTT 3.1.1) whose content
    # is still in the history is recognised as one we already have. Older rows have no key.
    3: """
    ALTER TABLE alerts ADD COLUMN retained INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN content_key TEXT;
    CREATE INDEX alerts_content ON alerts (content_key);
    """,
    # Silences (`faultmail silence`, [[maintenance]] windows): device and code are shell-style
    # patterns; an alert one covers is stored as `silenced` with its id. ended_at is set by an
    # early end (ended_by: who) or, once the daemon saw it run out, by expiry. The two
    # *_noticed flags say the start and end notices are planned (exactly once each).
    # Acknowledgements: one row per acknowledged thread; cleared when it resolves or escalates.
    4: """
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        code TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        created_at REAL NOT NULL,
        author TEXT NOT NULL,
        reason TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT 'cli',
        ended_at REAL,
        ended_by TEXT,
        start_noticed INTEGER NOT NULL DEFAULT 0,
        end_noticed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX silences_open ON silences (end_noticed, ends_at);
    ALTER TABLE alerts ADD COLUMN silence_id INTEGER REFERENCES silences (id);
    CREATE INDEX alerts_silence ON alerts (silence_id);
    CREATE TABLE acks (
        thread_key TEXT PRIMARY KEY,
        acked_at REAL NOT NULL,
        acked_by TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        severity_rank INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # Group mode (agent.identity): each alert's identity, the same on every member for the same
    # device message (older rows keep NULL: their mails keep single-mode Message-IDs), and
    # whether its held record is published for the group (MirrorState). The partial indexes
    # hold only the alerts whose record is still out, so finding the finished ones (and
    # whether another alert still needs the same record) reads a handful of rows.
    5: """
    ALTER TABLE alerts ADD COLUMN identity TEXT;
    ALTER TABLE alerts ADD COLUMN mirror INTEGER;
    CREATE INDEX alerts_mirror ON alerts (mirror) WHERE mirror = 1;
    CREATE INDEX alerts_mirror_identity ON alerts (identity) WHERE mirror = 1;
    """,
}


def check_version(path: Path, version: int) -> None:
    """Refuse a database written by a newer faultmail: its tables may mean something else."""
    if version > SCHEMA_VERSION:
        raise OutboxError(
            f"{path} has schema version {version}, newer than this faultmail "
            f"({SCHEMA_VERSION}); upgrade faultmail or use the matching version"
        )


def upgrade(conn: sqlite3.Connection, target: int) -> None:
    """Bring the schema from target - 1 to target, in the caller's transaction."""
    for statement in MIGRATIONS[target].split(";"):
        if statement.strip():
            conn.execute(statement)
    if target == 1:
        # A random id of this database file, part of every Message-ID it creates.
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('instance', ?)", (secrets.token_hex(6),)
        )
    conn.execute(f"PRAGMA user_version = {target}")
