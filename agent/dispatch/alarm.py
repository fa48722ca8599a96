"""The login alarm, told: the relay refuses our credentials, so no mail gets through until a
person fixes the login.

The gate (agent.dispatch.gate) decides when the alarm starts and ends; this module tells it:
one error line, the metric and the alarm row `status` shows when it starts, one info line when
a login works again, and the row cleared at startup (an earlier run's alarm is stale).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import structlog

from agent.dispatch.gate import Clock
from agent.dispatch.worker import OutboxWorker
from agent.errors import DeliveryError, OutboxError
from agent.metrics import Metrics
from agent.outbox.limits import auth_alarm, set_auth_alarm
from agent.submit import Submitter

if TYPE_CHECKING:
    from agent.settings import DeliverySettings


class AuthAlarm:
    """Tells that the relay refuses our login, and that it takes it again. Event loop only."""

    def __init__(
        self,
        db: OutboxWorker,
        submitter: Submitter,
        *,
        delivery: DeliverySettings,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._db = db
        self._submitter = submitter
        self._delivery = delivery
        self._clock = clock
        self._metrics = metrics
        self.log = structlog.get_logger("faultmail.dispatch")

    async def clear_stale(self) -> None:
        """A login alarm left by an earlier run is stale: the first attempt tells anew."""
        with contextlib.suppress(OutboxError):  # a read-only outbox: the loop reports it
            if await self._db(auth_alarm) is not None:
                await self._db(lambda o: set_auth_alarm(o, None))

    async def start(self, exc: DeliveryError, now: float) -> None:
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

    async def end(self) -> None:
        """A login worked again: one info line; the mails held by the alarm are due now."""
        self._metrics.auth_failing = None
        now = self._clock()
        with contextlib.suppress(OutboxError):  # they would go at their slow retry time
            await self._db(lambda o: set_auth_alarm(o, None))
            due = await self._db(lambda o: o.expedite(now))
            self.log.info("relay_auth_ok_again", relay=self._submitter.relay, mails=due)
