"""Typed records passed between the stages of the pipeline, and the states they move through."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the most severe; used to order the queue and compare with a route's minimum."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.ERROR: 1, Severity.WARNING: 2, Severity.INFO: 3}


class FaultState(enum.StrEnum):
    ACTIVE = "active"
    RESOLVED = "resolved"


class AlertState(enum.StrEnum):
    """Where an alert ended up; every received message ends in exactly one of these."""

    PENDING = "pending"
    SENT = "sent"
    SUPPRESSED = "suppressed"
    REJECTED = "rejected"
    DEAD = "dead"


class MailKind(enum.StrEnum):
    """What a mail says: a new problem, more of the same, its end, or a backlog summary."""

    ALERT = "alert"
    FOLLOWUP = "followup"
    RESOLVED = "resolved"
    DIGEST = "digest"
    # Not about alerts but about a device: the flood guard blocked it.
    SECURITY_NOTICE = "security-notice"
    BLOCK_NOTICE = "block-notice"


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One MQTT PUBLISH as ingest received it, before anything is trusted."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    received_at: float
    # Which broker connection delivered it: a PUBACK is only valid on that same connection.
    generation: int = 0
    # time.monotonic() at arrival, for rates and windows: NTP stepping the wall clock of a
    # gateway without an RTC must not drain or refill a token bucket. received_at stays the
    # stamp that is stored and shown. 0.0: not measured (tests, the CLI): received_at stands in.
    received_mono: float = 0.0

    @property
    def arrived(self) -> float:
        """When it arrived, on the clock durations are measured with (see received_mono)."""
        return self.received_mono or self.received_at


@dataclass(frozen=True, slots=True)
class Fault:
    """A validated, cleaned device fault."""

    uid: str
    code: str
    severity: Severity
    message: str
    state: FaultState = FaultState.ACTIVE
    device_ts: datetime | None = None
    seq: int | None = None
    details: dict[str, str | int | float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload could not become a Fault. `uid` is the topic's UID when it was readable."""

    reason: str
    detail: str
    uid: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What policy decided for one parsed message, ready for the outbox."""

    raw: RawMessage
    fault: Fault | None
    state: AlertState
    reason: str | None = None
    recipients: tuple[str, ...] = ()
    uid: str | None = None


class Admission(enum.StrEnum):
    """The flood guard's answer for one message, before it is even parsed."""

    ADMIT = "admit"
    SUPPRESS = "suppress"  # over the rate limit: counted, not stored
    DROP = "drop"  # from a blocked device: acknowledged and counted only
    BLOCK = "block"  # this message crossed the block threshold


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """A device the flood guard just blocked, with what the security team needs to know."""

    uid: str
    topic: str
    started_at: float
    blocked_at: float
    rate_per_s: float
    count: int
    samples: tuple[str, ...]
    reason: str


@dataclass
class DeviceDelta:
    """What one batch adds to a device's counters."""

    uid: str
    last_topic: str
    last_seen: float
    received: int = 0
    suppressed: int = 0
    dropped: int = 0
    rejected: int = 0
    suspicious: int = 0


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert as stored in the outbox, as compose needs it."""

    id: int
    topic: str
    uid: str
    seq: int | None
    code: str
    severity: Severity
    fault_state: FaultState
    message: str
    details: dict[str, str | int | float]
    device_ts: float | None
    received_at: float


@dataclass(frozen=True, slots=True)
class Mail:
    """A mail claimed for delivery: its fixed identity and the alerts it carries."""

    id: int
    message_id: str
    created_at: float
    recipients: tuple[str, ...]
    attempts: int
    alerts: tuple[Alert, ...]
    kind: MailKind = MailKind.ALERT
    # The Message-ID that opened this device + code's thread (In-Reply-To / References).
    thread_root: str | None = None
    # When the problem began (for a RESOLVED mail's duration).
    opened_at: float | None = None
    # Alerts of this device suppressed by the rate limit since its previous mail.
    suppressed_before: int = 0
    # For notices: what the notice says (see BlockEvent).
    notice: dict[str, object] | None = None
    # Its place in the queue: 0 (critical) first.
    severity_rank: int = 0


@dataclass(frozen=True, slots=True)
class Gauges:
    """Queue figures for metrics, STATUS= and `faultmail status`."""

    pending_alerts: int
    pending_mails: int
    dead_mails: int
    oldest_pending_age_s: float
    blocked_devices: int
    last_sent_at: float | None
