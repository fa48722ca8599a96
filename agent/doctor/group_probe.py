"""What the broker says about a group, read for `faultmail doctor` (issue 17): the members'
retained ``<instance>/status`` and the standby ``lease`` under ``faultmail/<group>/``, and
whether it grants a shared subscription.

A throw-away clean session ``faultmail-<group>-<instance>-doctor`` (the broker family's `Probe`)
listens there for LISTEN_S seconds, so no member's session or share of the alerts is touched.
Every payload is another client's: it is parsed defensively and its text cut and cleaned
before anything shows it (`Seen`). The verdicts on it are in agent.doctor.group.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode

from agent.doctor.broker import Probe
from agent.sanitize import clean_text

# Retained messages arrive right after the SUBACK; live status changes within this are seen too.
LISTEN_S = 1.5
# Shown names and texts from other members' messages are cut to this.
_TEXT_CHARS = 64


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member's retained status, as far as it could be read."""

    instance: str
    state: str  # "online", "offline" or "unreadable"
    role: str = ""
    mode: str = ""
    since: float | None = None
    pid: int | None = None
    problem: str = ""  # why it is unreadable


@dataclass(frozen=True, slots=True)
class Lease:
    """The standby lease: who holds it (None: nobody), or why it could not be read."""

    holder: str | None = None
    since: float | None = None
    problem: str = ""


@dataclass
class Seen:
    """What the broker told the doctor's session."""

    protocol: str  # "5" or "3.1.1"
    share_flag: int | None = None  # CONNACK Shared Subscription Available; None: left out
    share_filter: str = ""
    share_reply: ReasonCode | None = None  # the SUBACK to share_filter; None: no SUBACK
    read_refused: list[str] = field(default_factory=list)  # group filters the broker refused
    members: dict[str, MemberStatus] = field(default_factory=dict)
    lease: Lease = field(default_factory=Lease)


def status_topic(group: str, instance: str) -> str:
    return f"faultmail/{group}/{instance}/status"


def lease_topic(group: str) -> str:
    return f"faultmail/{group}/lease"


def observe(probe: Probe, group: str, protocol: str) -> Seen:
    """Read the members' status and the lease for LISTEN_S seconds, then probe a shared
    subscription (last: a broker without them may hang up on the attempt)."""
    seen = Seen(protocol, share_filter=f"$share/{group}/faultmail/{group}/doctor")
    if protocol == "5":
        seen.share_flag = probe.connack_property("SharedSubscriptionAvailable")
    filters = [status_topic(group, "+"), lease_topic(group)]
    codes = probe.subscribe(filters)
    if codes is None:
        seen.read_refused = [f"{t} (no SUBACK)" for t in filters]
    else:
        seen.read_refused = [
            f"{t} ({rc})" for t, rc in zip(filters, codes, strict=False) if rc.is_failure
        ]
    probe.pump(lambda: False, LISTEN_S)
    for message in probe.messages:
        read_message(seen, group, message.topic, bytes(message.payload))
    replies = probe.subscribe([seen.share_filter])
    seen.share_reply = replies[0] if replies else None
    return seen


def read_message(seen: Seen, group: str, topic: str, payload: bytes) -> None:
    """File one message under the member it describes or the lease; later ones win."""
    levels = topic.split("/")
    if topic == lease_topic(group):
        seen.lease = parse_lease(payload)
    elif len(levels) == 4 and levels[:2] == ["faultmail", group] and levels[3] == "status":
        instance = _text(levels[2])
        status = parse_status(instance, payload)
        if status is None:
            seen.members.pop(instance, None)
        else:
            seen.members[instance] = status


def parse_status(instance: str, payload: bytes) -> MemberStatus | None:
    """A member's status payload: JSON {"state", "role", "mode", "since", ...} (a plain
    "offline" is read as offline too); None for an empty payload (the topic was cleared)."""
    if not payload:
        return None
    if payload.strip() in (b"offline", b"online"):
        return MemberStatus(instance, payload.strip().decode())
    try:
        doc = _json_object(payload)
    except ValueError as exc:
        return MemberStatus(instance, "unreadable", problem=str(exc))
    state = doc.get("state")
    if state not in ("online", "offline"):
        return MemberStatus(
            instance, "unreadable", problem=f"state is {_text(repr(state))}, not online/offline"
        )
    pid = doc.get("pid")
    return MemberStatus(
        instance,
        state,
        role=_text(doc.get("role")),
        mode=_text(doc.get("mode")),
        since=_time(doc.get("since")),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
    )


def parse_lease(payload: bytes) -> Lease:
    """The lease payload JSON {"instance", "since"}; empty means nobody holds it."""
    if not payload:
        return Lease()
    try:
        doc = _json_object(payload)
    except ValueError as exc:
        return Lease(problem=str(exc))
    holder = doc.get("instance")
    if not isinstance(holder, str) or not holder:
        return Lease(problem="it names no instance")
    return Lease(_text(holder), _time(doc.get("since")))


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {_text(str(exc))}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _text(value: Any) -> str:
    """Text from another member's message, printable and short; "" when not text."""
    return clean_text(value, _TEXT_CHARS) if isinstance(value, str) else ""


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None
