"""The outbox's bounds: what gives way, in a documented order, when it grows past its caps.

Order, from first to last:
1. finished history (sent, suppressed, rejected, dead) older than keep_days, every hour;
2. when the file exceeds max_bytes: finished history, oldest first, regardless of age;
3. when pending alerts exceed max_pending: pending info, then warning, then error alerts,
   oldest first; each becomes dead with reason "evicted: ..." and one audit row lists them;
4. never a critical alert: when only critical alerts are left (or history cannot free enough
   bytes), ingest stops acknowledging MQTT messages, so the broker keeps them, until
   delivery makes room.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from agent.errors import OutboxFull
from agent.outbox import Housekeeping

if TYPE_CHECKING:
    from agent.settings import OutboxSettings

# Re-measuring the outbox on every batch would cost more than the batch; once a second the
# estimate (last measure + what was stored since) is exact enough.
_MEASURE_EVERY_S = 1.0
_DAY = 86400.0


class OutboxBounds:
    """Keeps one outbox within its caps. Used from the intake thread (make_room) and from the
    dispatcher's outbox thread (housekeeping), each with its own connection."""

    def __init__(self, settings: OutboxSettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._measured_at = -1e18
        self._pending = 0
        self._bytes = 0
        self.log = structlog.get_logger("faultmail.bounds")

    def make_room(self, outbox: Housekeeping, incoming: int) -> None:
        """Called before storing `incoming` alerts; raises OutboxFull when ingest must pause."""
        now = self._clock()
        if now - self._measured_at >= _MEASURE_EVERY_S:
            self._pending = outbox.pending_count()
            self._bytes = outbox.used_bytes()
            self._measured_at = now
        s = self._settings
        if self._bytes > s.max_bytes:
            self._shrink(outbox, now)
        excess = self._pending + incoming - s.max_pending
        if excess > 0:
            evicted = outbox.evict_pending(excess, now, f"outbox.max_pending = {s.max_pending}")
            if evicted:
                self.log.error(
                    "alerts_evicted",
                    count=len(evicted),
                    max_pending=s.max_pending,
                    fix="restore the relay, or raise outbox.max_pending",
                )
            self._pending -= len(evicted)
            if len(evicted) < excess:
                raise OutboxFull(
                    f"{self._pending} critical alerts pending (outbox.max_pending = "
                    f"{s.max_pending}); not acknowledging new messages until some are delivered"
                )
        self._pending += incoming

    def _shrink(self, outbox: Housekeeping, now: float) -> None:
        s = self._settings
        freed = 0
        while outbox.used_bytes() > s.max_bytes:
            pruned = outbox.prune_history(before=now + 1, limit=2000)
            if not pruned:
                break  # nothing finished left to give way (or only rows dated after now)
            freed += pruned
        self._bytes = outbox.used_bytes()
        if freed:
            self.log.warning("history_pruned_for_space", alerts=freed, max_bytes=s.max_bytes)
        if self._bytes > s.max_bytes:
            raise OutboxFull(
                f"outbox holds {self._bytes} bytes of pending mail (outbox.max_bytes = "
                f"{s.max_bytes}); not acknowledging new messages until some are delivered"
            )

    def housekeeping(self, outbox: Housekeeping) -> int:
        """Delete finished history older than keep_days. Returns how many alerts went."""
        before = self._clock() - self._settings.keep_days * _DAY
        total = 0
        while (deleted := outbox.prune_history(before=before)) > 0:
            total += deleted
        if total:
            self.log.info("history_pruned", alerts=total, keep_days=self._settings.keep_days)
        return total
