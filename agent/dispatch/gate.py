"""The relay gate: when delivery may talk to the relay at all.

Three rules, all on the monotonic clock (NTP cannot step it):
- backoff: a failed mail waits longer after every attempt (RFC 5321 4.5.4.1), with jitter;
- pause and probe: a failure that is the relay's, not one mail's (connect, TLS, login,
  timeout, 421), pauses the whole queue for the backoff; when the relay was merely
  unreachable, a cheap TCP probe may end the pause early;
- the per-minute cap (delivery.max_mails_per_minute): protects the relay account from being
  locked by the relay's own abuse detection;
- the daily recipient budget (delivery.max_recipients_per_day, rolling 24 h on wall time,
  counted from the outbox at every pass so a restart does not reset it);
- the login alarm: a relay that refuses our credentials gets one attempt every
  delivery.auth_retry_interval, not one per mail, until a login works again.
The per-minute and daily figures are the effective ones (smtp.provider's preset unless set by
hand, agent.settings.providers).
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from agent.errors import DeliveryError
from agent.settings.providers import BUDGET_WINDOW_S

if TYPE_CHECKING:
    from agent.settings import DeliverySettings

Clock = Callable[[], float]

# Failures that say nothing about one mail but about the relay: pause the whole queue.
_RELAY_KINDS = frozenset({"connect", "tls", "auth", "timeout"})
# Failures a probe can see the end of: the relay was unreachable, not refusing us.
_PROBE_KINDS = frozenset({"connect", "timeout"})
# The per-minute cap's window (delivery.max_mails_per_minute).
CAP_WINDOW_S = 60.0
# "Not paused": far enough in the past on any monotonic clock.
_OPEN = -1e18
# Replies that refuse our credentials wherever they come (RFC 4954 535 5.7.8, 530 5.7.0, 534
# 5.7.9; Microsoft 365 5.7.139 and 5.7.30 basic auth disabled, 530 5.7.57 not authenticated
# at MAIL FROM): no mail gets through until a person fixes the login.
_AUTH_CODES = frozenset({530, 534, 535})
_AUTH_STATUS = re.compile(r"\b5\.7\.(?:8|9|30|57|139)\b")


def is_auth_refusal(exc: DeliveryError) -> bool:
    """The relay refused our login (or the mail for want of one); not a token endpoint's
    trouble (step "oauth"), which the ordinary backoff handles."""
    if exc.step == "oauth":
        return False
    return exc.kind == "auth" or exc.code in _AUTH_CODES or bool(_AUTH_STATUS.search(exc.detail))


def backoff(attempt: int, settings: DeliverySettings, rng: random.Random) -> float:
    """Seconds until the next try: doubling from retry_initial, capped, with ±20 % jitter.

    RFC 5321 4.5.4.1 asks for growing retry intervals; the jitter keeps a fleet of gateways
    from returning to a recovered relay in lockstep.
    """
    base = min(settings.retry_max, settings.retry_initial * 2 ** max(0, attempt - 1))
    return float(min(settings.retry_max, base * rng.uniform(0.8, 1.2)))


class RelayGate:
    """Backoff, the relay pause with its probe, the per-minute cap, the daily recipient budget
    and the login alarm. Event loop only."""

    def __init__(
        self,
        delivery: DeliverySettings,
        mono: Clock,
        rng: random.Random | None = None,
        *,
        per_minute: int | None = None,
        daily_recipients: int = 0,
    ) -> None:
        self._delivery = delivery
        # The effective limits (agent.settings.providers); by default what delivery says.
        self._cap = (delivery.max_mails_per_minute or 0) if per_minute is None else per_minute
        self.daily_recipients = daily_recipients
        self._budget_left: int | None = None
        self._budget_frees_at: float | None = None  # wall time
        self._budget_held = False  # in this pass
        self._budget_warned = False  # until a mail goes again
        # The login alarm: set while the relay refuses our credentials.
        self.auth_failing = False
        self._mono = mono
        self._rng = rng or random.Random()
        self._paused_until = _OPEN
        self._probe = False
        self._sent_times: deque[float] = deque()
        self._capped = False
        self.log = structlog.get_logger("faultmail.dispatch")

    def backoff(self, attempt: int) -> float:
        """The delay before try number `attempt` + 1 (see `backoff`)."""
        return backoff(attempt, self._delivery, self._rng)

    @property
    def paused(self) -> bool:
        return self._mono() < self._paused_until

    @property
    def probing(self) -> bool:
        """Paused, and a TCP probe may end the pause early."""
        return self._probe and self.paused

    def pause_left(self, now: float) -> float:
        """Seconds from `now` (monotonic) until the pause ends (negative when not paused)."""
        return self._paused_until - now

    def failed(self, exc: DeliveryError, delay: float) -> bool:
        """A transient failure for one mail, retried in `delay` s. True when it is the relay's
        failure: then the whole queue waits as long."""
        if not (exc.kind in _RELAY_KINDS or exc.code == 421):
            return False
        self._paused_until = self._mono() + delay
        # Probing only helps when the relay was unreachable; a TLS or login problem needs
        # a person, and probing would just repeat it faster than the backoff.
        self._probe = exc.kind in _PROBE_KINDS or exc.code == 421
        return True

    def reopen(self) -> None:
        """The relay answers again: end the pause now."""
        self._paused_until = _OPEN
        self._probe = False

    def auth_failed(self, interval: float) -> bool:
        """The relay refused our login: the queue waits `interval` (no probe: only a person
        can fix it). True when this starts the alarm."""
        self._paused_until = self._mono() + interval
        self._probe = False
        started = not self.auth_failing
        self.auth_failing = True
        return started

    def auth_ok(self) -> bool:
        """A login worked: True when that ends the alarm."""
        ended = self.auth_failing
        self.auth_failing = False
        return ended

    def count_budget(self, used: int, oldest: float | None) -> None:
        """At every pass: recipients sent in the last 24 h (from the outbox) and when the
        earliest of them was sent (wall time)."""
        if self.daily_recipients <= 0:
            return
        self._budget_left = self.daily_recipients - used
        self._budget_held = False
        self._budget_frees_at = None if oldest is None else oldest + BUDGET_WINDOW_S

    def take_slot(self, recipients: int = 1) -> bool:
        """One mail to `recipients` may go under the daily budget and the per-minute cap (and
        is counted). Claimed mails that may not go wait in the outbox, most severe first."""
        left = self._budget_left
        if left is not None and recipients > left:
            if not self._budget_warned:
                self.log.warning(
                    "recipient_budget_reached",
                    max_recipients_per_day=self.daily_recipients,
                    note="every mail waits in the outbox until the oldest sends of the last "
                    "24 h fall out of the window",
                )
            self._budget_held = self._budget_warned = True
            return False
        if not self._take_minute_slot():
            return False
        if left is not None:
            self._budget_left = left - recipients
        if self._budget_warned:
            self._budget_warned = False
            self.log.info(
                "recipient_budget_available", max_recipients_per_day=self.daily_recipients
            )
        return True

    def budget_wait(self, now: float) -> float | None:
        """While the daily budget holds delivery: seconds from `now` (wall time) until the
        earliest send leaves the 24 h window; None when the budget is not what holds it."""
        if not self._budget_held:
            return None
        if self._budget_frees_at is None:
            return BUDGET_WINDOW_S
        return min(BUDGET_WINDOW_S, max(1.0, self._budget_frees_at - now))

    def _take_minute_slot(self) -> bool:
        cap = self._cap
        if cap <= 0:
            return True
        now = self._mono()
        while self._sent_times and self._sent_times[0] <= now - CAP_WINDOW_S:
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

    def slot_wait(self, now: float) -> float | None:
        """After the cap was reached: seconds from `now` (monotonic) until a slot frees (the
        cap is then considered again); None when the cap is not what holds delivery back."""
        if not (self._capped and self._sent_times):
            return None
        self._capped = False
        return max(0.0, self._sent_times[0] + CAP_WINDOW_S - now)
