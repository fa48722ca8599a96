"""The delivery loop: plan → claim → compose → sign → submit → record, with backoff.

Runs on the asyncio loop; every outbox call runs on the outbox's own worker thread.

One mail is the unit of work: whatever goes wrong while handling it (expiry check, compose,
sign, submit, recording) is recorded against that mail, which is retried with backoff and
becomes dead after MAX_INTERNAL_ERRORS; the loop carries on with the next mail. Only the outbox
itself failing stops a pass: unavailable storage backs off, corruption ends the loop.

Two clocks: in-process durations (relay pause, the per-minute cap, housekeeping, idle close,
probes) are on the monotonic clock, which NTP cannot step; wall time only stamps what the
outbox stores and the due times it persists, and those are clamped after a step backwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import structlog

from agent.bounds import OutboxBounds
from agent.compose import NOTICE_KINDS, ComposeContext, compose, waited
from agent.errors import (
    DeliveryError,
    OutboxCorrupt,
    OutboxError,
    PermanentDeliveryError,
    PolicyRefusal,
    TransientDeliveryError,
)
from agent.failpoints import Failpoints
from agent.liveness import HEARTBEAT_S, Stage
from agent.metrics import Metrics
from agent.models import Mail
from agent.outbox import AuditEntry, GroupingRules, Outbox
from agent.settings import DeliverySettings
from agent.signing import DkimSigner
from agent.submit import SubmitResult, Submitter

T = TypeVar("T")
Clock = Callable[[], float]

# Failures that say nothing about one mail but about the relay: pause the whole queue.
_RELAY_KINDS = frozenset({"connect", "tls", "auth", "timeout"})
# Internal errors (a bug, a template or config that fails at send time) one mail may cause
# before it is given up as dead. Counted from its audit rows, so a restart does not reset them.
MAX_INTERNAL_ERRORS = 3
HOUSEKEEPING_EVERY_S = 3600.0
# The per-minute cap's window (delivery.max_mails_per_minute).
_CAP_WINDOW_S = 60.0


@dataclass(slots=True)
class _Batch:
    """The mails one pass claimed, shared by its delivery lanes."""

    todo: deque[Mail]
    attempted: bool = False
    relay_down: bool = False
    error: OutboxError | None = None

    @property
    def halted(self) -> bool:
        return self.relay_down or self.error is not None


class OutboxWorker:
    """Runs outbox calls on one dedicated thread so SQLite never blocks the event loop."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    async def __call__(self, fn: Callable[[Outbox], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, self.outbox)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        self.outbox.close()


def backoff(attempt: int, settings: DeliverySettings, rng: random.Random) -> float:
    """Seconds until the next try: doubling from retry_initial, capped, with ±20 % jitter.

    RFC 5321 4.5.4.1 asks for growing retry intervals; the jitter keeps a fleet of gateways
    from returning to a recovered relay in lockstep.
    """
    base = min(settings.retry_max, settings.retry_initial * 2 ** max(0, attempt - 1))
    return float(min(settings.retry_max, base * rng.uniform(0.8, 1.2)))


