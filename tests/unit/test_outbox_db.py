"""outbox._db and _schema: opening the file, durability settings, versions, error mapping."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.errors import OutboxCorrupt, OutboxError, OutboxUnavailable
from agent.outbox import SCHEMA_VERSION, Outbox, outbox_error, thread_key
from tests.unit.conftest import pending_decision


def test_schema_is_versioned_and_durable(outbox: Outbox) -> None:
    """A new outbox is at the current schema version, in WAL mode with synchronous=FULL."""
    conn = outbox._conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sql_thread_key_is_the_python_one(outbox: Outbox) -> None:
    """The SQL function thread_key(uid, code) is the Python thread_key: one spelling."""
    row = outbox._conn.execute("SELECT thread_key('pump-17', 'E042')").fetchone()
    assert row[0] == thread_key("pump-17", "E042")


def test_readonly_reader_sees_committed_rows(outbox: Outbox) -> None:
    """The CLI's read-only connection reads while the daemon's writer holds the file."""
    outbox.ingest([pending_decision(1)])
    reader = Outbox(outbox.path, readonly=True)
    assert [r["seq"] for r in reader.alerts()] == [1]
    with pytest.raises(OutboxError):
        reader.ingest([pending_decision(2)])
    reader.close()


def test_corrupt_file_is_refused_with_instructions(tmp_path: Path) -> None:
    """A file that is not a database stops startup with a message saying what to do."""
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxCorrupt, match="move the file aside"):
        Outbox(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database from a newer faultmail is not touched."""
    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(path)


def test_disk_full_is_unavailable_not_corrupt(tmp_path: Path) -> None:
    """SQLITE_FULL surfaces as OutboxUnavailable and the file stays consistent."""
    box = Outbox(tmp_path / "outbox.db")
    box.ingest([pending_decision(0)])
    pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [pending_decision(i, payload=json.dumps(["x" * 2000, i]).encode()) for i in range(1, 200)]
    with pytest.raises(OutboxUnavailable, match="full"):
        box.ingest(big)
    assert [r["seq"] for r in box.alerts()] == [0]
    box.close()


def test_errors_are_mapped_by_result_code_not_text() -> None:
    """An extended result code maps by its primary code; the message text plays no part."""
    exc = sqlite3.OperationalError("something unrelated to disks")
    exc.sqlite_errorname = "SQLITE_IOERR_WRITE"
    assert type(outbox_error("storing alerts", exc)) is OutboxUnavailable
    text_only = sqlite3.OperationalError("database or disk is full")
    assert type(outbox_error("storing alerts", text_only)) is OutboxError


def test_an_outbox_root_creates_in_the_state_dir_belongs_to_its_owner(tmp_path: Path) -> None:
    """Run as root (send-test before the daemon's first start), a new outbox file goes to the
    state directory's owner, so the service user can write it; elsewhere nothing changes."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, 4242, 4242)
    Outbox(state / "outbox.db").close()
    expected = 4242 if os.geteuid() == 0 else os.geteuid()
    assert (state / "outbox.db").stat().st_uid == expected


@pytest.mark.parametrize("grouped", [False, True])
def test_writers_of_one_process_queue_for_each_other_not_inside_sqlite(
    tmp_path: Path, grouped: bool
) -> None:
    """Intake and the delivery loop write the same file on connections of their own. A writer
    that finds it locked waits in the process until the other commits, and only then asks
    SQLite: left to SQLite it would sleep in steps of up to 100 ms however soon the lock is
    free (in a storm the delivery loop waited 430 ms for one BEGIN). The trace shows the
    second writer's BEGIN only after the first writer's COMMIT."""
    path = tmp_path / "outbox.db"
    first, second = Outbox(path), Outbox(path)
    trace: list[tuple[str, str]] = []
    first._conn.set_trace_callback(lambda sql: trace.append(("first", sql)))
    second._conn.set_trace_callback(lambda sql: trace.append(("second", sql)))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with first._transaction():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)

    def write() -> None:
        if grouped:
            with second.write_group("recording delivery outcomes"):
                second.ingest([pending_decision(1)])
        else:
            second.ingest([pending_decision(1)])

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(0.3)  # it is waiting: for the process's lock, not for SQLite's
    release.set()
    holder.join(5)
    writer.join(5)
    order = [(who, sql) for who, sql in trace if sql in ("BEGIN IMMEDIATE", "COMMIT")]
    assert order[:3] == [
        ("first", "BEGIN IMMEDIATE"),
        ("first", "COMMIT"),
        ("second", "BEGIN IMMEDIATE"),
    ], order
    assert [a["seq"] for a in first.alerts()] == [1]
    first.close()
    second.close()


def test_a_writer_never_waits_for_another_longer_than_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue of the process's writers is bounded as SQLite's own wait is: a writer held up
    by one that does not finish (here: it waits for us) gets the busy error, as before,
    instead of hanging; so does a nested write of the same thread on a second connection."""
    monkeypatch.setattr("agent.outbox._db._BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "outbox.db"
    first, second = Outbox(path), Outbox(path)
    with first._transaction():
        with pytest.raises(OutboxError):  # the same thread, another connection
            second.ingest([pending_decision(1)])
        errors: list[BaseException] = []

        def write() -> None:
            try:
                second.ingest([pending_decision(2)])
            except OutboxError as exc:
                errors.append(exc)

        other = threading.Thread(target=write)
        other.start()
        other.join(10)
        assert not other.is_alive() and len(errors) == 1, errors
    second.ingest([pending_decision(3)])
    assert [a["seq"] for a in first.alerts()] == [3]
    first.close()
    second.close()
