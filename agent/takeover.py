"""Taking over a dead group member's MQTT session, so that what the broker holds for it is
mailed by a survivor (issue #17).

Mosquitto keeps the queue of a disconnected persistent member of a shared subscription and
does not hand it to the other members (MQTT 5 section 4.8.2 allows that): without an owner,
every message the round robin gives the dead member waits there until it returns, if ever.
A survivor connects with the dead member's client id (the broker resumes that session and
redelivers what was unacknowledged), drops the member's filters so that the round robin stops
choosing it, feeds what arrives into its own intake, and once drained ends the session. If the
member comes back meanwhile, the broker hands it its session (session takeover) and this
client does not reconnect: the member carries on with whatever is still unacknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from agent.ingest import Ingest, Session
from agent.models import RawMessage

if TYPE_CHECKING:
    from agent.settings import MqttSettings

# Nothing arrived for this long and everything that did is acknowledged: drained.
DRAIN_QUIET_S = 3.0


class Takeover:
    """One dead member's session, held by this member until drained."""

    def __init__(
        self,
        settings: MqttSettings,
        member: str,
        session: Session,
        sink: Callable[[RawMessage], None],
        clock: Callable[[], float],
    ) -> None:
        self.member = member
        self._started = time.monotonic()
        self._ever_connected = False
        self.log = structlog.get_logger("faultmail.takeover").bind(member=member)
        # What the dead member was forwarded is routed afresh: its devices have new owners.
        self.ingest = Ingest(
            settings,
            lambda raw: sink(replace(raw, forwarded=False)),
            on_subscribed=self._connected,
            clock=clock,
            session=session,
        )

    def _connected(self) -> None:
        self._ever_connected = True
        self.log.info("takeover_connected", note="draining what the broker held for it")

    def start(self) -> None:
        self.ingest.start()

    def drained(self, now: float | None = None) -> bool:
        """Connected once, quiet for DRAIN_QUIET_S, and every message acknowledged."""
        now = time.monotonic() if now is None else now
        ingest = self.ingest
        return (
            self._ever_connected
            and ingest.connected()
            and ingest.received == ingest.acked
            and now - max(ingest.last_message, self._started) >= DRAIN_QUIET_S
        )

    def lost(self) -> bool:
        """The member took its session back, or the connection failed and will not retry."""
        return not self.ingest.network_alive() and not self.ingest.connected()

    def ack(self, raw: RawMessage) -> bool:
        return self.ingest.ack(raw)

    def finish(self) -> None:
        """Drained: end the session at the broker, so that nothing is queued for it again."""
        self.log.info(
            "takeover_done", received=self.ingest.received, acknowledged=self.ingest.acked
        )
        self.ingest.end_session()

    def abandon(self) -> None:
        """Stop without ending the session (we stop, or the member is back)."""
        self.ingest.stop()
