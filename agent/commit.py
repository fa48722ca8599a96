"""How intake stores a batch: one transaction, waiting out unusable storage, never giving up
a message for its neighbours.

- Storage that is unusable (OutboxUnavailable, disk full) is retried with backoff; nothing is
  acknowledged meanwhile, so the broker keeps every message (and, after its receive maximum,
  stops sending): disk full costs delay, never alerts.
- A corrupt outbox (OutboxCorrupt) is not retried: it ends the stage.
- A batch refused for another reason (a bug, text that cannot be encoded) is stored again
  message by message; a message that fails alone is stored as the safe decision the intake
  makes of it (rejected internal_error), so one message cannot hold back the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial

import structlog

from agent.bounds import OutboxBounds
from agent.errors import OutboxCorrupt, OutboxError
from agent.flood import INVALID_UID
from agent.liveness import HEARTBEAT_S, Stage
from agent.metrics import Metrics
from agent.models import AlertState, Decision, DeviceDelta
from agent.outbox import IngestResult, Outbox
from agent.planner import BlockNotice

# Storage backoff: from this, doubling, to at most MAX_DELAY_S.
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0


class BatchCommitter:
    """Stores what intake decided for a batch. Runs on the intake thread only."""

    def __init__(
        self,
        outbox: Outbox,
        bounds: OutboxBounds,
        *,
        stopping: threading.Event,
        stage: Stage,
        metrics: Metrics,
        unstorable: Callable[[Decision, Exception], Decision],
    ) -> None:
        """`unstorable` makes the safe decision for one that could not be stored alone."""
        self._outbox = outbox
        self._bounds = bounds
        self._stopping = stopping
        self._stage = stage
        self._metrics = metrics
        self._unstorable = unstorable
        self.log = structlog.get_logger("faultmail.intake")

    def commit(
        self,
        decisions: list[Decision],
        devices: dict[str, DeviceDelta],
        blocks: list[BlockNotice],
    ) -> bool:
        """Store the batch, retrying while storage is unusable. False if asked to stop first."""
        pending = sum(d.state is AlertState.PENDING for d in decisions)
        store = partial(self._outbox.ingest, decisions, list(devices.values()), blocks)
        try:
            result = self._store(store, pending, len(decisions))
        except OutboxCorrupt:
            raise
        except Exception as exc:
            self.log.error(
                "batch_store_failed",
                error=type(exc).__name__,
                batch=len(decisions),
                exc_info=exc,
                note="storing its messages one by one",
            )
            return self._commit_singly(decisions, devices, blocks)
        if result is None:
            return False
        self._note_duplicates(result.duplicates)
        return True

    def _commit_singly(
        self,
        decisions: list[Decision],
        devices: dict[str, DeviceDelta],
        blocks: list[BlockNotice],
    ) -> bool:
        """One transaction per message; what fails alone is stored as its safe decision.

        `decisions` is updated in place, so the logs and metrics after the commit show what
        was stored. Stopped half-way, the stored part is recognised as duplicates on
        redelivery where the payload has a seq.
        """
        duplicates = 0
        for i, decision in enumerate(decisions):
            pending = int(decision.state is AlertState.PENDING)
            try:
                result = self._store(partial(self._outbox.ingest, [decision]), pending, 1)
            except OutboxCorrupt:
                raise
            except Exception as exc:
                safe = self._unstorable(decision, exc)
                if decision.state is not AlertState.REJECTED:
                    delta = devices.get(safe.uid or INVALID_UID)
                    if delta is not None:
                        delta.rejected += 1
                decisions[i] = safe
                result = self._store(partial(self._outbox.ingest, [safe]), 0, 1)
            if result is None:
                return False
            duplicates += result.duplicates
        try:
            result = self._store(
                partial(self._outbox.ingest, [], list(devices.values()), blocks), 0, 0
            )
        except OutboxCorrupt:
            raise
        except Exception:
            # Counters and notices carry no device text but names and numbers; should they
            # still fail, the alerts themselves are stored and the thread goes on.
            self.log.exception("device_counters_unstorable", devices=len(devices))
            result = IngestResult(stored=0, duplicates=0)
        if result is None:
            return False
        self._note_duplicates(duplicates)
        return True

    def _store(
        self, action: Callable[[], IngestResult], pending: int, size: int
    ) -> IngestResult | None:
        """`action` once storage takes it: OutboxError other than corruption is waited out
        with backoff. None if asked to stop first."""
        delay = FIRST_DELAY_S
        while True:
            try:
                self._bounds.make_room(self._outbox, pending)
                return action()
            except OutboxCorrupt:
                raise
            except OutboxError as exc:
                self.log.error(
                    "outbox_write_failed",
                    error=str(exc),
                    batch=size,
                    retry_in_s=delay,
                    note="messages stay unacknowledged at the broker",
                )
                if self._pause(delay):
                    return None
                delay = min(delay * 2, MAX_DELAY_S)

    def _pause(self, delay: float) -> bool:
        """Wait `delay` seconds, beating meanwhile (waiting out a full disk is not a stall:
        a restart would not help). True if asked to stop."""
        deadline = time.monotonic() + delay
        while True:
            self._stage.beat()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._stopping.wait(min(left, HEARTBEAT_S)):
                return True

    def _note_duplicates(self, duplicates: int) -> None:
        if duplicates:
            self._metrics.add("alerts_received", "duplicate", duplicates)
            self.log.info("duplicates_ignored", count=duplicates)
