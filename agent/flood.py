"""The flood guard: per-device rate limit and automatic block, before anything is parsed.

The first step of intake for every message (ingest → flood → parse → policy → outbox): one
flooding device costs a counter, not a row per message, and cannot starve the others.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.models import Admission, BlockEvent, RawMessage
from agent.sanitize import escaped_sample

if TYPE_CHECKING:
    from agent.settings import FloodSettings

# Messages whose topic has no usable UID are rate-limited (and counted) together under this name.
INVALID_UID = "(invalid-uid)"


# However slowly a bucket refills, a device quiet this long starts again with a full one: its
# state is forgotten (flood.burst / flood.rate may be hours; two idle days must not hold it).
FORGET_AFTER_MAX_S = 3600.0


@dataclass(slots=True)
class _Device:
    """What the guard remembers of one UID: its bucket, its recent arrivals, its samples."""

    tokens: float
    # Monotonic time of its last message: the bucket's refill point and its idleness.
    last: float
    recent: deque[float]
    samples: list[str] = field(default_factory=list)


class FloodGuard:
    """Per-device rate limit and automatic block, decided before anything is parsed or stored.

    A token bucket (flood.burst, refilled at flood.rate per second) admits normal traffic and
    suppresses a chatty device's excess; a device that sends more than flood.block_threshold
    messages within flood.block_window seconds is blocked (persisted by the outbox). Runs on
    the intake thread only.

    State is in memory, per UID, and bounded twice: at most flood.max_devices UIDs are
    tracked (a sweep over many UIDs makes the idlest give way, never the busiest), and a UID
    quiet for `forget_after` seconds is forgotten by `forget_idle`. Devices are kept in order
    of their last message, so both are O(what is dropped).

    Durations are measured on the monotonic clock (`RawMessage.arrived`): a wall-clock step
    back (NTP correcting a gateway that booted without an RTC) would otherwise give negative
    refills and silence every recently active device, critical alerts included, for as long
    as the step. Wall time (`received_at`) is used only for the stamps of a block event.
    """

    def __init__(self, settings: FloodSettings, blocked: set[str] | None = None) -> None:
        self._s = settings
        self._blocked: set[str] = set(blocked or ())
        # Least recently heard first.
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        # Idle this long, a device's state equals a fresh one (the window is over and the
        # bucket full again), capped so a very slow refill cannot keep it for days.
        self.forget_after = max(
            settings.block_window, min(settings.burst / settings.rate, FORGET_AFTER_MAX_S)
        )

    @property
    def blocked(self) -> frozenset[str]:
        return frozenset(self._blocked)

    @property
    def tracked(self) -> int:
        """How many UIDs the guard holds state for (at most flood.max_devices)."""
        return len(self._devices)

    def set_blocked(self, blocked: set[str]) -> None:
        """Take the block list from the outbox (the CLI may have changed it)."""
        for uid in self._blocked - blocked:
            # Unblocked by a technician: start with a clean slate.
            self._devices.pop(uid, None)
        self._blocked = set(blocked)

    def admit(self, uid: str, raw: RawMessage) -> tuple[Admission, BlockEvent | None]:
        if uid in self._blocked:
            return Admission.DROP, None
        now = raw.arrived
        device = self._devices.get(uid)
        if device is None:
            device = self._track(uid, now)
        else:
            self._devices.move_to_end(uid)
        recent = device.recent
        recent.append(now)
        while recent and recent[0] < now - self._s.block_window:
            recent.popleft()
        if len(device.samples) < self._s.samples:
            device.samples.append(_sample(raw.payload))
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
                samples=tuple(device.samples),
                reason=f"more than {self._s.block_threshold} messages within "
                f"{self._s.block_window:g} s",
            )
            # Blocked: the block list says everything from now on.
            del self._devices[uid]
            return Admission.BLOCK, event
        tokens = min(float(self._s.burst), device.tokens + (now - device.last) * self._s.rate)
        device.last = now
        if tokens >= 1.0:
            device.tokens = tokens - 1.0
            return Admission.ADMIT, None
        device.tokens = tokens
        return Admission.SUPPRESS, None

    def _track(self, uid: str, now: float) -> _Device:
        """Start tracking a UID; at max_devices the one quiet the longest gives way."""
        while len(self._devices) >= self._s.max_devices:
            self._devices.popitem(last=False)
        device = _Device(
            tokens=float(self._s.burst),
            last=now,
            recent=deque(maxlen=self._s.block_threshold + 1),
        )
        self._devices[uid] = device
        return device

    def forget_idle(self, now: float) -> None:
        """Drop the state of devices quiet for `forget_after` seconds (keeps memory bounded).

        `now` is on the clock of `RawMessage.arrived` (monotonic in the daemon).
        """
        devices = self._devices
        while devices:
            uid, device = next(iter(devices.items()))
            if now - device.last <= self.forget_after:
                break
            del devices[uid]


def _sample(payload: bytes) -> str:
    """A payload as the security team may safely read it: escaped, at most 200 characters."""
    return escaped_sample(payload, 200)
