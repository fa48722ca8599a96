"""The ingest half of the pipeline: raw message → parse → policy → outbox commit → ack.

One thread drains the queue that paho's network thread fills. Whatever arrived while the last
transaction was committing forms the next batch (group commit): at low rates a batch is one
message and adds no delay; in a storm one fsync covers hundreds of messages.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import structlog

from agent.bounds import OutboxBounds
from agent.errors import OutboxError
from agent.failpoints import Failpoints
from agent.models import AlertState, Decision, RawMessage
from agent.outbox import Outbox
from agent.parse import ParseLimits, parse
from agent.policy import Policy

_STOP = None


class Intake:
    """Owns the writer connection to the outbox; acknowledges only what it has committed."""

    def __init__(
        self,
        outbox: Outbox,
        policy: Policy,
        filters: list[str],
        limits: ParseLimits,
        ack: Callable[[RawMessage], bool],
        on_stored: Callable[[], None],
        bounds: OutboxBounds,
        failpoints: Failpoints | None = None,
        max_batch: int = 1000,
    ) -> None:
        self._bounds = bounds
        self._outbox = outbox
        self._policy = policy
        self._filters = filters
        self._limits = limits
        self._ack = ack
        self._on_stored = on_stored
        self._failpoints = failpoints or Failpoints()
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[RawMessage | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self.log = structlog.get_logger("faultmail.intake")

    def submit(self, raw: RawMessage) -> None:
        """Called on paho's network thread: hand over and return at once."""
        self._queue.put(raw)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Commit and acknowledge what is already queued, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop_after = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)
            self.process(batch)
            if stop_after:
                return

    def process(self, batch: list[RawMessage]) -> None:
        """Decide, commit in one transaction, then acknowledge in arrival order (MQTT-4.6.0-2)."""
        decisions = [
            self._policy.decide(raw, parse(raw, self._filters, self._limits)) for raw in batch
        ]
        self._failpoints.hit("after_receive_before_commit")
        if not self._commit(decisions):
            return
        self._failpoints.hit("after_commit_before_ack")
        unacked = sum(not self._ack(raw) for raw in batch)
        if unacked:
            self.log.info(
                "ack_skipped_after_reconnect",
                count=unacked,
                note="the broker redelivers them; duplicates are recognised",
            )
        self._on_stored()
        for decision in decisions:
            if decision.state is AlertState.REJECTED:
                self.log.warning(
                    "payload_rejected",
                    topic=decision.raw.topic,
                    uid=decision.uid,
                    reason=decision.reason,
                )

    def _commit(self, decisions: list[Decision]) -> bool:
        """Store the batch, retrying while storage is unusable. False if asked to stop first.

        While this retries nothing is acknowledged, so the broker keeps every message (and,
        after its receive maximum, stops sending): disk full costs delay, never alerts.
        """
        delay = 0.5
        pending = sum(d.state is AlertState.PENDING for d in decisions)
        while True:
            try:
                self._bounds.make_room(self._outbox, pending)
                result = self._outbox.ingest(decisions)
            except OutboxError as exc:
                self.log.error(
                    "outbox_write_failed",
                    error=str(exc),
                    batch=len(decisions),
                    retry_in_s=delay,
                    note="messages stay unacknowledged at the broker",
                )
                if self._stopping.wait(delay):
                    return False
                delay = min(delay * 2, 30.0)
                continue
            if result.duplicates:
                self.log.info("duplicates_ignored", count=result.duplicates)
            return True
