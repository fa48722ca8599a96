"""The ingest half of the pipeline, per message: flood → parse → policy (agent.triage); then one
outbox commit per batch (agent.commit), in a group mode the forwards and held records settled at
the broker (agent.handoff), then the MQTT acks in arrival order.

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
from collections.abc import Callable, Iterable

import structlog

from agent.bounds import OutboxBounds
from agent.commit import BatchCommitter
from agent.failpoints import Failpoints
from agent.handoff import GroupLink, Handoff
from agent.liveness import HEARTBEAT_S, Stage
from agent.metrics import Metrics
from agent.models import AlertState, Decision, DeviceDelta, RawMessage, Severity
from agent.outbox import Outbox
from agent.planner import BlockNotice
from agent.quarantine import QUARANTINE_AFTER, Deaths, PoisonList
from agent.sanitize import truncate
from agent.triage import Rules, Triage

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
        rules: Rules,
        ack: Callable[[RawMessage], bool],
        on_stored: Callable[[bool], None],
        bounds: OutboxBounds,
        failpoints: Failpoints | None = None,
        max_batch: int = 1000,
        metrics: Metrics | None = None,
        stage: Stage | None = None,
        group: GroupLink | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._stage = stage or Stage("intake")
        self._poison = PoisonList(outbox)
        # The messages being handled: what a death is blamed on.
        self._current: list[RawMessage] = []
        self._failpoints = failpoints or Failpoints()
        self._handoff = (
            Handoff(group, outbox, rules.flood, self._failpoints) if group is not None else None
        )
        self._triage = Triage(outbox, rules, self._poison, self._handoff)
        self._ack = ack
        self._on_stored = on_stored
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[RawMessage | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._committer = BatchCommitter(
            outbox,
            bounds,
            stopping=self._stopping,
            stage=self._stage,
            metrics=self._metrics,
            unstorable=lambda d, exc: self._triage.internal_error(
                d.raw, d.uid, exc, "message_unstorable"
            ),
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
        triaged = self._triage.sort(batch, deaths)
        decisions, devices, blocks = triaged.decisions, triaged.devices, triaged.blocks
        self._failpoints.hit("after_receive_before_commit")
        if not self._committer.commit(decisions, devices, blocks):
            return
        if self._handoff is not None and not self._handoff.settle(
            triaged.published, decisions, self._stopping, self._stage
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
