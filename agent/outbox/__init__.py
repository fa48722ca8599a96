"""The outbox: the only package that speaks SQL. One SQLite file in WAL mode, FULL sync.

Its parts, one responsibility each, all over one connection:
- _db: opening the file, PRAGMAs, write transactions, sqlite3 errors → ours (one table);
- _schema: tables, migrations (PRAGMA user_version), the stored states and the thread key;
- ingest: a batch of intake's decisions, device counters, blocks, the poison list;
- backlog: what a planning pass decides from (alerts without a mail, threads, devices);
- plans: a planning pass (reading its backlog, asking the planner) and storing its plan;
- queue: the mail state machine (claim, sent / retry / dead, next due, clock steps);
- audit: the audit table, written in the transaction of the change it records;
- operator: re-queue, drop, block and unblock by a technician;
- reports: rows for the CLI, `status` and metrics; the heartbeat;
- housekeeping: measuring, evicting, pruning (agent.bounds decides when);
- mirror: group mode's held records: which alerts no longer need theirs, which were cleared.
The outbox decides nothing about mail: agent.planner does, the outbox stores its plan.
"""

from __future__ import annotations

from agent.outbox._db import Database, outbox_error
from agent.outbox._schema import SCHEMA_VERSION, DeviceState, MailState, MirrorState, thread_key
from agent.outbox.acks import Ack, AckResult, AckStore
from agent.outbox.audit import AuditEntry, AuditLog
from agent.outbox.backlog import Backlog, MailIds, ThreadState, UnplannedAlert
from agent.outbox.housekeeping import Housekeeping
from agent.outbox.ingest import IngestResult, IngestStore, PlannedBlock
from agent.outbox.mirror import MirrorStore
from agent.outbox.operator import OperatorActions
from agent.outbox.plans import MailPlan, NewMail, PlanStore
from agent.outbox.queue import MailQueue
from agent.outbox.reports import Reports
from agent.outbox.silences import SilenceStore

__all__ = [
    "SCHEMA_VERSION",
    "Ack",
    "AckResult",
    "AckStore",
    "AuditEntry",
    "AuditLog",
    "Backlog",
    "Database",
    "DeviceState",
    "Housekeeping",
    "IngestResult",
    "IngestStore",
    "MailIds",
    "MailPlan",
    "MailQueue",
    "MailState",
    "MirrorState",
    "MirrorStore",
    "NewMail",
    "OperatorActions",
    "Outbox",
    "PlanStore",
    "PlannedBlock",
    "Reports",
    "SilenceStore",
    "ThreadState",
    "UnplannedAlert",
    "outbox_error",
    "thread_key",
]


class Outbox(
    IngestStore,
    PlanStore,
    MailQueue,
    AuditLog,
    OperatorActions,
    Reports,
    Housekeeping,
    SilenceStore,
    AckStore,
    MirrorStore,
):
    """One connection to the outbox database with all its parts. Use one Outbox per thread.

    One object composed from the parts (rather than one object per part) keeps every call
    site a plain `outbox.method(...)` and lets a worker thread own a single connection.

    `Outbox(path, group="brno-gw")` works for a group ([cluster] group, agent.identity);
    without one (None, the default) it is single mode.
    """
