"""The ingest half of the pipeline, per message: flood → parse → policy; then one outbox
commit per batch, then the MQTT acks in arrival order.

One thread drains the queue that paho's network thread fills. Whatever arrived while the last
transaction was committing forms the next batch (group commit): at low rates a batch is one
message and adds no delay; in a storm one fsync covers hundreds of messages.

The unit of work is one message, and nothing one message does may stop the thread (issue #12:
one 51-byte payload used to end it for good while the daemon looked healthy):
- an exception while admitting, parsing or deciding one message makes that message `rejected`
  with reason `internal_error: <type>` (its payload sample kept as for any rejection);
- storing the batch (agent.commit) waits out unusable storage, stores a refused batch message
  by message, and lets only a corrupt outbox (OutboxCorrupt) end the stage;
- whatever still escapes ends the thread through `Stage.failed` (the supervisor exits, systemd
  restarts us), after the messages being handled are counted in the outbox's poison list
  (agent.quarantine), so that a message which keeps killing the intake is quarantined.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from agent.bounds import OutboxBounds
from agent.commit import BatchCommitter
from agent.errors import OutboxCorrupt, OutboxError
from agent.failpoints import Failpoints
from agent.flood import INVALID_UID, FloodGuard
from agent.identity import decision_identity
from agent.liveness import HEARTBEAT_S, Stage
from agent.metrics import Metrics
from agent.models import (
    Admission,
    AlertState,
    BlockEvent,
    Decision,
    DeviceDelta,
    Fault,
    RawMessage,
    Reason,
    Severity,
    safe_uid,
)
from agent.outbox import Outbox
from agent.parse import ParseLimits, parse, uid_from_topic
from agent.planner import BlockNotice
from agent.policy import Policy
from agent.quarantine import LOG_SAMPLE_CHARS, QUARANTINE_AFTER, Deaths, PoisonList
from agent.sanitize import escaped_sample, truncate, valid_text


@dataclass(frozen=True, slots=True)
class NoticeRouting:
    """Where block notices go, and what their Message-IDs are made of."""

    security: tuple[str, ...]
    gateway_id: str
    domain: str


_STOP = None


class GroupLink(Protocol):
    """What the intake asks of the group runtime (agent.group.Group) in a group mode."""

    def owner_of(self, uid: str) -> str | None: ...

    def forward(self, raw: RawMessage, owner: str) -> Any: ...

    def hold(self, decision: Decision) -> Any: ...

    def settle(self, infos: Sequence[Any], stopping: threading.Event, stage: Stage) -> bool: ...


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
        stage: Stage | None = None,
        group: GroupLink | None = None,
    ) -> None:
        self._group = group
        self._metrics = metrics or Metrics()
        self._stage = stage or Stage("intake")
        self._poison = PoisonList(outbox)
        # The messages being handled: what a death is blamed on.
        self._current: list[RawMessage] = []
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
        self._committer = BatchCommitter(
            outbox,
            bounds,
            stopping=self._stopping,
            stage=self._stage,
            metrics=self._metrics,
            unstorable=lambda d, exc: self._internal_error(d.raw, d.uid, exc, "message_unstorable"),
        )
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
        try:
            self._loop()
        except BaseException as exc:  # a thread's last word: whatever it is, see _died
            self._died(exc)
            return
        self._stage.stopped()

    def _loop(self) -> None:
        while True:
            self._stage.beat()
            try:
                first = self._queue.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                continue
            if first is _STOP:
                return
            self._failpoints.hit("intake_crash")
            self._failpoints.hit("intake_stall")
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
            self._current = []
            if stop_after:
                return

    def _died(self, exc: BaseException) -> None:
        """The thread ends: log why, blame the messages at hand, tell the supervisor."""
        batch = self._current
        self.log.critical(
            "intake_failed",
            error=f"{type(exc).__name__}: {truncate(str(exc), 300)}",
            batch=len(batch),
            exc_info=exc,
            note="faultmail exits and systemd restarts it; the broker redelivers what was "
            f"not acknowledged; a message present at {QUARANTINE_AFTER} such deaths is "
            "quarantined",
        )
        self._poison.record_death(batch, exc)
        self._stage.failed(exc)

    def process(self, batch: list[RawMessage]) -> None:
        """Admit, decide, commit in one transaction, then acknowledge in arrival order
        (MQTT-4.6.0-2). Suppressed and blocked messages are acknowledged too: they are
        counted in the same transaction, which is all they are owed.

        Raises only what must end the stage: OutboxCorrupt, or a bug outside the handling of
        single messages."""
        deaths = self._poison.deaths(batch)
        if self._poison.suspects(batch, deaths):
            # Some were present at an earlier death, not yet convicted: each on its own, so a
            # second death is blamed on the one message that caused it, not on neighbours.
            for raw in batch:
                self._process([raw], deaths)
            return
        self._process(batch, deaths)

    def _process(self, batch: list[RawMessage], deaths: Deaths) -> None:
        self._current = batch
        self._refresh_blocked(batch[-1].arrived)
        decisions: list[Decision] = []
        devices: dict[str, DeviceDelta] = {}
        blocks: list[BlockNotice] = []
        # Forwards and held records (group modes): the broker must have them before the acks.
        published: list[Any] = []
        for raw in batch:
            if not raw.topic.isascii():
                # Ingest decodes topics with "replace"; this keeps one from anywhere else out
                # of the counters, notices and logs too.
                raw = replace(raw, topic=valid_text(raw.topic))
            uid = uid_from_topic(raw.topic, self._filters)
            key = safe_uid(uid) or INVALID_UID
            if self._forwarded(raw, uid, key, published):
                continue
            delta = devices.get(key)
            if delta is None:
                delta = devices[key] = DeviceDelta(key, raw.topic, raw.received_at)
            delta.received += 1
            delta.last_seen, delta.last_topic = raw.received_at, raw.topic
            convicted = self._poison.convicted(raw, deaths)
            if convicted is not None:
                decision: Decision | None = self._poison.quarantine(raw, uid, *convicted)
            else:
                try:
                    decision = self._decide(key, raw, delta, blocks)
                except Exception as exc:
                    decision = self._internal_error(raw, uid, exc, "message_failed")
            if decision is None:
                continue
            if decision.state is AlertState.REJECTED:
                delta.rejected += 1
                if decision.cause is not None and decision.cause.suspicious:
                    delta.suspicious += 1
            decisions.append(decision)
        self._failpoints.hit("after_receive_before_commit")
        if not self._committer.commit(decisions, devices, blocks):
            return
        group = self._group
        if group is not None:
            # After the commit, which tells new alerts from duplicates of settled ones.
            published += self._held_records(decisions)
        if (
            published
            and group is not None
            and not group.settle(published, self._stopping, self._stage)
        ):
            return
        self._failpoints.hit("after_commit_before_ack")
        unacked = sum(not self._ack(raw) for raw in batch)
        self._stage.beat()
        if unacked:
            self.log.info(
                "ack_skipped_after_reconnect",
                count=unacked,
                note="the broker redelivers them; duplicates are recognised",
            )
        self._on_stored(bool(blocks) or any(_is_critical(d) for d in decisions))
        _report(self.log, self._metrics, decisions, devices.values(), blocks)

    def _forwarded(self, raw: RawMessage, uid: str | None, key: str, out: list[Any]) -> bool:
        """Shared mode: a message of a device another member owns goes to that member.

        A message forwarded to us stays here (views of who is online may differ for a moment;
        passing it on again could bounce it), and so does a blocked device's (counted here)."""
        group = self._group
        if group is None or raw.forwarded or uid is None or key in self._flood.blocked:
            return False
        try:
            owner = group.owner_of(key)
            if owner is None:
                return False
            out.append(group.forward(raw, owner))
        except Exception as exc:
            self.log.error(
                "forward_failed", topic=raw.topic, error=type(exc).__name__, exc_info=exc
            )
            return False
        return True

    def _held_records(self, decisions: list[Decision]) -> list[Any]:
        """Group modes: a held record (agent.group) for each stored alert that is pending and
        due one: new ones, and redelivered ones whose record may never have left."""
        assert self._group is not None
        pending = {
            decision_identity(d, self._outbox.group): d
            for d in decisions
            if d.state is AlertState.PENDING and d.fault is not None
        }
        try:
            due = self._outbox.still_held(list(pending))
        except OutboxCorrupt:
            raise
        except OutboxError as exc:
            # Every record then: a stale one costs a duplicate some day, a missing one an alert.
            self.log.warning("held_records_unreadable", error=str(exc))
            due = set(pending)
        out = []
        for identity, decision in pending.items():
            if identity not in due:
                continue
            try:
                out.append(self._group.hold(decision))
            except Exception as exc:
                self.log.error(
                    "held_record_failed",
                    topic=decision.raw.topic,
                    exc_info=exc,
                    error=type(exc).__name__,
                )
        return out

    def _decide(
        self, key: str, raw: RawMessage, delta: DeviceDelta, blocks: list[BlockNotice]
    ) -> Decision | None:
        """Flood guard, parse, policy for one message; None when it is only counted."""
        admission, event = self._flood.admit(key, raw)
        if admission is Admission.SUPPRESS:
            delta.suppressed += 1
            return None
        if admission is not Admission.ADMIT:
            delta.dropped += 1
            if event is not None:
                blocks.append(self._notice(event))
            return None
        return self._policy.decide(raw, parse(raw, self._filters, self._limits))

    def _internal_error(
        self, raw: RawMessage, uid: str | None, exc: Exception, event: str
    ) -> Decision:
        """A faultmail bug met this message: record it against the message, with the type."""
        self.log.error(
            event,
            topic=raw.topic,
            error=type(exc).__name__,
            sample=escaped_sample(raw.payload, LOG_SAMPLE_CHARS),
            exc_info=exc,
            note="recorded as rejected (internal_error); the other messages go on",
        )
        return Decision.rejected(raw, Reason.INTERNAL_ERROR, type(exc).__name__, uid)

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
        """Pick up blocks and unblocks made from the CLI, at most once a second.

        `now` is monotonic (RawMessage.arrived): a wall-clock step back would otherwise stop
        the refresh for as long as the step.
        """
        if now - self._blocked_checked < 1.0:
            return
        self._blocked_checked = now
        try:
            self._flood.set_blocked(self._outbox.blocked_uids())
            self._flood.forget_idle(now)
        except OutboxCorrupt:
            raise
        except OutboxError as exc:
            self.log.warning("blocked_list_unreadable", error=str(exc))
        except Exception:
            # Housekeeping of the flood guard: a bug here must not blame the batch.
            self.log.exception("blocked_list_refresh_failed")


def _report(
    log: structlog.typing.FilteringBoundLogger,
    metrics: Metrics,
    decisions: list[Decision],
    devices: Iterable[DeviceDelta],
    blocks: list[BlockNotice],
) -> None:
    """After the acks: count what the batch became, log each rejection and each block."""
    add = metrics.add
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
    for decision in decisions:
        if decision.state is AlertState.REJECTED:
            log.warning(
                "payload_rejected",
                topic=decision.raw.topic,
                uid=decision.uid,
                reason=decision.reason,
            )
    for notice in blocks:
        e = notice.event
        log.error(
            "device_blocked",
            uid=e.uid,
            topic=e.topic,
            count=e.count,
            rate_per_s=e.rate_per_s,
            reason=e.reason,
            fix=f"investigate the device; `faultmail devices unblock {e.uid}`",
        )
