"""OutboxWorker.outcome: outcome writes queued while the outbox thread is busy share one commit;
a failing write is undone alone; a failing commit (or a disk full that SQLite answers by rolling
the whole transaction back) fails every caller of the group and stores nothing of it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.dispatch import OutboxWorker, worker
from agent.errors import OutboxError, OutboxUnavailable
from agent.outbox import Outbox
from agent.outbox._db import translated

Write = Callable[[Outbox], Any]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    """An outbox with two scratch tables (a parent and a child with a foreign key to it)."""
    outbox = Outbox(tmp_path / "outbox.db")
    outbox._conn.execute("CREATE TABLE scratch_parent (id INTEGER PRIMARY KEY)")
    outbox._conn.execute(
        "CREATE TABLE scratch_child (parent INTEGER REFERENCES scratch_parent(id), blob BLOB)"
    )
    yield outbox


def _insert(n: int) -> Write:
    def write(o: Outbox) -> int:
        with translated("test write"), o._transaction() as conn:
            conn.execute("INSERT INTO scratch_parent (id) VALUES (?)", (n,))
        return n

    return write


def _stored(path: Path) -> set[int]:
    """What another connection sees: only committed rows."""
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM scratch_parent")}
    finally:
        conn.close()


class _Statements:
    """The SQL the outbox connection runs (sqlite3's trace callback, on the outbox thread)."""

    def __init__(self, box: Outbox) -> None:
        self.seen: list[str] = []
        self.hold_commit = threading.Event()
        self.hold_commit.set()
        box._conn.set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        if sql == "COMMIT":
            self.hold_commit.wait(5)
        self.seen.append(sql)

    def count(self, sql: str) -> int:
        return self.seen.count(sql)


async def _while_busy(db: OutboxWorker, calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Start `calls` while the outbox thread is busy with another job; their outcomes."""
    release = threading.Event()
    busy = asyncio.ensure_future(db(lambda o: release.wait(5)))
    await asyncio.sleep(0.05)  # the blocking job is running
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0.05)  # every call has queued its write
    release.set()
    await busy
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)


def test_writes_queued_while_busy_share_one_commit(box: Outbox) -> None:
    """Five outcomes that queued up behind a busy thread: one BEGIN, one COMMIT, all stored,
    each caller gets its own result."""
    statements = _Statements(box)
    db = OutboxWorker(box)

    async def go() -> list[Any]:
        return await _while_busy(db, [db.outcome(_insert(n)) for n in range(1, 6)])

    results = asyncio.run(go())
    db.shutdown()
    assert results == [1, 2, 3, 4, 5]
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1
    assert (db.groups, db.grouped_writes) == (1, 5)
    assert _stored(box.path) == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("other_lane", ["idle", "stalled"])
def test_a_lone_write_is_not_held_back(
    box: Outbox, monkeypatch: pytest.MonkeyPatch, other_lane: str
) -> None:
    """A write with nothing queued behind it is committed at once; with another lane's
    submission in flight whose reply never comes (its relay hangs), after the short wait,
    alone, and so is every later write of this lane."""
    monkeypatch.setattr(worker, "COMPANY_WAIT_S", 0.05)
    db = OutboxWorker(box)

    async def go() -> None:
        with db.submitting() if other_lane == "stalled" else contextlib.nullcontext():
            for n in (1, 2, 3):
                assert await asyncio.wait_for(db.outcome(_insert(n)), 5) == n
                assert _stored(box.path) == set(range(1, n + 1))

    asyncio.run(go())
    db.shutdown()
    assert (db.groups, db.grouped_writes) == (3, 3)


def test_no_caller_returns_before_the_commit(box: Outbox) -> None:
    """A caller's write is acknowledged only once the group's COMMIT has run: with the COMMIT
    held, no caller of the group has returned."""
    statements = _Statements(box)
    db = OutboxWorker(box)

    async def go() -> None:
        statements.hold_commit.clear()
        tasks = [asyncio.ensure_future(db.outcome(_insert(n))) for n in (1, 2)]
        done, _ = await asyncio.wait(tasks, timeout=0.3)
        assert not done, "a caller returned before its group was committed"
        statements.hold_commit.set()
        assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [1, 2]

    asyncio.run(go())
    db.shutdown()
    assert _stored(box.path) == {1, 2}


def test_a_failing_write_is_undone_alone(box: Outbox) -> None:
    """The middle write of a group writes a row and then raises: its caller gets its exception
    and its row is gone; the writes before and after it are stored and return normally."""
    db = OutboxWorker(box)

    def half_then_fail(o: Outbox) -> None:
        with o._transaction() as conn:
            conn.execute("INSERT INTO scratch_parent (id) VALUES (2)")
        o._conn.execute("INSERT INTO scratch_parent (id) VALUES (20)")
        raise ValueError("a bug of ours in the middle of a write")

    async def go() -> list[Any]:
        calls = [db.outcome(_insert(1)), db.outcome(half_then_fail), db.outcome(_insert(3))]
        return await _while_busy(db, calls)

    first, failed, last = asyncio.run(go())
    db.shutdown()
    assert (first, last) == (1, 3)
    assert isinstance(failed, ValueError) and "middle of a write" in str(failed)
    assert _stored(box.path) == {1, 3}
    assert db.groups == 1


def test_a_failing_commit_fails_every_caller_and_stores_nothing(box: Outbox) -> None:
    """A COMMIT refused (a deferred foreign key checked only there): every caller of the
    group gets the translated OutboxError, nothing is stored, and the connection is left
    without an open transaction, so the next write works."""
    db = OutboxWorker(box)

    def dangling_child(o: Outbox) -> None:
        with o._transaction() as conn:
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.execute("INSERT INTO scratch_child (parent) VALUES (999)")

    async def go() -> list[Any]:
        calls = [db.outcome(_insert(1)), db.outcome(dangling_child), db.outcome(_insert(3))]
        return await _while_busy(db, calls)

    results = asyncio.run(go())
    assert len(results) == 3
    for error in results:
        assert isinstance(error, OutboxError), error
        assert "recording delivery outcomes" in str(error)
        assert "FOREIGN KEY" in str(error)
    assert len({id(e) for e in results}) == 3  # one exception object per caller
    assert _stored(box.path) == set()
    assert not box._conn.in_transaction
    assert db.groups == 0

    async def after() -> int:
        return await db.outcome(_insert(4))

    assert asyncio.run(after()) == 4
    db.shutdown()
    assert _stored(box.path) == {4}


def test_disk_full_in_one_write_loses_no_acknowledged_write(box: Outbox) -> None:
    """SQLite answers SQLITE_FULL by rolling the whole transaction back, the earlier writes
    of the group with it: every caller then gets OutboxUnavailable (so "sent" is kept to be
    written again), none is told its write is stored, and the writes after it do not run in
    autocommit behind the group's back."""
    (pages,) = box._conn.execute("PRAGMA page_count").fetchone()
    db = OutboxWorker(box)

    def too_big(o: Outbox) -> None:
        with translated("test write"), o._transaction() as conn:
            conn.execute("PRAGMA max_page_count = " + str(pages + 2))
            conn.execute("INSERT INTO scratch_child (blob) VALUES (?)", (b"x" * 200_000,))

    async def go() -> list[Any]:
        calls = [db.outcome(_insert(1)), db.outcome(too_big), db.outcome(_insert(3))]
        return await _while_busy(db, calls)

    results = asyncio.run(go())
    assert all(isinstance(r, OutboxUnavailable) for r in results), results
    assert all("SQLITE_FULL" in str(r) for r in results)
    assert _stored(box.path) == set()
    assert not box._conn.in_transaction
    box._conn.execute("PRAGMA max_page_count = 1073741823")

    async def after() -> int:
        return await db.outcome(_insert(5))

    assert asyncio.run(after()) == 5
    db.shutdown()
    assert _stored(box.path) == {5}


def test_a_cancelled_caller_write_is_not_run(box: Outbox) -> None:
    """A caller cancelled while its write still waits in the queue: the write is skipped (as
    run_in_executor skips a job cancelled before it started), the others are stored."""
    db = OutboxWorker(box)

    async def go() -> None:
        release = threading.Event()
        busy = asyncio.ensure_future(db(lambda o: release.wait(5)))
        await asyncio.sleep(0.05)
        kept = asyncio.ensure_future(db.outcome(_insert(1)))
        dropped = asyncio.ensure_future(db.outcome(_insert(2)))
        await asyncio.sleep(0.05)
        dropped.cancel()
        await asyncio.sleep(0.05)  # the cancel reaches the write's future in the next turns
        release.set()
        await busy
        assert await asyncio.wait_for(kept, 5) == 1
        with pytest.raises(asyncio.CancelledError):
            await dropped

    asyncio.run(go())
    db.shutdown()
    assert _stored(box.path) == {1}


def test_outcome_after_shutdown_raises_instead_of_hanging(box: Outbox) -> None:
    db = OutboxWorker(box)
    db.shutdown()

    async def go() -> None:
        await asyncio.wait_for(db.outcome(_insert(1)), 1.0)

    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(go())


def test_an_outcome_waits_for_the_other_lanes_and_shares_its_commit(
    box: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lane A's outcome arrives while lane B's submission is in flight: it waits, and B's
    outcome joins it: one transaction for both. The wait is made long here, so only B's
    arrival (not the timer) can have released A."""
    monkeypatch.setattr(worker, "COMPANY_WAIT_S", 30.0)
    statements = _Statements(box)
    db = OutboxWorker(box)

    async def go() -> list[int]:
        with db.submitting():  # lane B: its reply is on its way
            first = asyncio.ensure_future(db.outcome(_insert(1)))  # lane A's outcome
            await asyncio.sleep(0.1)
            assert not first.done(), "lane A did not wait for lane B's outcome"
            assert _stored(box.path) == set()
        second = asyncio.ensure_future(db.outcome(_insert(2)))
        return await asyncio.wait_for(asyncio.gather(first, second), 5)

    assert asyncio.run(go()) == [1, 2]
    db.shutdown()
    assert statements.count("COMMIT") == 1
    assert (db.groups, db.grouped_writes) == (1, 2)
    assert _stored(box.path) == {1, 2}


def test_an_outcome_does_not_wait_for_a_submission_long_in_flight(
    box: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other lane's relay keeps its reply back (a content scanner, up to
    smtp.data_timeout): once that submission has been in flight for COMPANY_RECENT_S, this
    lane's outcomes no longer wait for its company, so this lane runs at its own pace. The
    wait is made long here: an outcome that waited would not be committed in time."""
    monkeypatch.setattr(worker, "COMPANY_WAIT_S", 30.0)
    monkeypatch.setattr(worker, "COMPANY_RECENT_S", 0.05)
    db = OutboxWorker(box)

    async def go() -> None:
        with db.submitting():  # lane B: its reply is held
            await asyncio.sleep(0.2)
            for n in (1, 2, 3):
                assert await asyncio.wait_for(db.outcome(_insert(n)), 5) == n

    asyncio.run(go())
    db.shutdown()
    assert (db.groups, db.grouped_writes) == (3, 3)
    assert _stored(box.path) == {1, 2, 3}


def test_shutdown_commits_an_outcome_still_waiting_for_company(
    box: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping while an outcome waits for another lane's: it is committed, not dropped."""
    monkeypatch.setattr(worker, "COMPANY_WAIT_S", 60.0)
    db = OutboxWorker(box)

    async def go() -> int:
        with db.submitting():
            waiting = asyncio.ensure_future(db.outcome(_insert(1)))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            db.shutdown()
            return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(go()) == 1
    assert _stored(box.path) == {1}
