"""Group modes at the intake: what it hands the group runtime (agent.group), and when.

Before the decisions, a message of a device another member owns goes to that member instead.
After the commit, a held record goes out for each stored alert that is due one. The broker must
have the forwards and the records before the acks: the intake acknowledges the batch only once
`settle` says it has.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import structlog

from agent.errors import OutboxCorrupt, OutboxError
from agent.failpoints import Failpoints
from agent.flood import FloodGuard
from agent.identity import decision_identity
from agent.liveness import Stage
from agent.models import AlertState, Decision, RawMessage
from agent.outbox import Outbox


class GroupLink(Protocol):
    """What the intake asks of the group runtime (agent.group.Group) in a group mode."""

    def owner_of(self, uid: str) -> str | None: ...

    def forward(self, raw: RawMessage, owner: str) -> Any: ...

    def hold(self, decision: Decision) -> Any: ...

    def choosing(self) -> AbstractContextManager[Any]: ...

    def settle(self, infos: Sequence[Any], stopping: threading.Event, stage: Stage) -> bool: ...


class Handoff:
    """The intake's side of a group mode. Runs on the intake thread only."""

    def __init__(
        self, group: GroupLink, outbox: Outbox, flood: FloodGuard, failpoints: Failpoints
    ) -> None:
        self._group = group
        self._outbox = outbox
        self._flood = flood
        self._failpoints = failpoints
        self.log = structlog.get_logger("faultmail.intake")

    def forwarded(self, raw: RawMessage, uid: str | None, key: str, out: list[Any]) -> bool:
        """Shared mode: a message of a device another member owns goes to that member.

        A message forwarded to us stays here (views of who is online may differ for a moment;
        passing it on again could bounce it), and so does a blocked device's (counted here)."""
        if raw.forwarded or uid is None or key in self._flood.blocked:
            return False
        try:
            owner = self._group.owner_of(key)
            if owner is None:
                return False
            out.append(self._group.forward(raw, owner))
        except Exception as exc:
            self.log.error(
                "forward_failed", topic=raw.topic, error=type(exc).__name__, exc_info=exc
            )
            return False
        return True

    def settle(
        self,
        published: list[Any],
        decisions: list[Decision],
        stopping: threading.Event,
        stage: Stage,
    ) -> bool:
        """After the commit, which tells new alerts from duplicates of settled ones: add the
        held records to what was forwarded, and wait until the broker has all of it.

        False: it may not have; the batch must stay unacknowledged."""
        published += self._held_records(decisions)
        return not published or self._group.settle(published, stopping, stage)

    def _held_records(self, decisions: list[Decision]) -> list[Any]:
        """A held record (agent.group) for each stored alert that is pending and due one: new
        ones, and redelivered ones whose record may never have left. Chosen and published
        under the group's lock against its sweep (agent.group.held): an alert mailed
        meanwhile is either not chosen or has its record cleared by the next sweep."""
        pending = {
            decision_identity(d, self._outbox.group): d
            for d in decisions
            if d.state is AlertState.PENDING and d.fault is not None
        }
        if not pending:
            return []
        with self._group.choosing():
            try:
                due = self._outbox.still_held(list(pending))
            except OutboxCorrupt:
                raise
            except OutboxError as exc:
                # Every record then: a stale one costs a duplicate some day, a missing one an
                # alert.
                self.log.warning("held_records_unreadable", error=str(exc))
                due = set(pending)
            self._failpoints.hit("held_record_late")
            held = [self._hold(d) for identity, d in pending.items() if identity in due]
        return [info for info in held if info is not None]

    def _hold(self, decision: Decision) -> Any:
        try:
            return self._group.hold(decision)
        except Exception as exc:
            self.log.error(
                "held_record_failed",
                topic=decision.raw.topic,
                exc_info=exc,
                error=type(exc).__name__,
            )
            return None
