"""The group as this member sees it, and who owns what.

The control connection files every member's retained status, the lease and block changes
here (paho's thread); the intake asks which members are live (its thread) and the group
worker reads the rest, so every access holds one lock. Ownership is rendezvous hashing over
the live members: every member with the same view picks the same owner."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def rendezvous(key: str, members: Iterable[str]) -> str | None:
    """The member that highest-random-weight hashing gives `key`: the same on every member
    with the same view, and only the keys of a member that leaves move."""
    best: tuple[bytes, str] | None = None
    for member in members:
        weight = hashlib.sha256(f"{member}\x1f{key}".encode()).digest()
        if best is None or (weight, member) > best:
            best = (weight, member)
    return best[1] if best else None


@dataclass(slots=True)
class Member:
    state: str
    role: str
    since: float
    changed: float  # monotonic: when we saw its state change


class View:
    """Members, lease holder and block changes, as the control connection last saw them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, Member] = {}
        self._lease: str | None = None
        self._lease_seen = False
        self._blocked_events: list[tuple[str, bool, str]] = []

    def member_seen(self, instance: str, state: str, role: str, since: float) -> None:
        now = time.monotonic()
        with self._lock:
            old = self._members.get(instance)
            changed = now if old is None or old.state != state else old.changed
            self._members[instance] = Member(state, role, since, changed)

    def lease_seen(self, holder: str | None) -> None:
        with self._lock:
            self._lease = holder
            self._lease_seen = True

    def block_seen(self, uid: str, blocked: bool, reason: str) -> None:
        with self._lock:
            self._blocked_events.append((uid, blocked, reason))

    def take_blocked_events(self) -> list[tuple[str, bool, str]]:
        """The block changes seen since the last call: (uid, blocked, reason), in order."""
        with self._lock:
            events, self._blocked_events = self._blocked_events, []
        return events

    def live(self, instance: str) -> list[str]:
        """The members online, and `instance` (this member) in any case."""
        with self._lock:
            online = {m for m, v in self._members.items() if v.state == "online"}
        return sorted(online | {instance})

    def lease(self) -> tuple[str | None, bool]:
        """The lease holder (None: nobody), and whether the lease topic was heard at all."""
        with self._lock:
            return self._lease, self._lease_seen

    def members(self) -> dict[str, Member]:
        with self._lock:
            return dict(self._members)

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """The members (by name: state, role, since) and the lease holder, read together."""
        with self._lock:
            members = {
                name: {"state": m.state, "role": m.role, "since": m.since}
                for name, m in sorted(self._members.items())
            }
            return members, self._lease
