"""What each message of a batch becomes before the commit: flood guard → parse → policy.

Per message, in arrival order: its topic made valid text, its device found, in a shared group
handed to the member that owns the device (agent.handoff), counted against its device, then
admitted by the flood guard, parsed and decided by the policy. A message already convicted as
poison (agent.quarantine) is quarantined instead of decided.

One message's trouble stays with that message (issue #12): an exception while admitting,
parsing or deciding it makes it `rejected` with reason `internal_error: <type>`, and the others
go on. What leaves `Triage.sort` must end the stage: OutboxCorrupt, or a bug outside the
handling of single messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from agent.errors import OutboxCorrupt, OutboxError
from agent.flood import INVALID_UID, FloodGuard
from agent.handoff import Handoff
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
from agent.quarantine import LOG_SAMPLE_CHARS, Deaths, PoisonList
from agent.sanitize import escaped_sample, valid_text


@dataclass(frozen=True, slots=True)
class NoticeRouting:
    """Where block notices go, and what their Message-IDs are made of."""

    security: tuple[str, ...]
    gateway_id: str
    domain: str


@dataclass(frozen=True, slots=True)
class Rules:
    """What a message is decided by: the topic filters its device comes from, the parse limits,
    the flood guard, the routes and allowlist, and where block notices go."""

    policy: Policy
    filters: list[str]
    limits: ParseLimits
    flood: FloodGuard
    notices: NoticeRouting


@dataclass(slots=True)
class Triaged:
    """What a batch became: everything the commit stores, and what a group must publish."""

    decisions: list[Decision] = field(default_factory=list)
    devices: dict[str, DeviceDelta] = field(default_factory=dict)
    blocks: list[BlockNotice] = field(default_factory=list)
    # Forwards to other members (group modes): the broker must have them before the acks.
    published: list[Any] = field(default_factory=list)


class Triage:
    """Decides each message of a batch. Runs on the intake thread only."""

    def __init__(
        self,
        outbox: Outbox,
        rules: Rules,
        poison: PoisonList,
        handoff: Handoff | None,
    ) -> None:
        self._outbox = outbox
        self._policy = rules.policy
        self._filters = rules.filters
        self._limits = rules.limits
        self._flood = rules.flood
        self._notices = rules.notices
        self._poison = poison
        self._handoff = handoff
        self._blocked_checked = -1e18
        self.log = structlog.get_logger("faultmail.intake")

    def sort(self, batch: list[RawMessage], deaths: Deaths) -> Triaged:
        """Each message decided and counted against its device, or forwarded."""
        self._refresh_blocked(batch[-1].arrived)
        out = Triaged()
        for raw in batch:
            if not raw.topic.isascii():
                # Ingest decodes topics with "replace"; this keeps one from anywhere else out
                # of the counters, notices and logs too.
                raw = replace(raw, topic=valid_text(raw.topic))
            uid = uid_from_topic(raw.topic, self._filters)
            key = safe_uid(uid) or INVALID_UID
            if self._handoff is not None and self._handoff.forwarded(raw, uid, key, out.published):
                continue
            delta = out.devices.get(key)
            if delta is None:
                delta = out.devices[key] = DeviceDelta(key, raw.topic, raw.received_at)
            delta.received += 1
            delta.last_seen, delta.last_topic = raw.received_at, raw.topic
            convicted = self._poison.convicted(raw, deaths)
            if convicted is not None:
                decision: Decision | None = self._poison.quarantine(raw, uid, *convicted)
            else:
                try:
                    decision = self._decide(key, raw, delta, out.blocks)
                except Exception as exc:
                    decision = self.internal_error(raw, uid, exc, "message_failed")
            if decision is None:
                continue
            if decision.state is AlertState.REJECTED:
                delta.rejected += 1
                if decision.cause is not None and decision.cause.suspicious:
                    delta.suspicious += 1
            out.decisions.append(decision)
        return out

    def internal_error(
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
