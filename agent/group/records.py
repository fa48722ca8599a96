"""What a member writes in the group's retained messages, and what it reads in the others':
a member's status, the standby lease, a block, a held record.

Reading never raises: these topics are writable by any client with the group's ACL, so a
garbled message counts as an empty one (an offline member, no lease holder, no reason) or, for
a held record, as invalid."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.models import RawMessage


@dataclass(slots=True)
class OwnStatus:
    """What this member says about itself on its status topic; the lease changes its role."""

    instance: str
    mode: str
    role: str
    since: float

    def payload(self, state: str) -> str:
        return json.dumps(
            {
                "state": state,
                "instance": self.instance,
                "mode": self.mode,
                "role": self.role,
                "since": self.since,
                "pid": os.getpid(),
            }
        )


def read_status(payload: bytes) -> tuple[str, str, float]:
    """Another member's (state, role, since); any state but "online" counts as offline."""
    info = read_json(payload) if payload else {}
    state = "online" if info.get("state") == "online" else "offline"
    role = str(info.get("role", "?"))
    since = info.get("since")
    return state, role, float(since) if isinstance(since, int | float) else 0.0


def lease_payload(instance: str, since: float) -> str:
    return json.dumps({"instance": instance, "since": since})


def lease_holder(payload: bytes) -> str | None:
    """The lease holder's instance; None when the lease is empty (nobody holds it)."""
    holder = read_json(payload).get("instance") if payload else None
    return holder if isinstance(holder, str) else None


def block_payload(uid: str, by: str, at: float) -> str:
    return json.dumps({"uid": uid, "by": by, "at": at, "reason": "blocked"})


def block_reason(payload: bytes) -> str:
    return str(read_json(payload).get("reason", "")) if payload else ""


def held_record(raw: RawMessage) -> str:
    """A device message as its held record keeps it, to be fed in again by an adopter."""
    return json.dumps(
        {
            "topic": raw.topic,
            "payload": base64.b64encode(raw.payload).decode("ascii"),
            "received_at": raw.received_at,
        }
    )


@dataclass(frozen=True, slots=True)
class HeldRecord:
    """A held record read back: the device message's topic, payload and reception time."""

    topic: str
    payload: bytes
    received_at: float


def read_held(payload: bytes, clock: Callable[[], float]) -> HeldRecord | None:
    """A held record; None when it is not one (the caller clears it). A record without its
    reception time is taken as received now."""
    info = read_json(payload)
    try:
        return HeldRecord(
            str(info["topic"]),
            base64.b64decode(str(info["payload"]), validate=True),
            float(info.get("received_at") or clock()),
        )
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None


def read_json(payload: bytes) -> dict[str, Any]:
    """A JSON object; {} for anything else."""
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
