"""One delivery attempt for one mail: expire → compose → sign → submit → outcome.

The outcome is recorded with one audit entry in the same transaction as the mail's new state:
sent (with the relay's reply, and per-recipient refusals), retry at T (with backoff), or dead
(5xx, a policy refusal, expiry, or MAX_INTERNAL_ERRORS bugs of ours). Outcomes go through
OutboxWorker.outcome: those of mails finished while the outbox thread was busy share one
commit, and each caller returns only after that commit.

Two clocks: durations are on the monotonic clock; wall time only stamps what the outbox
stores and the due times it persists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable

import structlog

from agent.compose import NOTICE_KINDS, ComposeContext, compose, waited
from agent.dispatch.gate import Clock, RelayGate, is_auth_refusal
from agent.dispatch.worker import OutboxWorker
from agent.errors import (
    DeliveryError,
    OutboxError,
    PermanentDeliveryError,
    PolicyRefusal,
    TransientDeliveryError,
)
from agent.failpoints import Failpoints
from agent.metrics import Metrics
from agent.models import Mail
from agent.outbox import AuditEntry, Outbox
from agent.outbox.limits import set_auth_alarm
from agent.settings import DeliverySettings
from agent.signing import DkimSigner
from agent.submit import SubmitResult, Submitter

# Internal errors (a bug, a template or config that fails at send time) one mail may cause
# before it is given up as dead. Counted from its audit rows, so a restart does not reset them.
MAX_INTERNAL_ERRORS = 3

Log = structlog.typing.FilteringBoundLogger


class UnrecordedSends:
    """Mails the relay accepted whose "sent" could not be committed (disk full): only the
    write is retried, never the submission, so a full disk costs no duplicate."""

    def __init__(self, db: OutboxWorker, log: Log) -> None:
        self._db = db
        self._writes: dict[int, Callable[[Outbox], None]] = {}
        self.log = log

    def __len__(self) -> int:
        return len(self._writes)

    def keep(self, mail_id: int, write: Callable[[Outbox], None]) -> None:
        self._writes[mail_id] = write

    async def record(self) -> None:
        """Commit the writes that failed earlier; raises OutboxError while it can't."""
        for mail_id, write in list(self._writes.items()):
            await self._db.outcome(write)
            del self._writes[mail_id]
            self.log.info("sent_recorded_late", mail_id=mail_id)

    async def give_up(self) -> None:
        """At shutdown: one last try; what still fails will be sent once more after restart."""
        try:
            await self.record()
        except OutboxError as exc:
            self.log.error(
                "sent_unrecorded_at_exit",
                mail_ids=sorted(self._writes),
                error=str(exc),
                note="the relay has these mails; they go out once more after restart "
                "with the same Message-ID",
            )


