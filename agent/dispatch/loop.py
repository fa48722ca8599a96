"""The delivery loop: plan → claim → deliver in lanes → idle until woken; housekeeping cadence.

Runs on the asyncio loop; every outbox call runs on the outbox's own worker thread. One mail
is the unit of work (see agent.dispatch.attempt): whatever goes wrong while handling it is
recorded against that mail and the loop carries on with the next. Only the outbox itself
failing stops a pass: unavailable storage backs off, corruption ends the loop.

In-process durations (relay pause, cap, housekeeping, idle close, probes) are on the monotonic
clock; persisted due times are wall time, clamped after a wall-clock step backwards. Between
passes the loop sleeps in agent.dispatch.idle.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from agent.bounds import OutboxBounds
from agent.compose import ComposeContext
from agent.dispatch.alarm import AuthAlarm
from agent.dispatch.attempt import Attempt
from agent.dispatch.gate import Clock, RelayGate
from agent.dispatch.idle import Idle
from agent.dispatch.lanes import Lanes
from agent.dispatch.outcome import Outcomes
from agent.dispatch.planning import plan_pass
from agent.dispatch.worker import OutboxWorker
from agent.errors import OutboxCorrupt, OutboxError
from agent.failpoints import Failpoints
from agent.liveness import Stage
from agent.metrics import Metrics
from agent.models import Mail
from agent.outbox import Outbox
from agent.outbox.limits import recipients_sent_since
from agent.planner import GroupingRules
from agent.settings.providers import BUDGET_WINDOW_S, effective_limits
from agent.signing import DkimSigner
from agent.submit import Submitter

if TYPE_CHECKING:
    from agent.settings import DeliverySettings, Settings

HOUSEKEEPING_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """What delivery needs from the configuration, read once at startup."""

    delivery: DeliverySettings
    compose: ComposeContext
    envelope_sender: str
    message_id_domain: str
    # Seconds an unused relay connection stays open (smtp.idle_close).
    idle_close: float = 30.0
    # Mails in flight at once, one relay connection each (smtp.connections).
    concurrency: int = 1
    grouping: GroupingRules = field(default_factory=GroupingRules)
    # The effective provider limits (agent.settings.providers); None: what delivery says.
    per_minute: int | None = None
    # Recipients per rolling 24 h; 0: no budget.
    daily_recipients: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchConfig:
        smtp, mail = settings.smtp, settings.mail
        grouping = GroupingRules(
            mail.repeat_window,
            mail.digest_threshold,
            device_budget=mail.device_budget,
            device_window=mail.device_window,
            rotation_codes=mail.rotation_codes,
            security=tuple(settings.flood.notify),
            silence_notify=tuple(dict.fromkeys(a for r in settings.routes for a in r.to)),
            maintenance=tuple(w.window() for w in settings.maintenance),
        )
        limits = effective_limits(smtp, settings.delivery)
        return cls(
            delivery=settings.delivery,
            compose=ComposeContext.from_settings(settings),
            envelope_sender=smtp.sender_address,
            message_id_domain=smtp.sender_domain,
            idle_close=smtp.idle_close,
            concurrency=limits.connections,
            grouping=grouping,
            per_minute=limits.per_minute,
            daily_recipients=limits.daily_recipients,
        )


@dataclass(slots=True)
class _Batch:
    """The mails one pass claimed, shared by its delivery lanes."""

    todo: deque[Mail]
    attempted: bool = False
    # A mail less severe than critical was handed out (see Dispatcher._lane).
    lesser_taken: bool = False
    relay_down: bool = False
    error: OutboxError | None = None
    # Set when the last mail was handed out (see agent.dispatch.lanes).
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def halted(self) -> bool:
        return self.relay_down or self.error is not None

    def take(self) -> Mail:
        mail = self.todo.popleft()
        if not self.todo:
            self.drained.set()
        return mail

    def close(self) -> None:
        """The pass goes on without the lanes still busy: they stop after their mail."""
        self.todo.clear()
        self.drained.set()


class Dispatcher:
    """Delivers due mails from the outbox through a Submitter and records every attempt."""

    def __init__(
        self,
        db: OutboxWorker,
        submitter: Submitter,
        config: DispatchConfig,
        *,
        signer: DkimSigner | None = None,
        bounds: OutboxBounds | None = None,
        clock: Clock = time.time,
        mono: Clock = time.monotonic,
        rng: random.Random | None = None,
        failpoints: Failpoints | None = None,
        metrics: Metrics | None = None,
        stage: Stage | None = None,
    ) -> None:
        self._db = db
        self._submitter = submitter
        self._config = config
        self._bounds = bounds
        self._clock = clock
        self._mono = mono
        self._failpoints = failpoints or Failpoints()
        self._stage = stage or Stage("dispatch")
        self._gate = RelayGate(
            config.delivery,
            mono,
            rng,
            per_minute=config.per_minute,
            daily_recipients=config.daily_recipients,
        )
        metrics = metrics or Metrics()
        self._alarm = AuthAlarm(
            db, submitter, delivery=config.delivery, clock=clock, metrics=metrics
        )
        self._outcomes = Outcomes(
            db,
            submitter,
            self._gate,
            self._alarm,
            delivery=config.delivery,
            clock=clock,
            mono=mono,
            metrics=metrics,
        )
        self._attempt = Attempt(
            submitter,
            config.compose,
            self._outcomes,
            delivery=config.delivery,
            envelope_sender=config.envelope_sender,
            signer=signer,
            clock=clock,
            mono=mono,
            failpoints=self._failpoints,
        )
        self._idle = Idle(
            db,
            submitter,
            self._gate,
            self._attempt,
            self._stage,
            delivery=config.delivery,
            rules=config.grouping,
            idle_close=config.idle_close,
            clock=clock,
            mono=mono,
        )
        stage = self._stage
        self._lanes = Lanes(
            config.concurrency, self._idle.wake, hung_after=stage.stall_after, on_hung=stage.failed
        )
        self._next_housekeeping = -1e18  # monotonic
        self._preempt = False
        # The last pass planned and claimed the critical devices and mails alone.
        self._critical_pass = False
        self._outbox_failures = 0
        self.log = structlog.get_logger("faultmail.dispatch")

    def wake(self, urgent: bool = False) -> None:
        """New work arrived (call on the loop's thread; other threads use call_soon_threadsafe).

        urgent: a critical alert was stored. Claimed mails less severe than critical stop being
        handed out (those in flight finish, and each pass hands out its first), so the next
        pass plans and sends it first. A storm of critical alerts does not thrash: critical
        mails are never held back for another, and lesser ones still go out every other pass.
        """
        if urgent:
            self._preempt = True
        self._idle.wake()

    @property
    def relay_paused(self) -> bool:
        return self._gate.paused

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set. OutboxCorrupt (and any bug outside one mail's
        handling) ends the loop by propagating: the supervisor takes the process down."""
        try:
            await self._alarm.clear_stale()
            await self._loop(stopping)
        except Exception as exc:
            self._stage.failed(exc)
            raise
        finally:
            await self._lanes.settle()
            await self._submitter.close()
        await self._outcomes.unrecorded.give_up()
        self._stage.stopped()

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._idle.clear_wake()
            self._stage.beat()
            try:
                await self._outcomes.unrecorded.record()
                await self._housekeeping()
                if await self.pass_once(stopping):
                    self._failpoints.hit("dispatch_crash")
                else:
                    await self._idle.wait(stopping)
                self._outbox_failures = 0
            except OutboxCorrupt:
                # Retrying cannot mend a damaged file; its message says what to do.
                raise
            except OutboxError as exc:
                # Disk full or read-only: never let the delivery loop die; retry with backoff
                # (1 s doubling to 30 s) so a long outage does not flood the journal.
                self._outbox_failures += 1
                delay = min(30.0, 2.0 ** (self._outbox_failures - 1))
                self.log.error(
                    "outbox_error",
                    error=str(exc),
                    retry_in_s=delay,
                    unrecorded_sent=len(self._outcomes.unrecorded),
                )
                await self._idle.sleep(stopping, delay)

    async def pass_once(self, stopping: asyncio.Event) -> bool:
        """Plan new mails and try every due one once. True when a mail was attempted.

        Up to `concurrency` mails are in flight at once (one relay connection each), so
        composing, signing and recording one mail overlaps the relay's work on another.
        """
        config = self._config
        gateway, rules = config.compose.gateway_id, config.grouping
        self._lanes.raise_left_error()
        if self._gate.paused:
            # Planning waits too: what piles up meanwhile can then become one digest.
            return False
        # While the relay refuses our login, one mail tries it per interval, not one per lane;
        # a lane still finishing a mail of an earlier pass keeps its connection (see lanes).
        lanes = min(1 if self._gate.auth_failing else config.concurrency, self._lanes.free)
        if lanes <= 0:
            return False
        now = self._clock()
        # Woken for a critical alert: this pass plans the critical alerts' devices and sends
        # the critical mails alone, so the alert does not wait for the whole backlog to be
        # planned and numbered; the next pass, straight after, takes the rest. At most every
        # other pass is such a pass: a critical alert before every pass must not keep the
        # other devices' alerts from ever being planned and sent.
        urgent, self._preempt = self._preempt, False
        critical_first = urgent and not self._critical_pass
        self._critical_pass = critical_first
        if critical_first:
            self._idle.wake()
        # After a wall-clock step backwards no persisted due time may lie further ahead than
        # its longest possible delay: a 1 h step must not hold mail for 1 h.
        retry_max, window = config.delivery.retry_max, rules.repeat_window
        domain = config.message_id_domain
        budget_since = now - BUDGET_WINDOW_S if self._gate.daily_recipients > 0 else None
        # delivery.batch_size mails per connection: the claim reads every due mail to share
        # the turns fairly, so its cost is per pass, whatever the pass takes.
        claim = config.delivery.batch_size * lanes
        # Mails a lane left behind is still delivering: due in the outbox, never claimed twice.
        in_flight = frozenset(self._lanes.in_flight)

        def claimed(o: Outbox, critical_only: bool = False) -> list[Mail]:
            due = o.claim_due(now, claim + len(in_flight), critical_only=critical_only)
            return [m for m in due if m.id not in in_flight][:claim]

        def prepare(o: Outbox) -> tuple[tuple[int, float | None] | None, list[Mail]]:
            # One trip to the outbox thread for the pass's steps, not one each: every trip
            # wakes both threads, which costs as much CPU as a step itself.
            o.clamp_due(now, retry_max, window)
            plan_pass(o, now, domain, gateway, rules, critical_first=critical_first)
            budget = None if budget_since is None else recipients_sent_since(o, budget_since)
            mails = claimed(o, critical_only=True) if critical_first else []
            return budget, mails or claimed(o)

        budget, mails = await self._db(prepare)
        if budget is not None:
            self._gate.count_budget(*budget)
        batch = _Batch(deque(mails))
        workers = min(lanes, len(mails))
        await self._lanes.run(batch, lambda: self._lane(batch, stopping), workers)
        if batch.error is not None:
            raise batch.error
        return batch.attempted and not batch.relay_down

    async def _lane(self, batch: _Batch, stopping: asyncio.Event) -> None:
        """One delivery lane: takes the next claimed mail until the batch ends or halts."""
        while batch.todo and not (batch.halted or stopping.is_set()):
            lesser = batch.todo[0].severity_rank > 0
            # A critical alert came: lesser mails wait for the next pass, except the first of
            # this one, so that a critical alert in every pass cannot hold them all for ever.
            if self._preempt and lesser and batch.lesser_taken:
                return
            if not self._gate.take_slot(len(batch.todo[0].recipients)):
                return
            batch.lesser_taken = batch.lesser_taken or lesser
            mail = batch.take()
            batch.attempted = True
            self._lanes.in_flight.add(mail.id)
            try:
                await self._deliver(batch, mail)
            finally:
                self._lanes.in_flight.discard(mail.id)
            self._stage.beat()

    async def _deliver(self, batch: _Batch, mail: Mail) -> None:
        try:
            if not await self._attempt.deliver(mail):
                batch.relay_down = True
        except OutboxError as exc:
            # Stop handing out mails; the lanes in flight finish and record first.
            batch.error = batch.error or exc
        except Exception as exc:
            # This mail's problem, not the loop's: recorded against it, then the next one.
            try:
                await self._outcomes.internal(mail, exc)
            except OutboxError as db_exc:
                batch.error = batch.error or db_exc

    async def _housekeeping(self) -> None:
        now = self._mono()
        if self._bounds is None or now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_EVERY_S
        bounds = self._bounds
        await self._db(lambda o: bounds.housekeeping(o))

    async def probe_relay(self) -> None:
        """One cheap TCP probe now (the idle loop probes while the relay pause allows it)."""
        await self._idle.probe_relay()
