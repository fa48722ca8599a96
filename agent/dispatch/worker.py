"""The outbox's own thread for the event loop: SQLite work never blocks asyncio.

Delivery outcomes are group-committed: the outcomes that queued up while the thread was busy
are written in one transaction, so a burst pays one fsync (and one thread hop) per group
instead of one per mail. An outcome also waits for company, briefly: while another lane's
submission is in flight (between its first command and the relay's last reply), the outcome
that arrives first waits up to COMPANY_WAIT_S for that one's, and both share a commit. Each
lane still holds at most one mail the relay has and the outbox does not, as without the wait.
A submission in flight for longer than COMPANY_RECENT_S is not waited for: its relay is
holding the reply back, and the other lanes go on at their own pace.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agent.errors import OutboxError
from agent.outbox import Outbox

T = TypeVar("T")

_GROUP_ACTION = "recording delivery outcomes"

# How long an outcome waits for the outcome of a submission still in flight on another lane.
# A burst's lanes then fall into step and pair up: one commit, one fsync and one hop for two
# mails. Without the wait they hardly ever meet (2,000 mails took 1,983 commits), because a
# commit is shorter than the gap between two lanes' replies. Short, so that a lane whose relay
# answers slowly delays the other by no more than this per mail; at a trickle, with no other
# submission in flight, nothing waits at all.
COMPANY_WAIT_S = 0.002
# A submission in flight for longer than this is held up at the relay (a content scanner may
# keep the reply to DATA for smtp.data_timeout): the others' outcomes stop waiting for it, as
# delivery stops waiting for its lane (agent.dispatch.lanes.STRAGGLER_S).
COMPANY_RECENT_S = 0.5


@dataclass
class _Write(Generic[T]):
    """One queued outcome write and the future its caller awaits."""

    fn: Callable[[Outbox], T]
    future: Future[T] = field(default_factory=Future)
    result: T | None = None
    error: BaseException | None = None


class OutboxWorker:
    """Runs outbox calls on one dedicated thread so SQLite never blocks the event loop."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._lock = threading.Lock()
        self._queued: list[_Write[Any]] = []
        # A _drain job is in the pool's queue and has not yet taken the queued writes.
        self._drain_pending = False
        # Submissions in flight whose outcome has not been queued yet, by token, with the
        # monotonic time each began (event loop only), and the timer that ends the queued
        # writes' wait for them.
        self._submitting: dict[int, float] = {}
        self._tokens = itertools.count()
        self._company_timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Outcome transactions (a lone write counts as a group of one) and the writes in them
        # that were committed, for tests and the bench.
        self.groups = 0
        self.grouped_writes = 0

    async def __call__(self, fn: Callable[[Outbox], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, self.outbox)

    async def outcome(self, fn: Callable[[Outbox], T]) -> T:
        """Run the write `fn` in the next write group; returns once the group is committed.

        Each write is a savepoint of the group: when it raises, only it is undone and only
        its caller gets the exception. When the group's COMMIT fails, every caller of the
        group gets that OutboxError, as one write alone would.
        """
        write: _Write[T] = _Write(fn)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._submitting and not self._drain_pending and self._company_coming():
                # Another lane's reply is on its way: wait for its outcome, not longer than
                # COMPANY_WAIT_S (the timer is the loop's: this runs on the event loop).
                if self._company_timer is None:
                    loop = asyncio.get_running_loop()
                    self._company_timer = loop.call_later(COMPANY_WAIT_S, self._release)
            else:
                self._submit_drain()
            self._queued.append(write)
        return await asyncio.wrap_future(write.future)

    @contextmanager
    def submitting(self) -> Iterator[None]:
        """Around one submission whose outcome comes through outcome() right after it: the
        outcomes queued meanwhile wait (up to COMPANY_WAIT_S) to share their commit with it."""
        token = next(self._tokens)
        self._submitting[token] = time.monotonic()
        try:
            yield
        finally:
            del self._submitting[token]

    def _company_coming(self) -> bool:
        """A submission in flight began recently enough for its reply to be worth a wait."""
        since = time.monotonic() - COMPANY_RECENT_S
        return any(began > since for began in self._submitting.values())

    def _release(self) -> None:
        """The wait for company is over: the queued writes go to the outbox thread."""
        with self._lock:
            if self._queued:
                self._submit_drain()
            else:
                self._stop_waiting()

    def _submit_drain(self) -> None:
        """With the lock held: make sure one _drain job is queued for what is queued."""
        self._stop_waiting()
        if not self._drain_pending:
            self._pool.submit(self._drain)
            self._drain_pending = True

    def _stop_waiting(self) -> None:
        if self._company_timer is not None:
            self._company_timer.cancel()
            self._company_timer = None

    def _drain(self) -> None:
        """On the outbox thread: write every queued outcome in one transaction."""
        with self._lock:
            batch, self._queued = self._queued, []
            self._drain_pending = False
        # A caller cancelled before its turn: its write is not run, as with run_in_executor.
        batch = [w for w in batch if w.future.set_running_or_notify_cancel()]
        if len(batch) == 1:
            # Alone: its own transaction, exactly as a plain call, without the group's
            # savepoint statements.
            self._write_alone(batch[0])
        elif batch:
            self._write_group(batch)

    def _write_alone(self, write: _Write[Any]) -> None:
        self.groups += 1
        self.grouped_writes += 1
        try:
            result = write.fn(self.outbox)
        except BaseException as exc:  # the caller's to handle
            write.future.set_exception(exc)
        else:
            write.future.set_result(result)

    def _write_group(self, batch: list[_Write[Any]]) -> None:
        box = self.outbox
        failure: BaseException | None = None  # why nothing of the group is stored
        try:
            with box.write_group(_GROUP_ACTION):
                for write in batch:
                    try:
                        with box.savepoint():
                            write.result = write.fn(box)
                    except BaseException as exc:  # the caller's to handle
                        write.error = exc
                        if not box.group_intact():
                            # SQLite rolled everything back: the earlier writes are lost too.
                            failure = exc
                            break
        except OutboxError as exc:
            failure = failure or exc
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            for write in batch:
                write.future.set_exception(_group_error(exc))
            raise
        if failure is None:
            self.groups += 1
            self.grouped_writes += len(batch)
        for write in batch:
            if write.error is not None:
                write.future.set_exception(write.error)
            elif failure is not None:
                write.future.set_exception(_group_error(failure))
            else:
                write.future.set_result(write.result)

    def shutdown(self) -> None:
        # Writes still waiting for company go now: their callers are awaiting the commit.
        self._release()
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
        self.outbox.close()


def _group_error(cause: BaseException) -> OutboxError:
    """The error for a caller whose write was not stored because its group failed: the same
    kind and text as the cause (disk full stays OutboxUnavailable), one object per caller
    because each awaiting task adds its own traceback."""
    if isinstance(cause, OutboxError):
        error = type(cause)(str(cause))
        error.__cause__ = cause.__cause__
        return error
    error = OutboxError(f"{_GROUP_ACTION}: not stored, the group failed: {cause!r}")
    error.__cause__ = cause
    return error
