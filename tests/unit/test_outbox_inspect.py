"""outbox.inspect: the doctor's read-only look at an outbox file: what it reports, and that
looking changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import OutboxError
from agent.outbox.inspect import SCHEMA_VERSION, inspect_file


def outbox_file(path: Path, states: list[str], version: int = SCHEMA_VERSION) -> Path:
    """A database with a mails table holding one mail per state given."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE mails (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
        conn.executemany("INSERT INTO mails (state) VALUES (?)", [(s,) for s in states])
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    return path


def test_report_counts_mails_by_state_and_reads_the_schema(tmp_path: Path) -> None:
    """An intact file reports ok, its version, its size and the mails pending and dead."""
    path = outbox_file(tmp_path / "outbox.db", ["pending", "pending", "dead", "sent"])
    report = inspect_file(path)
    assert report.intact and report.problems == ("ok",)
    assert report.schema_version == SCHEMA_VERSION and not report.empty
    assert (report.pending, report.dead) == (2, 1)
    assert dict(report.mails) == {"pending": 2, "dead": 1, "sent": 1}
    assert report.size_bytes == path.stat().st_size and "mails" in report.tables


def test_an_empty_file_is_reported_empty(tmp_path: Path) -> None:
    """A zero-byte file (never set up) is empty: version 0, no tables, no mails."""
    path = tmp_path / "outbox.db"
    path.write_bytes(b"")
    report = inspect_file(path)
    assert report.empty and report.intact and report.pending == 0 and report.mails == {}


def test_looking_changes_nothing(tmp_path: Path) -> None:
    """The read-only connection leaves the file's bytes alone and creates no -wal/-journal."""
    path = outbox_file(tmp_path / "outbox.db", ["pending"], version=1)
    before = path.read_bytes()
    assert inspect_file(path).schema_version == 1  # an old version is reported, not migrated
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.db"]


def test_a_file_that_is_not_a_database_is_an_outbox_error(tmp_path: Path) -> None:
    """Bytes that are not SQLite raise OutboxError with SQLite's words; sqlite3 stays inside."""
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database, just bytes\n" * 200)
    with pytest.raises(OutboxError, match="not a database"):
        inspect_file(path)
