"""Adopting a member that stays offline for cluster.takeover_after: one survivor (shared: the
rendezvous pick for it; standby: the lease holder) subscribes to its held records, and in
shared mode takes over its MQTT session too (agent.takeover) until that is drained. A member
that comes back is released: its records and session are its own again."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from agent.group.control import Control
from agent.group.membership import View, rendezvous
from agent.group.names import Names, takeover_session
from agent.models import RawMessage
from agent.takeover import Takeover

if TYPE_CHECKING:
    from agent.settings import Settings

Log = structlog.typing.FilteringBoundLogger


@dataclass(slots=True)
class _Adoption:
    member: str
    takeover: Takeover | None = None
    session_done: bool = False


class Adoptions:
    """The members this one adopted, and the sessions it holds for them."""

    def __init__(
        self,
        settings: Settings,
        names: Names,
        control: Control,
        view: View,
        sink: Callable[[RawMessage], None],
        clock: Callable[[], float],
        log: Log,
    ) -> None:
        self._settings = settings
        self._mode = settings.cluster.mode
        self._names = names
        self._control = control
        self._view = view
        self._sink = sink
        self._clock = clock
        self.log = log
        self._adoptions: dict[str, _Adoption] = {}
        self._sources = itertools.count(1)
        self._takeovers: dict[int, Takeover] = {}  # by the source its messages carry

    def members(self) -> list[str]:
        """The adopted members, in the order they were adopted."""
        return list(self._adoptions)

    def ack(self, raw: RawMessage) -> bool:
        """Acknowledge a message that came through a takeover session."""
        takeover = self._takeovers.get(raw.source)
        return takeover.ack(raw) if takeover is not None else False

    def step(self) -> None:
        after = self._settings.cluster.takeover_after
        now = time.monotonic()
        members = self._view.members()
        for name, member in members.items():
            if name == self._names.instance:
                continue
            adoption = self._adoptions.get(name)
            if member.state == "online":
                if adoption is not None:
                    self._release(adoption)
                continue
            if adoption is None:
                if now - member.changed >= after and self._adopter(name) == self._names.instance:
                    self._adopt(name)
                continue
            takeover = adoption.takeover
            if takeover is not None and not adoption.session_done:
                if takeover.drained(now):
                    takeover.finish()
                    adoption.session_done = True
                elif takeover.lost():
                    self.log.warning("takeover_lost", member=name, note="the member is back")
                    adoption.session_done = True

    def abandon(self) -> None:
        """Stopping: the sessions still draining are left to the broker (and their member)."""
        for adoption in self._adoptions.values():
            if adoption.takeover is not None and not adoption.session_done:
                adoption.takeover.abandon()

    def _adopter(self, member: str) -> str | None:
        if self._mode == "standby":
            return self._view.lease()[0]
        return rendezvous(f"member:{member}", self._view.live(self._names.instance))

    def _adopt(self, member: str) -> None:
        self.log.warning(
            "member_adopted",
            member=member,
            note="it has been offline for cluster.takeover_after: its held records "
            + ("and its broker session " if self._mode == "shared" else "")
            + "are taken over",
        )
        adoption = self._adoptions[member] = _Adoption(member)
        self._control.client.subscribe(self._names.held_prefix(member) + "#", qos=1)
        if self._mode == "shared":
            source = next(self._sources)
            session = takeover_session(self._settings, member, source)
            takeover = Takeover(self._settings.mqtt, member, session, self._sink, self._clock)
            self._takeovers[source] = takeover
            adoption.takeover = takeover
            takeover.start()
        else:
            adoption.session_done = True

    def _release(self, adoption: _Adoption) -> None:
        self.log.info("member_back", member=adoption.member)
        self._control.client.unsubscribe(self._names.held_prefix(adoption.member) + "#")
        if adoption.takeover is not None and not adoption.session_done:
            adoption.takeover.abandon()
        del self._adoptions[adoption.member]
