"""The flood guard: per-device rate limit and automatic block, before anything is parsed.

The first step of intake for every message (ingest → flood → parse → policy → outbox): one
flooding device costs a counter, not a row per message, and cannot starve the others.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from agent.models import Admission, BlockEvent, RawMessage
from agent.sanitize import escaped_sample

if TYPE_CHECKING:
    from agent.settings import FloodSettings

# Messages whose topic has no usable UID are rate-limited (and counted) together under this name.
INVALID_UID = "(invalid-uid)"


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
