"""A look at an outbox file from outside the daemon, for `faultmail doctor`: integrity, schema
version, size and mails by state, read through a read-only connection that changes nothing
(no migration, no WAL checkpoint) and does not need the daemon stopped.

The doctor's only access to the database: it judges the report, this module holds the SQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import OutboxError
from agent.outbox._schema import SCHEMA_VERSION, MailState

__all__ = ["SCHEMA_VERSION", "FileReport", "inspect_file"]

# PRAGMA quick_check stops after this many problems: enough to say what is wrong.
_MAX_PROBLEMS = 5


@dataclass(frozen=True, slots=True)
class FileReport:
    """What an outbox file holds, as read without changing it."""

    problems: tuple[str, ...]  # PRAGMA quick_check: ("ok",) for an intact file
    schema_version: int  # PRAGMA user_version: 0 for a file nobody set up
    size_bytes: int  # page size times page count
    tables: frozenset[str]
    mails: Mapping[str, int]  # mails by state; empty without a mails table

    @property
    def intact(self) -> bool:
        return self.problems == ("ok",)

    @property
    def empty(self) -> bool:
        """No schema at all: the daemon sets the file up at its next start."""
        return self.schema_version == 0 and not self.tables

    @property
    def pending(self) -> int:
        """Mails still to be delivered."""
        return self.mails.get(MailState.PENDING.value, 0)

    @property
    def dead(self) -> int:
        """Mails given up on (5xx, dropped), kept for the operator."""
        return self.mails.get(MailState.DEAD.value, 0)


def inspect_file(path: Path, *, timeout: float = 5.0) -> FileReport:
    """Read the report of the outbox file at path (which must exist).

    Raises OutboxError with SQLite's own words when the file cannot be read as a database
    (not a database, damaged header, locked for longer than timeout).
    """
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as conn:
            problems = tuple(
                str(row[0]) for row in conn.execute(f"PRAGMA quick_check({_MAX_PROBLEMS})")
            )
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            tables = frozenset(str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master"))
            mails: dict[str, int] = {}
            if "mails" in tables:
                mails = {
                    str(state): int(n)
                    for state, n in conn.execute("SELECT state, count(*) FROM mails GROUP BY state")
                }
    except sqlite3.DatabaseError as exc:
        # The text alone (no fix appended, unlike _db.outbox_error): the doctor words the fix.
        raise OutboxError(str(exc)) from exc
    return FileReport(problems, version, page_size * pages, tables, mails)
