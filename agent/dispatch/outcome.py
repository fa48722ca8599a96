"""The outcome of one attempt, recorded with one audit entry in the same transaction as the
mail's new state: sent (with the relay's reply, and per-recipient refusals), retry at T (with
backoff), or dead (5xx, a policy refusal, expiry, or MAX_INTERNAL_ERRORS bugs of ours).

Outcomes go through OutboxWorker.outcome: those of mails finished while the outbox thread was
busy share one commit, and each caller returns only after that commit. Durations are on the
monotonic clock; wall time only stamps what the outbox stores and the due times it persists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import structlog

from agent.dispatch.alarm import AuthAlarm
from agent.dispatch.gate import Clock, RelayGate, is_auth_refusal
from agent.dispatch.worker import OutboxWorker
from agent.errors import DeliveryError, OutboxError
from agent.metrics import Metrics
from agent.models import Mail
from agent.outbox import AuditEntry, Outbox
from agent.submit import SubmitResult, Submitter

if TYPE_CHECKING:
    from agent.settings import DeliverySettings

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


class Outcomes:
    """Records the outcome of each attempt, with its audit entry and log line, and tells the
    gate what the relay's answer says about the relay. Event loop only."""

    def __init__(
        self,
        db: OutboxWorker,
        submitter: Submitter,
        gate: RelayGate,
        alarm: AuthAlarm,
        *,
        delivery: DeliverySettings,
        clock: Clock,
        mono: Clock,
        metrics: Metrics,
    ) -> None:
        self._db = db
        self._submitter = submitter
        self._gate = gate
        self._alarm = alarm
        self._delivery = delivery
        self._clock = clock
        self._mono = mono
        self._metrics = metrics
        self.log = structlog.get_logger("faultmail.dispatch")
        self.unrecorded = UnrecordedSends(db, self.log)

    def submitting(self) -> AbstractContextManager[None]:
        """Around a submission: the outcomes recorded meanwhile may wait to share its commit."""
        return self._db.submitting()

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

    async def sent(self, mail: Mail, log: Log, started: float, result: SubmitResult) -> None:
        """The relay's final 250 to DATA: mark the mail sent, with per-recipient refusals. A
        write that fails is kept for UnrecordedSends to retry; the submission never is."""
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
        # Only once "sent" is stored: a login worked, so the alarm (if any) ends.
        if self._gate.auth_ok():
            await self._alarm.end()

    async def dead(
        self, mail: Mail, log: Log, started: float, outcome: str, detail: str, code: int | None
    ) -> None:
        """Give the mail up (5xx, a policy refusal, expiry, no alerts left, or bugs of ours)."""
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

    async def retry(self, mail: Mail, log: Log, started: float, exc: DeliveryError) -> bool:
        """A transient failure: due again after the backoff (a refused login: after the slow
        fixed interval). False when the failure is the relay's, not this mail's."""
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
                await self._alarm.start(exc, now)
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

    async def internal(self, mail: Mail, exc: Exception) -> None:
        """An exception of ours while handling `mail`: retry it with backoff, or give it up as
        dead after MAX_INTERNAL_ERRORS (counted from its audit rows)."""
        name = type(exc).__name__
        log = self.log.bind(mail_id=mail.id, message_id=mail.message_id, attempt=mail.attempts + 1)
        earlier = await self._db(lambda o: o.internal_errors(mail.id))
        detail = f"internal_error: {name}: {exc}"
        if earlier + 1 >= MAX_INTERNAL_ERRORS:
            log.error("internal_error", error_type=name, exc_info=exc, gives_up=True)
            given_up = f"{detail} ({earlier + 1} internal errors; given up)"
            await self.dead(mail, log, self._mono(), "dead", given_up, None)
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
