"""Who gets an alert, and whether it goes out at all: routes and the recipient allowlist.

Decides before anything reaches the outbox. Per-device rate limits and blocks hook in here too.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING

from agent.models import (
    Admission,
    AlertState,
    BlockEvent,
    Decision,
    Fault,
    RawMessage,
    Rejection,
)
from agent.parse import topic_matches
from agent.sanitize import escaped_sample

if TYPE_CHECKING:
    # Annotations only: settings imports Allowlist from here, so no run-time import back.
    from agent.settings import FloodSettings, Route

# RFC 5321 4.5.3.1: local part at most 64 octets, domain at most 255. Deliberately strict:
# recipients come only from the configuration, and nothing exotic is needed for internal
# addresses.
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,255}$")


def check_address(value: str) -> str:
    """A bare internal mailbox address (no display name), normalised to lower-case domain."""
    if not _ADDRESS_RE.match(value) or ".." in value or value.endswith("."):
        raise ValueError(f"{value!r} is not a plain e-mail address like ops@example.com")
    local, domain = value.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


class Allowlist:
    """Recipients we may mail: the mirror of the site firewall's 'internal addresses only' rule."""

    def __init__(self, domains: list[str], addresses: list[str]) -> None:
        self._exact = frozenset(d for d in domains if not d.startswith("*."))
        self._suffixes = tuple(d[1:] for d in domains if d.startswith("*."))
        self._addresses = frozenset(addresses)

    def allows(self, address: str) -> bool:
        try:
            normalised = check_address(address)
        except ValueError:
            return False
        domain = normalised.rsplit("@", 1)[1]
        return (
            normalised in self._addresses
            or domain in self._exact
            or (bool(self._suffixes) and domain.endswith(self._suffixes))
        )


class Policy:
    """Maps a parsed message to a Decision: pending (with recipients), suppressed or rejected."""

    def __init__(self, routes: list[Route], allowlist: Allowlist) -> None:
        # Split and checked once, not per message. Config validation already refused
        # recipients outside the allowlist; filtering again keeps the rule local and total.
        self._routes = [
            (
                route.min_severity.rank,
                [flt.split("/") for flt in route.topics],
                [addr for addr in route.to if allowlist.allows(addr)],
            )
            for route in routes
        ]

    def decide(self, raw: RawMessage, parsed: Fault | Rejection) -> Decision:
        if isinstance(parsed, Rejection):
            return Decision(
                raw=raw,
                fault=None,
                state=AlertState.REJECTED,
                reason=f"{parsed.reason}: {parsed.detail}",
                uid=parsed.uid,
            )
        recipients = self.recipients_for(raw.topic, parsed)
        if not recipients:
            return Decision(
                raw=raw,
                fault=parsed,
                state=AlertState.SUPPRESSED,
                reason="no_route: no route matches this topic at this severity",
                uid=parsed.uid,
            )
        return Decision(
            raw=raw, fault=parsed, state=AlertState.PENDING, recipients=recipients, uid=parsed.uid
        )

    def recipients_for(self, topic: str, fault: Fault) -> tuple[str, ...]:
        """Union of the recipients of every matching route, in config order, allowlisted only."""
        levels = topic.split("/")
        found: dict[str, None] = {}
        for min_rank, filters, recipients in self._routes:
            if fault.severity.rank > min_rank:
                continue
            if any(topic_matches(flt, levels) for flt in filters):
                found.update(dict.fromkeys(recipients))
        return tuple(found)


class FloodGuard:
    """Per-device rate limit and automatic block, decided before anything is parsed or stored.

    A token bucket (flood.burst, refilled at flood.rate per second) admits normal traffic and
    suppresses a chatty device's excess; a device that sends more than flood.block_threshold
    messages within flood.block_window seconds is blocked (persisted by the outbox). State is
    in memory, per UID, bounded by the window; runs on the intake thread only.

    Durations are measured on the monotonic clock (`RawMessage.arrived`): a wall-clock step
    back (NTP correcting a gateway that booted without an RTC) would otherwise give negative
    refills and silence every recently active device, critical alerts included, for as long
    as the step. Wall time (`received_at`) is used only for the stamps of a block event.
    """

    def __init__(self, settings: FloodSettings, blocked: set[str] | None = None) -> None:
        self._s = settings
        self._blocked: set[str] = set(blocked or ())
        self._tokens: dict[str, tuple[float, float]] = {}
        self._recent: dict[str, deque[float]] = {}
        self._samples: dict[str, list[str]] = {}

    @property
    def blocked(self) -> frozenset[str]:
        return frozenset(self._blocked)

    def set_blocked(self, blocked: set[str]) -> None:
        """Take the block list from the outbox (the CLI may have changed it)."""
        for uid in self._blocked - blocked:
            # Unblocked by a technician: start with a clean slate.
            self._recent.pop(uid, None)
            self._tokens.pop(uid, None)
            self._samples.pop(uid, None)
        self._blocked = set(blocked)

    def admit(self, uid: str, raw: RawMessage) -> tuple[Admission, BlockEvent | None]:
        if uid in self._blocked:
            return Admission.DROP, None
        now = raw.arrived
        recent = self._recent.setdefault(uid, deque(maxlen=self._s.block_threshold + 1))
        recent.append(now)
        while recent and recent[0] < now - self._s.block_window:
            recent.popleft()
        samples = self._samples.setdefault(uid, [])
        if len(samples) < self._s.samples:
            samples.append(_sample(raw.payload))
        if len(recent) > self._s.block_threshold:
            self._blocked.add(uid)
            span = max(now - recent[0], 1e-3)
            event = BlockEvent(
                uid=uid,
                topic=raw.topic,
                # The window's start in wall time: how long ago it was, not when the wall
                # clock said it was (that may have been stepped since).
                started_at=raw.received_at - (now - recent[0]),
                blocked_at=raw.received_at,
                rate_per_s=round(len(recent) / span, 1),
                count=len(recent),
                samples=tuple(samples),
                reason=f"more than {self._s.block_threshold} messages within "
                f"{self._s.block_window:g} s",
            )
            self._recent.pop(uid, None)
            self._samples.pop(uid, None)
            return Admission.BLOCK, event
        tokens, last = self._tokens.get(uid, (float(self._s.burst), now))
        tokens = min(float(self._s.burst), tokens + (now - last) * self._s.rate)
        if tokens >= 1.0:
            self._tokens[uid] = (tokens - 1.0, now)
            return Admission.ADMIT, None
        self._tokens[uid] = (tokens, now)
        return Admission.SUPPRESS, None

    def forget_idle(self, now: float) -> None:
        """Drop state of devices quiet for a whole window (keeps memory bounded).

        `now` is on the clock of `RawMessage.arrived` (monotonic in the daemon).
        """
        idle = [u for u, q in self._recent.items() if not q or q[-1] < now - self._s.block_window]
        for uid in idle:
            self._recent.pop(uid, None)
            self._samples.pop(uid, None)
            tokens = self._tokens.get(uid)
            if tokens is not None and now - tokens[1] > self._s.burst / self._s.rate:
                self._tokens.pop(uid, None)


def _sample(payload: bytes) -> str:
    """A payload as the security team may safely read it: escaped, at most 200 characters."""
    return escaped_sample(payload, 200)
