"""One delivery attempt for one mail: expire → compose → sign → submit → outcome.

What the attempt ends in (sent, retry at T, dead) is recorded by agent.dispatch.outcome, with
one audit entry in the same transaction as the mail's new state.

Two clocks: durations are on the monotonic clock; wall time only stamps what the outbox
stores and the due times it persists.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from agent.compose import NOTICE_KINDS, ComposeContext, compose, waited
from agent.dispatch.gate import Clock, is_auth_refusal
from agent.dispatch.outcome import Outcomes
from agent.errors import PermanentDeliveryError, PolicyRefusal, TransientDeliveryError
from agent.failpoints import Failpoints
from agent.models import Mail
from agent.signing import DkimSigner
from agent.submit import Submitter

if TYPE_CHECKING:
    from agent.settings import DeliverySettings


class Attempt:
    """Makes one attempt for a mail and hands its outcome to Outcomes. Event loop only."""

    def __init__(
        self,
        submitter: Submitter,
        ctx: ComposeContext,
        outcomes: Outcomes,
        *,
        delivery: DeliverySettings,
        envelope_sender: str,
        signer: DkimSigner | None = None,
        clock: Clock = time.time,
        mono: Clock = time.monotonic,
        failpoints: Failpoints | None = None,
    ) -> None:
        self._submitter = submitter
        self._ctx = ctx
        self._outcomes = outcomes
        self._delivery = delivery
        self._sender = envelope_sender
        self._signer = signer
        self._clock = clock
        self._mono = mono
        self._failpoints = failpoints or Failpoints()
        # When the relay connection was last used (monotonic): the loop closes it when idle.
        self.last_activity: float | None = None
        self.log = structlog.get_logger("faultmail.dispatch")

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
            await self._outcomes.dead(mail, log, self._mono(), "dead", detail, None)
            return True
        age = now - min((a.received_at for a in mail.alerts), default=mail.created_at)
        if self._delivery.expire and age > self._delivery.max_age:
            detail = f"expired: waited {waited(age)}, longer than delivery.max_age"
            await self._outcomes.dead(mail, log, self._mono(), "expired", detail, None)
            return True
        data = compose(mail, self._ctx, now).as_bytes()
        if self._signer is not None:
            data = self._signer.sign(data)
        started = self._mono()
        try:
            self._failpoints.hit("before_data")
            with self._outcomes.submitting():
                result = await self._submitter.submit(self._sender, mail.recipients, data)
        except PolicyRefusal as exc:
            await self._outcomes.dead(mail, log, started, "refused", str(exc), None)
            return True
        except PermanentDeliveryError as exc:
            if is_auth_refusal(exc):
                # 530 5.7.57 at MAIL FROM and the like: our login, not this mail, is at fault.
                return await self._outcomes.retry(mail, log, started, exc)
            await self._outcomes.dead(mail, log, started, "dead", str(exc), exc.code)
            return True
        except TransientDeliveryError as exc:
            return await self._outcomes.retry(mail, log, started, exc)
        finally:
            self.last_activity = self._mono()
        self._failpoints.hit("after_250_before_mark_sent")
        await self._outcomes.sent(mail, log, started, result)
        return True
