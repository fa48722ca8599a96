"""The ingest half of the pipeline: raw message → parse → policy → outbox commit → ack.

One thread drains the queue that paho's network thread fills. Whatever arrived while the last
transaction was committing forms the next batch (group commit): at low rates a batch is one
message and adds no delay; in a storm one fsync covers hundreds of messages.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from agent.bounds import OutboxBounds
from agent.errors import OutboxError
from agent.failpoints import Failpoints
from agent.health import Metrics
from agent.models import (
    Admission,
    AlertState,
    BlockEvent,
    Decision,
    DeviceDelta,
    Fault,
    RawMessage,
    Severity,
)
from agent.outbox import BlockNotice, Outbox
from agent.parse import UID_RE as _SAFE_UID
from agent.parse import ParseLimits, parse, uid_from_topic
from agent.policy import FloodGuard, Policy

# Messages whose topic has no usable UID are rate-limited together under this name.
INVALID_UID = "(invalid-uid)"


@dataclass(frozen=True, slots=True)
class NoticeRouting:
    """Where block notices go, and what their Message-IDs are made of."""

    security: tuple[str, ...]
    gateway_id: str
    domain: str


_STOP = None


def _is_critical(decision: Decision) -> bool:
    """A stored critical alert: delivery lets it overtake mails already claimed."""
    fault = decision.fault
    return (
        decision.state is AlertState.PENDING
        and fault is not None
        and fault.severity is Severity.CRITICAL
    )


class Intake:
    """Owns the writer connection to the outbox; acknowledges only what it has committed."""

    def __init__(
        self,
        outbox: Outbox,
        policy: Policy,
        filters: list[str],
        limits: ParseLimits,
        ack: Callable[[RawMessage], bool],
        on_stored: Callable[[bool], None],
        bounds: OutboxBounds,
        flood: FloodGuard,
        notices: NoticeRouting,
        failpoints: Failpoints | None = None,
        max_batch: int = 1000,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._bounds = bounds
        self._flood = flood
        self._notices = notices
        self._blocked_checked = -1e18
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
        """Commit and acknowledge what is already queued, then end the thread.

        A batch whose commit fails from now on is not retried: it stays unacknowledged, so the
        broker hands it over again after the restart.
        """
        self._stopping.set()
        self._queue.put(_STOP)
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
        """Admit, decide, commit in one transaction, then acknowledge in arrival order
        (MQTT-4.6.0-2). Suppressed and blocked messages are acknowledged too: they are
        counted in the same transaction, which is all they are owed."""
        self._refresh_blocked(batch[-1].received_at)
        decisions: list[Decision] = []
        devices: dict[str, DeviceDelta] = {}
        blocks: list[BlockNotice] = []
        for raw in batch:
            uid = uid_from_topic(raw.topic, self._filters)
            key = uid if uid is not None and _SAFE_UID.match(uid) else INVALID_UID
            delta = devices.get(key)
            if delta is None:
                delta = devices[key] = DeviceDelta(key, raw.topic, raw.received_at)
            delta.received += 1
            delta.last_seen, delta.last_topic = raw.received_at, raw.topic
            admission, event = self._flood.admit(key, raw)
            if admission is Admission.SUPPRESS:
                delta.suppressed += 1
                continue
            if admission is not Admission.ADMIT:
                delta.dropped += 1
                if event is not None:
                    blocks.append(self._notice(event))
                continue
            decision = self._policy.decide(raw, parse(raw, self._filters, self._limits))
            if decision.state is AlertState.REJECTED:
                delta.rejected += 1
                if (decision.reason or "").startswith("uid_mismatch"):
                    # What a device pretending to be another would send.
                    delta.suspicious += 1
            decisions.append(decision)
        self._failpoints.hit("after_receive_before_commit")
        if not self._commit(decisions, list(devices.values()), blocks):
            return
        self._failpoints.hit("after_commit_before_ack")
        unacked = sum(not self._ack(raw) for raw in batch)
        if unacked:
            self.log.info(
                "ack_skipped_after_reconnect",
                count=unacked,
                note="the broker redelivers them; duplicates are recognised",
            )
        self._on_stored(bool(blocks) or any(_is_critical(d) for d in decisions))
        self._count(decisions, devices.values())
        for decision in decisions:
            if decision.state is AlertState.REJECTED:
                self.log.warning(
                    "payload_rejected",
                    topic=decision.raw.topic,
                    uid=decision.uid,
                    reason=decision.reason,
                )
        for notice in blocks:
            e = notice.event
            self.log.error(
                "device_blocked",
                uid=e.uid,
                topic=e.topic,
                count=e.count,
                rate_per_s=e.rate_per_s,
                reason=e.reason,
                fix=f"investigate the device; `faultmail devices unblock {e.uid}`",
            )

    def _count(self, decisions: list[Decision], devices: Iterable[DeviceDelta]) -> None:
        add = self._metrics.add
        for decision in decisions:
            add(
                "alerts_received",
                "accepted" if decision.state is AlertState.PENDING else decision.state.value,
            )
        for delta in devices:
            if delta.suppressed:
                add("alerts_received", "rate_limited", delta.suppressed)
            if delta.dropped:
                add("alerts_received", "blocked", delta.dropped)

    def _notice(self, event: BlockEvent) -> BlockNotice:
        critical = Fault(uid=event.uid, code="BLOCKED", severity=Severity.CRITICAL, message="")
        return BlockNotice(
            event=event,
            security=self._notices.security,
            operations=self._policy.recipients_for(event.topic, critical),
            gateway_id=self._notices.gateway_id,
            domain=self._notices.domain,
        )

    def _refresh_blocked(self, now: float) -> None:
        """Pick up blocks and unblocks made from the CLI, at most once a second."""
        if now - self._blocked_checked < 1.0:
            return
        self._blocked_checked = now
        try:
            self._flood.set_blocked(self._outbox.blocked_uids())
        except OutboxError as exc:
            self.log.warning("blocked_list_unreadable", error=str(exc))
        self._flood.forget_idle(now)

    def _commit(
        self, decisions: list[Decision], devices: list[DeviceDelta], blocks: list[BlockNotice]
    ) -> bool:
        """Store the batch, retrying while storage is unusable. False if asked to stop first.

        While this retries nothing is acknowledged, so the broker keeps every message (and,
        after its receive maximum, stops sending): disk full costs delay, never alerts.
        """
        delay = 0.5
        pending = sum(d.state is AlertState.PENDING for d in decisions)
        while True:
            try:
                self._bounds.make_room(self._outbox, pending)
                result = self._outbox.ingest(decisions, devices, blocks)
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
                self._metrics.add("alerts_received", "duplicate", result.duplicates)
                self.log.info("duplicates_ignored", count=result.duplicates)
            return True
