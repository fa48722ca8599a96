"""Between passes: how long the delivery loop may sleep, and the sleep itself.

The loop sleeps until the earliest of: a persisted due time, the end of the relay pause, a
freed slot under the per-minute cap or the daily budget, the next probe, closing the idle
relay connection, and delivery.poll_interval. New work and a stop request cut a sleep short,
except that new work does not during a relay pause: nothing can be planned or sent then, and
each wake used to probe the relay, so devices reporting through an outage turned the probe
every delivery.probe_interval into connections at the alert rate. The watchdog hears from a
sleeping loop every HEARTBEAT_S. On the way it records what holds the queue back, for
`alerts`, `queue` and `status`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from agent.dispatch.attempt import Attempt
from agent.dispatch.gate import Clock, RelayGate
from agent.dispatch.worker import OutboxWorker
from agent.liveness import HEARTBEAT_S, Stage
from agent.outbox import Outbox
from agent.planner import GroupingRules
from agent.submit import Submitter

if TYPE_CHECKING:
    from agent.settings import DeliverySettings

_TIMER_SLACK_S = 0.005


class Idle:
    """The loop's waits, cut short by new work or a stop request. Event loop only."""

    def __init__(
        self,
        db: OutboxWorker,
        submitter: Submitter,
        gate: RelayGate,
        attempt: Attempt,
        stage: Stage,
        *,
        delivery: DeliverySettings,
        rules: GroupingRules,
        idle_close: float,
        clock: Clock,
        mono: Clock,
    ) -> None:
        self._db = db
        self._submitter = submitter
        self._gate = gate
        self._attempt = attempt
        self._stage = stage
        self._delivery = delivery
        self._rules = rules
        # Seconds an unused relay connection stays open (smtp.idle_close).
        self._idle_close = idle_close
        self._clock = clock
        self._mono = mono
        self._wake = asyncio.Event()
        # Monotonic time of the next TCP probe while the pause allows probing.
        self._next_probe: float | None = None
        self.log = structlog.get_logger("faultmail.dispatch")

    def wake(self) -> None:
        """New work arrived: the current or next sleep ends now."""
        self._wake.set()

    def clear_wake(self) -> None:
        """A round of the loop starts: only work that arrives from now on cuts a sleep short."""
        self._wake.clear()

    async def wait(self, stopping: asyncio.Event) -> None:
        """Nothing more to do now: sleep until the next due thing, then probe the relay when
        paused and close its connection when unused for smtp.idle_close."""
        delivery, gate, attempt = self._delivery, self._gate, self._attempt
        wall, mono = self._clock(), self._mono()
        slot = gate.slot_wait(mono)
        # What holds the queue back, for `alerts`, `queue` and `status` (written on change).
        rules, paused, probing = self._rules, gate.pause_left(mono), gate.probing
        budget = gate.budget_wait(wall)

        def look(o: Outbox) -> float | None:
            next_due = o.next_due()
            o.record_gate(wall, paused, slot, probing, rules, budget)
            return next_due

        # One trip to the outbox thread (see Dispatcher.pass_once).
        next_due = await self._db(look)
        if budget is not None:
            # Over the daily budget nothing may go until the oldest sends leave the window.
            slot = budget if slot is None else max(slot, budget)
        if slot is not None and paused <= 0:
            # Over the cap, due mails are no reason to wake: only a freed slot is. (During a
            # relay pause a freed slot is no reason either: the pause's end and probes are.)
            await self.sleep(stopping, slot)
            return
        waits = [delivery.poll_interval]
        if paused > 0:
            waits.append(paused)
        if next_due is not None:
            # A persisted due time (wall) or the end of the relay pause (monotonic), whichever
            # is later; never longer than retry_max or the repeat window (clock steps).
            longest = max(delivery.retry_max, self._rules.repeat_window)
            waits.append(max(paused, min(next_due - wall, longest)))
        if probing:
            if self._next_probe is None:
                self._next_probe = mono + delivery.probe_interval
            waits.append(self._next_probe - mono)
        else:
            self._next_probe = None
        idle_close = self._idle_close
        if attempt.last_activity is not None:
            waits.append(attempt.last_activity + idle_close - mono)
        await self.sleep(stopping, max(0.0, min(waits)), wakeable=paused <= 0)
        mono = self._mono()
        if gate.probing and not stopping.is_set() and self._probe_due(mono):
            self._next_probe = None
            await self.probe_relay()
        if attempt.last_activity is not None and mono >= attempt.last_activity + idle_close:
            await self._submitter.close()
            attempt.last_activity = None

    def _probe_due(self, mono: float) -> bool:
        # A timer may fire a millisecond early (uvloop rounds to whole ms): no extra round.
        return self._next_probe is None or mono >= self._next_probe - _TIMER_SLACK_S

    async def probe_relay(self) -> None:
        """One cheap TCP probe; a relay that answers ends the pause at once."""
        if await self._submitter.probe():
            now = self._clock()
            expedited = await self._db(lambda o: o.expedite(now))
            self.log.info("relay_reachable_again", relay=self._submitter.relay, mails=expedited)
            self._gate.reopen()

    async def sleep(
        self, stopping: asyncio.Event, seconds: float, *, wakeable: bool = True
    ) -> None:
        """Sleep until new work (when `wakeable`), a stop request or the timeout, whichever
        comes first.

        Wakes at least every HEARTBEAT_S to tell the watchdog that an idle loop is alive.
        """
        waiters = [asyncio.ensure_future(stopping.wait())]
        if wakeable:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        left = seconds
        try:
            while True:
                chunk = min(left, HEARTBEAT_S)
                done, _ = await asyncio.wait(
                    waiters, timeout=chunk, return_when=asyncio.FIRST_COMPLETED
                )
                self._stage.beat()
                left -= chunk
                if done or left <= 0:
                    return
        finally:
            for waiter in waiters:
                waiter.cancel()