class Attempt:
    """Makes one attempt for a mail and records its outcome. Event loop only."""

    def __init__(
        self,
        db: OutboxWorker,
        submitter: Submitter,
        ctx: ComposeContext,
        gate: RelayGate,
        *,
        delivery: DeliverySettings,
        envelope_sender: str,
        signer: DkimSigner | None = None,
        clock: Clock = time.time,
        mono: Clock = time.monotonic,
        failpoints: Failpoints | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._submitter = submitter
        self._ctx = ctx
        self._gate = gate
        self._delivery = delivery
        self._sender = envelope_sender
        self._signer = signer
        self._clock = clock
        self._mono = mono
        self._failpoints = failpoints or Failpoints()
        self._metrics = metrics or Metrics()
        # When the relay connection was last used (monotonic): the loop closes it when idle.
        self.last_activity: float | None = None
        self.log = structlog.get_logger("faultmail.dispatch")
        self.unrecorded = UnrecordedSends(db, self.log)

    async def deliver(self, mail: Mail) -> bool:
        """One attempt for one mail. False when the relay itself is unusable right now."""
        log = self.log.bind(
            mail_id=mail.id,
            message_id=mail.message_id,
            alert_ids=[a.id for a in mail.alerts],
            relay=self._submitter.relay,
            attempt=mail.attempts + 1,
        )
        now = self._clock()
        if not mail.alerts and mail.kind not in NOTICE_KINDS:
            # Housekeeping keeps the alerts of pending mails; this guards an outbox written by
            # an older version (or edited by hand) instead of failing in compose.
            detail = (
                "no_alerts: the alerts of this mail were removed from the outbox "
                "(pruned or evicted); there is nothing left to send"
            )
            await self._record_dead(mail, log, self._mono(), "dead", detail, None)
            return True
        age = now - min((a.received_at for a in mail.alerts), default=mail.created_at)
        if self._delivery.expire and age > self._delivery.max_age:
            detail = f"expired: waited {waited(age)}, longer than delivery.max_age"
            await self._record_dead(mail, log, self._mono(), "expired", detail, None)
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
            if is_auth_refusal(exc):
                # 530 5.7.57 at MAIL FROM and the like: our login, not this mail, is at fault.
                return await self._record_retry(mail, log, started, exc)
            await self._record_dead(mail, log, started, "dead", str(exc), exc.code)
            return True
        except TransientDeliveryError as exc:
            return await self._record_retry(mail, log, started, exc)
        finally:
            self.last_activity = self._mono()
        self._failpoints.hit("after_250_before_mark_sent")
        await self._record_sent(mail, log, started, result)
        if self._gate.auth_ok():
            await self._end_auth_alarm()
        return True

    def _entry(
        self,
        mail: Mail,
        outcome: str,
        detail: str,
        code: int | None = None,
        started: float | None = None,
    ) -> AuditEntry:
        """The audit row of one attempt (the one builder for every outcome)."""
        return AuditEntry(
            event="send_attempt",
            outcome=outcome,
            mail_id=mail.id,
            alert_ids=[a.id for a in mail.alerts],
            relay=self._submitter.relay,
            smtp_code=code,
            detail=detail,
            duration_ms=None if started is None else self._ms(started),
        )

    async def _record_sent(
        self, mail: Mail, log: Log, started: float, result: SubmitResult
    ) -> None:
        # RFC 5321 4.2.5: a 4xx to RCPT is worth retrying for that recipient alone; a 5xx is
        # final for that recipient, and the others still have the mail.
        retry = [r for r, (code, _) in result.refused.items() if 400 <= code < 500]
        refused = {r: f"{code} {text}" for r, (code, text) in result.refused.items()}
        accepted = [r for r in mail.recipients if r not in result.refused]
        detail = f"{result.code} {result.reply}"
        if refused:
            detail += "; refused: " + ", ".join(f"{r} {t}" for r, t in refused.items())
        entry = self._entry(mail, "sent", detail, result.code, started)
        now = self._clock()
        retry_at = now + self._gate.backoff(mail.attempts + 1)
        self._metrics.add("mails", "sent")
        self._metrics.relay_up = True
        self._metrics.last_success = now
        log.info(
            "send_attempt",
            outcome="sent",
            smtp_code=result.code,
            duration_ms=entry.duration_ms,
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
            await self._db.outcome(write)
        except OutboxError:
            self.unrecorded.keep(mail.id, write)
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
                await self._db.outcome(write)
            except OutboxError:
                self.unrecorded.keep(mail.id, write)
                raise

    async def _record_dead(
        self, mail: Mail, log: Log, started: float, outcome: str, detail: str, code: int | None
    ) -> None:
        entry = self._entry(mail, outcome, detail, code, started)
        now = self._clock()
        await self._db.outcome(lambda o: o.mark_dead(mail, now, entry))
        self._metrics.add("mails", outcome)
        log.error(
            "send_attempt",
            outcome=outcome,
            smtp_code=code,
            duration_ms=entry.duration_ms,
            error=detail,
            fix="see `faultmail queue`; `faultmail queue retry ID` re-queues",
        )

    async def _record_retry(self, mail: Mail, log: Log, started: float, exc: DeliveryError) -> bool:
        auth = is_auth_refusal(exc)
        kind = "auth" if auth else exc.kind
        entry = self._entry(mail, f"retry:{kind}", str(exc), exc.code, started)
        now = self._clock()
        # Refused credentials: the slow fixed interval, not the backoff (an alarm, no storm).
        delay = (
            self._delivery.auth_retry_interval if auth else self._gate.backoff(mail.attempts + 1)
        )
        await self._db.outcome(lambda o: o.mark_retry(mail, now, now + delay, entry))
        self._metrics.add("mails", f"retry_{kind}")
        if auth:
            # One error line for the alarm (below), not a warning per mail.
            log.info(
                "send_attempt",
                outcome="retry",
                kind=kind,
                smtp_code=exc.code,
                duration_ms=entry.duration_ms,
                error=str(exc),
                retry_in_s=round(delay, 2),
            )
            if self._gate.auth_failed(delay):
                await self._start_auth_alarm(exc, now)
            self._metrics.relay_up = False
            return False
        log.warning(
            "send_attempt",
            outcome="retry",
            kind=exc.kind,
            smtp_code=exc.code,
            duration_ms=entry.duration_ms,
            error=str(exc),
            retry_in_s=round(delay, 2),
        )
        if self._gate.failed(exc, delay):
            self._metrics.relay_up = False
            return False
        return True

    async def _start_auth_alarm(self, exc: DeliveryError, now: float) -> None:
        """The relay refuses our login: one error line, the metric, the alarm row."""
        reply = str(exc)
        relay = self._submitter.relay
        self._metrics.auth_failing = reply
        self.log.error(
            "relay_auth_failing",
            relay=relay,
            smtp_code=exc.code,
            error=reply,
            retry_every_s=self._delivery.auth_retry_interval,
            fix="the relay refuses our credentials: check smtp.username and the password file "
            '(or [smtp.oauth]); Microsoft 365 disables password SMTP AUTH (smtp.auth = "xoauth2"); '
            "`faultmail doctor` tries the login",
        )
        alarm = {"since": now, "relay": relay, "reply": reply}
        with contextlib.suppress(OutboxError):  # the log line and the metric still tell
            await self._db(lambda o: set_auth_alarm(o, alarm))

    async def _end_auth_alarm(self) -> None:
        """A login worked again: one info line; the mails held by the alarm are due now."""
        self._metrics.auth_failing = None
        now = self._clock()
        with contextlib.suppress(OutboxError):  # they would go at their slow retry time
            await self._db(lambda o: set_auth_alarm(o, None))
            due = await self._db(lambda o: o.expedite(now))
            self.log.info("relay_auth_ok_again", relay=self._submitter.relay, mails=due)

    async def record_internal(self, mail: Mail, exc: Exception) -> None:
        """An exception of ours while handling `mail`: retry it with backoff, or give it up as
        dead after MAX_INTERNAL_ERRORS (counted from its audit rows)."""
        name = type(exc).__name__
        log = self.log.bind(mail_id=mail.id, message_id=mail.message_id, attempt=mail.attempts + 1)
        earlier = await self._db(lambda o: o.internal_errors(mail.id))
        detail = f"internal_error: {name}: {exc}"
        if earlier + 1 >= MAX_INTERNAL_ERRORS:
            log.error("internal_error", error_type=name, exc_info=exc, gives_up=True)
            given_up = f"{detail} ({earlier + 1} internal errors; given up)"
            await self._record_dead(mail, log, self._mono(), "dead", given_up, None)
            return
        now = self._clock()
        delay = self._gate.backoff(mail.attempts + 1)
        # No duration: nothing reached the relay, or what did is not what failed.
        entry = self._entry(mail, "retry:internal", detail)
        log.error(
            "internal_error",
            error_type=name,
            exc_info=exc,
            retry_in_s=round(delay, 2),
            note=f"the mail is given up after {MAX_INTERNAL_ERRORS} internal errors",
        )
        await self._db.outcome(lambda o: o.mark_retry(mail, now, now + delay, entry))
        self._metrics.add("mails", "retry_internal")

    def _ms(self, started: float) -> float:
        return round((self._mono() - started) * 1000, 1)
