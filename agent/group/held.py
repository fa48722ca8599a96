"""Held records: an accepted alert is published retained under `held/<instance>/<identity>`
before the device's message is acknowledged, and cleared once the alert is mailed (or
otherwise settled), so that a member that dies for good strands nothing it had acknowledged.
The adopter of such a member feeds its held records into its own intake, and clears each one
when the intake acknowledges it.

The intake publishes a batch's records after its commit, and until it has, the delivery loop may
mail those alerts: the sweep must not clear a record (and mark it cleared for good) before it is
out, or the record outlives its alert and whoever adopts this member mails that alert again. So
the intake chooses and publishes under `choosing()`, the lock each sweep round holds: a record
goes out before the round that clears it, or not at all for an alert settled by then."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import structlog

from agent.group.control import Control
from agent.group.names import Names
from agent.group.records import held_record, read_held
from agent.identity import decision_identity
from agent.models import Decision, RawMessage
from agent.outbox import Outbox

# Acks of held records we adopted: cleared on the control connection, not PUBACKed.
HELD_SOURCE = -1
# Settled alerts whose held records are cleared per outbox read.
_CLEAR_BATCH = 500

Log = structlog.typing.FilteringBoundLogger


class HeldRecords:
    """This member's held records, and the ones it adopted from others."""

    def __init__(
        self,
        names: Names,
        control: Control,
        outbox: Outbox,
        sink: Callable[[RawMessage], None],
        clock: Callable[[], float],
        log: Log,
    ) -> None:
        self._names = names
        self._control = control
        self._outbox = outbox
        self._sink = sink
        self._clock = clock
        self.log = log
        self._mids = itertools.count(1)
        self._topics: dict[int, str] = {}  # mid of an adopted record -> its topic
        self._choosing = threading.Lock()

    def choosing(self) -> AbstractContextManager[Any]:
        """Held while the intake chooses a batch's records and publishes them (see above)."""
        return self._choosing

    def hold(self, decision: Decision) -> Any:
        """Publish an accepted alert's held record (retained), keyed by its identity."""
        identity = decision_identity(decision, self._names.group)
        record = held_record(decision.raw)
        return self._control.publish(self._names.held_prefix() + identity, record)

    def adopt(self, topic: str, payload: bytes) -> None:
        """A held record of a member we adopted: into our intake as if it came from MQTT."""
        record = read_held(payload, self._clock)
        if record is None:
            self.log.warning("held_record_invalid", topic=topic)
            self._control.publish(topic, b"")
            return
        mid = next(self._mids)
        self._topics[mid] = topic
        self._sink(
            RawMessage(
                topic=record.topic,
                payload=record.payload,
                mid=mid,
                qos=1,
                dup=True,
                received_at=record.received_at,
                received_mono=time.monotonic(),
                source=HELD_SOURCE,
            )
        )

    def ack(self, raw: RawMessage) -> bool:
        """An adopted record's alert is stored: its record is cleared."""
        topic = self._topics.pop(raw.mid, None)
        if topic is not None:
            self._control.publish(topic, b"")
        return True

    def clear_settled(self) -> None:
        """Held records of alerts that are mailed (or otherwise settled) are cleared."""
        prefix = self._names.held_prefix()
        while True:
            with self._choosing:
                done = self._outbox.mirror_done(_CLEAR_BATCH)
                for _, identity in done:
                    self._control.publish(prefix + identity, b"")
                self._outbox.mark_mirror_cleared([alert_id for alert_id, _ in done])
            if len(done) < _CLEAR_BATCH:
                return