class Dispatcher:
    """Delivers due mails from the outbox through a Submitter and records every attempt."""

    def __init__(
        self,
        db: OutboxWorker,
        submitter: Submitter,
        ctx: ComposeContext,
        *,
        delivery: DeliverySettings,
        envelope_sender: str,
        message_id_domain: str,
        idle_close: float,
        bounds: OutboxBounds | None = None,
        grouping: GroupingRules | None = None,
        signer: DkimSigner | None = None,
        clock: Clock = time.time,
        mono: Clock = time.monotonic,
        failpoints: Failpoints | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        concurrency: int = 1,
        stage: Stage | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._db = db
        self._submitter = submitter
        self._ctx = ctx
        self._delivery = delivery
        self._sender = envelope_sender
        self._domain = message_id_domain
        self._idle_close = idle_close
        self._bounds = bounds
        self._grouping = grouping or GroupingRules()
        self._signer = signer
        self._clock = clock
        self._mono = mono
        self._stage = stage or Stage("dispatch")
        self._failpoints = failpoints or Failpoints()
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        # While the relay is unusable the whole queue waits; for plain connection failures a
        # cheap TCP probe ends the wait as soon as the relay is back. Monotonic, as are
        # _last_activity, _next_housekeeping and _sent_times.
        self._relay_paused_until = -1e18
        self._probe_relay = False
        self._last_activity: float | None = None
        self._next_housekeeping = -1e18
        self._sent_times: deque[float] = deque()
        self._capped = False
        # Mails the relay accepted whose "sent" could not be committed (disk full): only the
        # write is retried, never the submission, so a full disk costs no duplicate.
        self._unrecorded: dict[int, Callable[[Outbox], None]] = {}
        self._concurrency = concurrency
        self._preempt = False
        self._outbox_failures = 0
        self.log = structlog.get_logger("faultmail.dispatch")

    def wake(self, urgent: bool = False) -> None:
        """New work arrived (call on the loop's thread; other threads use call_soon_threadsafe).

        urgent: a critical alert was stored. Claimed mails less severe than critical stop being
        handed out (those in flight finish), so the next pass plans and sends it first. A storm
        of critical alerts does not thrash: critical mails are never held back for another.
        """
        if urgent:
            self._preempt = True
        self._wake.set()

    @property
    def relay_paused(self) -> bool:
        return self._mono() < self._relay_paused_until

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set. OutboxCorrupt (and any bug outside one mail's
        handling) ends the loop by propagating: the supervisor takes the process down."""
        try:
            await self._loop(stopping)
        except Exception as exc:
            self._stage.failed(exc)
            raise
        finally:
            await self._submitter.close()
        await self._give_up_unrecorded()
        self._stage.stopped()

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            self._stage.beat()
            try:
                await self._record_unrecorded()
                await self._housekeeping()
                if await self.pass_once(stopping):
                    self._failpoints.hit("dispatch_crash")
                else:
                    await self._idle(stopping)
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
                    unrecorded_sent=len(self._unrecorded),
                )
                await self._sleep(stopping, delay)

    async def _record_unrecorded(self) -> None:
        """Commit the "sent" writes that failed earlier; raises OutboxError while it can't."""
        for mail_id, write in list(self._unrecorded.items()):
            await self._db(write)
            del self._unrecorded[mail_id]
            self.log.info("sent_recorded_late", mail_id=mail_id)

    async def _give_up_unrecorded(self) -> None:
        """At shutdown: one last try; what still fails will be sent once more after restart."""
        try:
            await self._record_unrecorded()
        except OutboxError as exc:
            self.log.error(
                "sent_unrecorded_at_exit",
                mail_ids=sorted(self._unrecorded),
                error=str(exc),
                note="the relay has these mails; they go out once more after restart "
                "with the same Message-ID",
            )

    async def pass_once(self, stopping: asyncio.Event) -> bool:
        """Plan new mails and try every due one once. True when a mail was attempted.

        Up to `concurrency` mails are in flight at once (one relay connection each), so
        composing, signing and recording one mail overlaps the relay's work on another.
        """
        gateway, rules = self._ctx.gateway_id, self._grouping
        if self.relay_paused:
            # Planning waits too: what piles up meanwhile can then become one digest.
            return False
        now = self._clock()
        self._preempt = False
        # After a wall-clock step backwards no persisted due time may lie further ahead than
        # its longest possible delay: a 1 h step must not hold mail for 1 h.
        retry_max, window = self._delivery.retry_max, rules.repeat_window
        await self._db(lambda o: o.clamp_due(now, retry_max, window))
        await self._db(lambda o: o.plan_mails(now, self._domain, gateway, rules))
        mails = await self._db(lambda o: o.claim_due(now, self._delivery.batch_size))
        batch = _Batch(deque(mails))
        workers = min(self._concurrency, len(mails))
        await asyncio.gather(*(self._work(batch, stopping) for _ in range(workers)))
        if batch.error is not None:
            raise batch.error
        return batch.attempted and not batch.relay_down

    async def _work(self, batch: _Batch, stopping: asyncio.Event) -> None:
        """One delivery lane: takes the next claimed mail until the batch ends or halts."""
        while batch.todo and not (batch.halted or stopping.is_set()):
            if self._preempt and batch.todo[0].severity_rank > 0:
                return
            if not self._cap_allows():
                return
            mail = batch.todo.popleft()
            batch.attempted = True
            try:
                if not await self._deliver(mail):
                    batch.relay_down = True
            except OutboxError as exc:
                # Stop handing out mails; the lanes in flight finish and record first.
                batch.error = batch.error or exc
            except Exception as exc:
                # This mail's problem, not the loop's: recorded against it, then the next one.
                try:
                    await self._record_internal(mail, exc)
                except OutboxError as db_exc:
                    batch.error = batch.error or db_exc
            self._stage.beat()

    def _cap_allows(self) -> bool:
        """The global mails-per-minute cap: protects the relay account from being locked by
        the relay's own abuse detection. Claimed mails wait, most severe first."""
        cap = self._delivery.max_mails_per_minute
        if cap <= 0:
            return True
        now = self._mono()
        while self._sent_times and self._sent_times[0] <= now - _CAP_WINDOW_S:
            self._sent_times.popleft()
        if len(self._sent_times) < cap:
            self._sent_times.append(now)
            return True
        if not self._capped:
            self.log.warning(
                "mail_cap_reached",
                max_mails_per_minute=cap,
                note="mails wait in the outbox, critical first",
            )
        self._capped = True
        return False

    async def _housekeeping(self) -> None:
        now = self._mono()
        if self._bounds is None or now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_EVERY_S
        bounds = self._bounds
        await self._db(lambda o: bounds.housekeeping(o))

    async def _idle(self, stopping: asyncio.Event) -> None:
        wall, mono = self._clock(), self._mono()
        next_due = await self._db(lambda o: o.next_due())
        waits = [self._delivery.poll_interval]
        if self._capped and self._sent_times:
            # Over the cap, due mails are no reason to wake: only a freed slot is.
            self._capped = False
            await self._sleep(stopping, max(0.0, self._sent_times[0] + _CAP_WINDOW_S - mono))
            return
        if next_due is not None:
            # A persisted due time (wall) or the end of the relay pause (monotonic), whichever
            # is later; never longer than retry_max or the repeat window (clock steps).
            longest = max(self._delivery.retry_max, self._grouping.repeat_window)
            waits.append(max(self._relay_paused_until - mono, min(next_due - wall, longest)))
        if self._probe_relay and self.relay_paused:
            waits.append(self._delivery.probe_interval)
        if self._last_activity is not None:
            waits.append(self._last_activity + self._idle_close - mono)
        await self._sleep(stopping, max(0.0, min(waits)))
        mono = self._mono()
        if self._probe_relay and self.relay_paused and not stopping.is_set():
            await self.probe_relay()
        if self._last_activity is not None and mono >= self._last_activity + self._idle_close:
            await self._submitter.close()
            self._last_activity = None

    async def probe_relay(self) -> None:
        """One cheap TCP probe; a relay that answers ends the pause at once."""
        if await self._submitter.probe():
            now = self._clock()
            expedited = await self._db(lambda o: o.expedite(now))
            self.log.info("relay_reachable_again", relay=self._submitter.relay, mails=expedited)
            self._relay_paused_until = -1e18
            self._probe_relay = False

    async def _sleep(self, stopping: asyncio.Event, seconds: float) -> None:
        """Sleep until new work, a stop request or the timeout, whichever comes first.

        Wakes at least every HEARTBEAT_S to tell the watchdog that an idle loop is alive.
        """
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stopping.wait())]
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

    async def _deliver(self, mail: Mail) -> bool:
        """One attempt for one mail. False when the relay itself is unusable right now."""
        alert_ids = [a.id for a in mail.alerts]
        log = self.log.bind(
            mail_id=mail.id,
            message_id=mail.message_id,
            alert_ids=alert_ids,
            relay=self._submitter.relay,
            attempt=mail.attempts + 1,
        )
        now = self._clock()
        if not mail.alerts and mail.kind not in NOTICE_KINDS:
            # Housekeeping keeps the alerts of pending mails; this guards an outbox written by
            # an older version (or edited by hand) instead of failing in compose.
            await self._record_dead(
                mail,
                log,
                self._mono(),
                "dead",
                "no_alerts: the alerts of this mail were removed from the outbox "
                "(pruned or evicted); there is nothing left to send",
                None,
            )
            return True
        age = now - min((a.received_at for a in mail.alerts), default=mail.created_at)
        if self._delivery.expire and age > self._delivery.max_age:
            await self._record_dead(
                mail,
                log,
                self._mono(),
                "expired",
                f"expired: waited {waited(age)}, longer than delivery.max_age",
                None,
            )
            return True
        data = compose(mail, self._ctx, now).as_bytes()
        if self._signer is not None:
            data = self._signer.sign(data)
        started = self._mono()
        try:
            self._failpoints.hit("before_data")
            result = await self._submitter.submit(self._sender, mail.recipients, data)
        except PolicyRefusal as exc:
            await self._record_dead(mail, log, started, "refused", str(exc), None)
            return True
        except PermanentDeliveryError as exc:
            await self._record_dead(mail, log, started, "dead", str(exc), exc.code)
            return True
        except TransientDeliveryError as exc:
            return await self._record_retry(mail, log, started, exc)
        finally:
            self._last_activity = self._mono()
        self._failpoints.hit("after_250_before_mark_sent")
        await self._record_sent(mail, log, started, result)
        return True

    async def _record_sent(
        self,
        mail: Mail,
        log: structlog.typing.FilteringBoundLogger,
        started: float,
        result: SubmitResult,
    ) -> None:
        # RFC 5321 4.2.5: a 4xx to RCPT is worth retrying for that recipient alone; a 5xx is
        # final for that recipient, and the others still have the mail.
        retry = [r for r, (code, _) in result.refused.items() if 400 <= code < 500]
        refused = {r: f"{code} {text}" for r, (code, text) in result.refused.items()}
        accepted = [r for r in mail.recipients if r not in result.refused]
        detail = f"{result.code} {result.reply}"
        if refused:
            detail += "; refused: " + ", ".join(f"{r} {t}" for r, t in refused.items())
        duration = self._ms(started)
        entry = AuditEntry(
            event="send_attempt",
            outcome="sent",
            mail_id=mail.id,
            alert_ids=[a.id for a in mail.alerts],
            relay=self._submitter.relay,
            smtp_code=result.code,
            detail=detail,
            duration_ms=duration,
        )
        now = self._clock()
        retry_at = now + backoff(mail.attempts + 1, self._delivery, self._rng)
        self._metrics.add("mails", "sent")
        self._metrics.relay_up = True
        self._metrics.last_success = now
        log.info(
            "send_attempt",
            outcome="sent",
            smtp_code=result.code,
            duration_ms=duration,
            reply=result.reply,
            refused=sorted(refused),
            retry_recipients=retry,
        )

        def writer(audit: AuditEntry, refused_texts: dict[str, str]) -> Callable[[Outbox], None]:
            def write(o: Outbox) -> None:
                o.mark_sent(
                    mail,
                    now,
                    audit,
                    accepted=accepted,
                    refused=refused_texts,
                    retry_recipients=retry,
                    retry_at=retry_at,
                )

            return write

        final = {r: t for r, t in refused.items() if r not in retry}
        write = writer(entry, final)
        try:
            await self._db(write)
        except OutboxError:
            self._unrecorded[mail.id] = write
            raise
        except Exception as exc:
            # The relay has the mail: a retry would send it again. Record "sent" with what
            # can be recorded instead of what could not.
            log.error("sent_recorded_without_reply", error_type=type(exc).__name__, exc_info=exc)
            plain = dataclasses.replace(
                entry,
                detail=f"{result.code} (reply not recordable: {type(exc).__name__})",
            )
            write = writer(plain, dict.fromkeys(final, "refused (reply not recordable)"))
            try:
                await self._db(write)
            except OutboxError:
                self._unrecorded[mail.id] = write
                raise

    async def _record_dead(
        self,
        mail: Mail,
        log: structlog.typing.FilteringBoundLogger,
        started: float,
        outcome: str,
        detail: str,
        code: int | None,
    ) -> None:
        duration = self._ms(started)
        entry = AuditEntry(
            event="send_attempt",
            outcome=outcome,
            mail_id=mail.id,
            alert_ids=[a.id for a in mail.alerts],
            relay=self._submitter.relay,
            smtp_code=code,
            detail=detail,
            duration_ms=duration,
        )
        now = self._clock()
        await self._db(lambda o: o.mark_dead(mail, now, entry))
        self._metrics.add("mails", outcome)
        log.error(
            "send_attempt",
            outcome=outcome,
            smtp_code=code,
            duration_ms=duration,
            error=detail,
            fix="see `faultmail queue`; `faultmail queue retry ID` re-queues",
        )

    async def _record_retry(
        self,
        mail: Mail,
        log: structlog.typing.FilteringBoundLogger,
        started: float,
        exc: DeliveryError,
    ) -> bool:
        duration = self._ms(started)
        now = self._clock()
        delay = backoff(mail.attempts + 1, self._delivery, self._rng)
        entry = AuditEntry(
            event="send_attempt",
            outcome=f"retry:{exc.kind}",
            mail_id=mail.id,
            alert_ids=[a.id for a in mail.alerts],
            relay=self._submitter.relay,
            smtp_code=exc.code,
            detail=str(exc),
            duration_ms=duration,
        )
        await self._db(lambda o: o.mark_retry(mail, now, now + delay, entry))
        self._metrics.add("mails", f"retry_{exc.kind}")
        log.warning(
            "send_attempt",
            outcome="retry",
            kind=exc.kind,
            smtp_code=exc.code,
            duration_ms=duration,
            error=str(exc),
            retry_in_s=round(delay, 2),
        )
        relay_level = exc.kind in _RELAY_KINDS or exc.code == 421
        if relay_level:
            self._metrics.relay_up = False
            self._relay_paused_until = self._mono() + delay
            # Probing only helps when the relay was unreachable; a TLS or login problem needs
            # a person, and probing would just repeat it faster than the backoff.
            self._probe_relay = exc.kind in ("connect", "timeout") or exc.code == 421
        return not relay_level

    async def _record_internal(self, mail: Mail, exc: Exception) -> None:
        """An exception of ours while handling `mail`: retry it with backoff, or give it up as
        dead after MAX_INTERNAL_ERRORS (counted from its audit rows)."""
        name = type(exc).__name__
        log = self.log.bind(mail_id=mail.id, message_id=mail.message_id, attempt=mail.attempts + 1)
        earlier = await self._db(lambda o: o.internal_errors(mail.id))
        detail = f"internal_error: {name}: {exc}"
        if earlier + 1 >= MAX_INTERNAL_ERRORS:
            log.error("internal_error", error_type=name, exc_info=exc, gives_up=True)
            await self._record_dead(
                mail,
                log,
                self._mono(),
                "dead",
                f"{detail} ({earlier + 1} internal errors; given up)",
                None,
            )
            return
        now = self._clock()
        delay = backoff(mail.attempts + 1, self._delivery, self._rng)
        entry = AuditEntry(
            event="send_attempt",
            outcome="retry:internal",
            mail_id=mail.id,
            alert_ids=[a.id for a in mail.alerts],
            relay=self._submitter.relay,
            detail=detail,
        )
        log.error(
            "internal_error",
            error_type=name,
            exc_info=exc,
            retry_in_s=round(delay, 2),
            note=f"the mail is given up after {MAX_INTERNAL_ERRORS} internal errors",
        )
        await self._db(lambda o: o.mark_retry(mail, now, now + delay, entry))
        self._metrics.add("mails", "retry_internal")

    def _ms(self, started: float) -> float:
        return round((self._mono() - started) * 1000, 1)
