"""The ingest half of the pipeline: raw message → parse → policy → outbox commit → ack.

One thread drains the queue that paho's network thread fills. Whatever arrived while the last
transaction was committing forms the next batch (group commit): at low rates a batch is one
message and adds no delay; in a storm one fsync covers hundreds of messages.

The unit of work is one message, and nothing one message does may stop the thread (issue #12:
one 51-byte payload used to end it for good while the daemon looked healthy):
- an exception while admitting, parsing or deciding one message makes that message `rejected`
  with reason `internal_error: <type>` (its payload sample kept as for any rejection);
- a batch the outbox refuses for any reason but an OutboxError is stored again message by
  message, and a message that fails alone is stored as `internal_error` with safe fields only;
- storage that is unusable (OutboxUnavailable, disk full) is retried with backoff, nothing
  acknowledged meanwhile; a corrupt outbox (OutboxCorrupt) is not retried: it ends the stage;
- whatever still escapes ends the thread through `Stage.failed` (the supervisor exits, systemd
  restarts us), after the messages being handled are counted in the outbox's poison list.
  Restarted, the broker redelivers them; each is then handled on its own, so a second death
  is blamed on the one message that caused it, and a message present at QUARANTINE_AFTER
  deaths is recorded as `quarantined` and acknowledged instead of killing every restart.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial

import structlog

from agent.bounds import OutboxBounds
from agent.errors import OutboxCorrupt, OutboxError
from agent.failpoints import Failpoints
from agent.flood import FloodGuard
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
    Severity,
)
from agent.outbox import BlockNotice, IngestResult, Outbox
from agent.parse import UID_RE as _SAFE_UID
from agent.parse import ParseLimits, parse, uid_from_topic
from agent.policy import Policy
from agent.sanitize import escaped_sample, truncate, valid_text

# Messages whose topic has no usable UID are rate-limited together under this name.
INVALID_UID = "(invalid-uid)"
# Intake deaths a message may be present at before it is quarantined. Two, not one: the first
# death blames every message of the batch; the retry handles each alone, so the second death
# names the culprit (see the module docstring).
QUARANTINE_AFTER = 2
# Characters of a payload quoted, escaped, in the log line of a message that failed.
_LOG_SAMPLE_CHARS = 200


@dataclass(frozen=True, slots=True)
class NoticeRouting:
    """Where block notices go, and what their Message-IDs are made of."""

    security: tuple[str, ...]
    gateway_id: str
    domain: str


_STOP = None


def _fingerprint(raw: RawMessage) -> str:
    """What identifies a redelivered message across restarts (packet ids are reused)."""
    digest = hashlib.sha256(raw.topic.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(raw.payload)
    return digest.hexdigest()


def _rejected(raw: RawMessage, uid: str | None, reason: str) -> Decision:
    """A rejection built from fields that are always storable: the outbox keeps the payload
    bytes as its sample (a BLOB, never encoded), the topic is made valid."""
    safe_uid = uid if uid is not None and _SAFE_UID.match(uid) else None
    return Decision(
        raw=replace(raw, topic=valid_text(raw.topic)),
        fault=None,
        state=AlertState.REJECTED,
        reason=reason,
        uid=safe_uid,
    )


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
    ) -> None:
        self._metrics = metrics or Metrics()
        self._stage = stage or Stage("intake")
        # Unknown until the first batch asks the outbox; False spares every later batch the
        # lookup (only a death adds entries, and a death ends this process).
        self._poison_seen: bool | None = None
        # The messages being handled: what a death is blamed on.
        self._current: list[RawMessage] = []
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
        if batch and not isinstance(exc, OutboxCorrupt):
            # A damaged database is not the messages' fault: blaming them would quarantine
            # innocent alerts once the file is repaired.
            messages = {_fingerprint(raw): raw.topic for raw in batch}
            try:
                self._outbox.record_poison(
                    list(messages.items()),
                    f"{type(exc).__name__}: {truncate(str(exc), 200)}",
                    time.time(),
                )
            except Exception:
                self.log.exception("poison_not_recorded", count=len(messages))
        self._stage.failed(exc)

    def process(self, batch: list[RawMessage]) -> None:
        """Admit, decide, commit in one transaction, then acknowledge in arrival order
        (MQTT-4.6.0-2). Suppressed and blocked messages are acknowledged too: they are
        counted in the same transaction, which is all they are owed.

        Raises only what must end the stage: OutboxCorrupt, or a bug outside the handling of
        single messages."""
        deaths = self._poison_deaths(batch)
        if len(batch) > 1 and any(n < QUARANTINE_AFTER for n, _ in deaths.values()):
            # Some were present at an earlier death, not yet convicted: each on its own, so a
            # second death is blamed on the one message that caused it, not on neighbours.
            for raw in batch:
                self._process([raw], deaths)
            return
        self._process(batch, deaths)

    def _process(self, batch: list[RawMessage], deaths: dict[str, tuple[int, str]]) -> None:
        self._current = batch
        self._refresh_blocked(batch[-1].arrived)
        decisions: list[Decision] = []
        devices: dict[str, DeviceDelta] = {}
        blocks: list[BlockNotice] = []
        for raw in batch:
            if not raw.topic.isascii():
                # Ingest decodes topics with "replace"; this keeps one from anywhere else out
                # of the counters, notices and logs too.
                raw = replace(raw, topic=valid_text(raw.topic))
            uid = uid_from_topic(raw.topic, self._filters)
            key = uid if uid is not None and _SAFE_UID.match(uid) else INVALID_UID
            delta = devices.get(key)
            if delta is None:
                delta = devices[key] = DeviceDelta(key, raw.topic, raw.received_at)
            delta.received += 1
            delta.last_seen, delta.last_topic = raw.received_at, raw.topic
            known = deaths.get(_fingerprint(raw)) if deaths else None
            if known is not None and known[0] >= QUARANTINE_AFTER:
                decision: Decision | None = self._quarantine(raw, uid, *known)
            else:
                try:
                    decision = self._decide(key, raw, delta, blocks)
                except Exception as exc:
                    decision = self._internal_error(raw, uid, exc, "message_failed")
            if decision is None:
                continue
            if decision.state is AlertState.REJECTED:
                delta.rejected += 1
                if (decision.reason or "").startswith("uid_mismatch"):
                    # What a device pretending to be another would send.
                    delta.suspicious += 1
            decisions.append(decision)
        self._failpoints.hit("after_receive_before_commit")
        if not self._commit(decisions, devices, blocks):
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
            sample=escaped_sample(raw.payload, _LOG_SAMPLE_CHARS),
            exc_info=exc,
            note="recorded as rejected (internal_error); the other messages go on",
        )
        return _rejected(raw, uid, f"internal_error: {type(exc).__name__}")

    def _quarantine(self, raw: RawMessage, uid: str | None, deaths: int, error: str) -> Decision:
        self.log.error(
            "message_quarantined",
            topic=raw.topic,
            deaths=deaths,
            error=error,
            sample=escaped_sample(raw.payload, _LOG_SAMPLE_CHARS),
            fix="report it with this sample: faultmail has a bug this payload triggers",
        )
        return _rejected(
            raw,
            uid,
            f"quarantined: the intake died {deaths} times while handling it ({error}); "
            "acknowledged so it cannot stop ingest again",
        )

    def _poison_deaths(self, batch: list[RawMessage]) -> dict[str, tuple[int, str]]:
        """Earlier intake deaths of these messages; one indexed lookup, and none at all
        while the poison list is empty."""
        try:
            if self._poison_seen is None:
                self._poison_seen = self._outbox.has_poison()
            if not self._poison_seen:
                return {}
            return self._outbox.poison_deaths([_fingerprint(raw) for raw in batch])
        except OutboxCorrupt:
            raise
        except OutboxError as exc:
            # Unreadable now: handle the batch as if nothing were known (the worst case is
            # the death the list exists to prevent, and the next start retries the lookup).
            self.log.warning("poison_list_unreadable", error=str(exc))
            return {}

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

    def _commit(
        self,
        decisions: list[Decision],
        devices: dict[str, DeviceDelta],
        blocks: list[BlockNotice],
    ) -> bool:
        """Store the batch, retrying while storage is unusable. False if asked to stop first.

        While this retries nothing is acknowledged, so the broker keeps every message (and,
        after its receive maximum, stops sending): disk full costs delay, never alerts.
        A batch refused for another reason (a bug, text that cannot be encoded) is stored
        message by message, so one message cannot hold back its neighbours.
        """
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
        """One transaction per message; what fails alone is stored as internal_error.

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
                safe = self._internal_error(decision.raw, decision.uid, exc, "message_unstorable")
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
        delay = 0.5
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
                delay = min(delay * 2, 30.0)

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
