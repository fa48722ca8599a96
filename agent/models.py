"""Typed records passed between the stages of the pipeline, and the states they move through."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from datetime import datetime

from agent.sanitize import valid_text

# What a device UID may look like: it becomes part of topics, logs, mail subjects and SQL rows.
# \Z, not $: "$" also matches before a final line break (used with .match: anchored at start).
UID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def safe_uid(uid: str | None) -> str | None:
    """`uid` if it has the shape of a device UID, else None (never stored or shown)."""
    return uid if uid is not None and UID_RE.match(uid) else None


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
    SILENCED = "silenced"  # a silence covered it: stored with the silence id, summarised at its end


class MailKind(enum.StrEnum):
    """What a mail says: a new problem, more of the same, its end, or a backlog summary."""

    ALERT = "alert"
    FOLLOWUP = "followup"
    RESOLVED = "resolved"
    DIGEST = "digest"
    # Not about alerts but about a device: the flood guard blocked it.
    SECURITY_NOTICE = "security-notice"
    BLOCK_NOTICE = "block-notice"
    SILENCE_NOTICE = "silence-notice"  # a silence began, or ended (with what it held)


# Bytes of a payload kept once it is known to be rejected: enough for forensics. A payload
# over the size limit is cut to this at ingest, before it is queued (RawMessage.size).
PAYLOAD_SAMPLE_BYTES = 512


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
    # The PUBLISH's retain flag: set on a message the broker replays from its retained store
    # because we subscribed, clear on one forwarded as it was published (MQTT 5 with Retain
    # As Published 0, as we subscribe, and 3.1.1 alike: MQTT-3.3.1-12, MQTT-3.3.1-9 in 3.1.1).
    retain: bool = False
    # The payload's size as received. None: len(payload). An oversized payload is not kept
    # whole: `payload` holds its first PAYLOAD_SAMPLE_BYTES and `size` says how large it was.
    size: int | None = None
    # Which connection it came by (agent.ingest.Session.source): acks go back the same way.
    # 0: the daemon's own session; others: a dead group member's session or held records.
    source: int = 0
    # Forwarded to us by a group member as the device's owner: handled here, never passed on.
    forwarded: bool = False

    @property
    def arrived(self) -> float:
        """When it arrived, on the clock durations are measured with (see received_mono)."""
        return self.received_mono or self.received_at

    @property
    def payload_size(self) -> int:
        """The size of the payload the device sent, whether or not all of it is kept."""
        return len(self.payload) if self.size is None else self.size


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


class Reason(enum.StrEnum):
    """Why a message did not become a pending alert: the first word of its stored reason.

    One spelling for every stage: parse rejects, intake rejects what a faultmail bug met or what
    killed it twice, policy suppresses what no route wants. Stages read the member, never the
    text (`Decision.cause`); the text (`Decision.reason`) is only stored and shown.
    """

    # parse: the topic or payload is not a valid fault
    BAD_UID = "bad_uid"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    TOO_DEEP = "too_deep"
    INVALID_JSON = "invalid_json"
    NOT_OBJECT = "not_object"
    UNKNOWN_FIELD = "unknown_field"
    UID_MISMATCH = "uid_mismatch"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    # parse or intake: a faultmail bug met this message (the type is the detail)
    INTERNAL_ERROR = "internal_error"
    # intake: the message was present at QUARANTINE_AFTER deaths of the intake
    QUARANTINED = "quarantined"
    # policy: valid, but no route wants it at this severity
    NO_ROUTE = "no_route"

    @property
    def suspicious(self) -> bool:
        """What a device pretending to be another would send (counted per device)."""
        return self is Reason.UID_MISMATCH

    def text(self, detail: str) -> str:
        """The stored reason: `<reason>: <detail>`, so operators can grep the first word."""
        return f"{self.value}: {detail}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload could not become a Fault. `uid` is the topic's UID when it was readable."""

    reason: Reason
    detail: str
    uid: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What policy decided for one parsed message, ready for the outbox.

    `cause` is the typed reason a stage acts on; `reason` is the text the outbox stores,
    built from it by `rejected` and `suppressed`.
    """

    raw: RawMessage
    fault: Fault | None
    state: AlertState
    reason: str | None = None
    recipients: tuple[str, ...] = ()
    uid: str | None = None
    cause: Reason | None = None

    @classmethod
    def rejected(
        cls, raw: RawMessage, cause: Reason, detail: str, uid: str | None = None
    ) -> Decision:
        """Not an alert: stored as rejected with `cause: detail`.

        Built from fields that are always storable, whatever the message held: the outbox
        keeps the payload bytes as its sample (a BLOB, never encoded), the topic is made valid
        text and a UID that is not one is left out.
        """
        return cls(
            raw=replace(raw, topic=valid_text(raw.topic)),
            fault=None,
            state=AlertState.REJECTED,
            reason=cause.text(detail),
            uid=safe_uid(uid),
            cause=cause,
        )

    @classmethod
    def suppressed(cls, raw: RawMessage, fault: Fault, cause: Reason, detail: str) -> Decision:
        """A valid alert that goes to nobody: stored as suppressed with `cause: detail`."""
        return cls(
            raw=raw,
            fault=fault,
            state=AlertState.SUPPRESSED,
            reason=cause.text(detail),
            uid=fault.uid,
            cause=cause,
        )


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
    # False: the device is only reported (code rotation), its alerts are still mailed.
    blocked: bool = True
    # Why: "flood" (the block threshold) or "code_rotation" (distinct codes in a window).
    cause: str = "flood"


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
