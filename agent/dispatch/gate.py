"""The relay gate: when delivery may talk to the relay at all.

Three rules, all on the monotonic clock (NTP cannot step it):
- backoff: a failed mail waits longer after every attempt (RFC 5321 4.5.4.1), with jitter;
- pause and probe: a failure that is the relay's, not one mail's (connect, TLS, login,
  timeout, 421), pauses the whole queue for the backoff; when the relay was merely
  unreachable, a cheap TCP probe may end the pause early;
- the per-minute cap (delivery.max_mails_per_minute): protects the relay account from being
  locked by the relay's own abuse detection.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import structlog

from agent.errors import DeliveryError
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


def backoff(attempt: int, settings: DeliverySettings, rng: random.Random) -> float:
    """Seconds until the next try: doubling from retry_initial, capped, with ±20 % jitter.

    RFC 5321 4.5.4.1 asks for growing retry intervals; the jitter keeps a fleet of gateways
    from returning to a recovered relay in lockstep.
    """
    base = min(settings.retry_max, settings.retry_initial * 2 ** max(0, attempt - 1))
    return float(min(settings.retry_max, base * rng.uniform(0.8, 1.2)))


class RelayGate:
    """Backoff, the relay pause with its probe, and the per-minute cap. Event loop only."""

    def __init__(
        self, delivery: DeliverySettings, mono: Clock, rng: random.Random | None = None
    ) -> None:
        self._delivery = delivery
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

    def take_slot(self) -> bool:
        """One mail may go under the per-minute cap (and is counted). Claimed mails that may
        not wait in the outbox, most severe first."""
        cap = self._delivery.max_mails_per_minute
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
