"""When a member starts ingesting, and when it must stop.

Shared mode: once the members' retained statuses had cluster.lease_settle to arrive, so that
the first messages already go to their devices' owners. Standby mode: as the holder of the
retained lease. A standby claims an empty lease, waits lease_settle for a competing claim to
overwrite it, and becomes active if the lease still names it; an active member whose lease was
cleared (its data connection's Will, a blip) claims it again, and one that sees another holder
steps down (LeaseLost: exit 75, and systemd restarts it as a standby)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from agent.errors import LeaseLost
from agent.group.control import Control
from agent.group.membership import View
from agent.group.names import Names
from agent.group.records import OwnStatus, lease_payload

Log = structlog.typing.FilteringBoundLogger


class Activation:
    """The member's role over time: the lease steps (standby) or the start (shared)."""

    def __init__(
        self,
        mode: str,
        names: Names,
        status: OwnStatus,
        control: Control,
        view: View,
        settle: float,
        activate: Callable[[], None],
        on_ready: Callable[[], None],
        clock: Callable[[], float],
        log: Log,
    ) -> None:
        self._mode = mode
        self._names = names
        self._status = status
        self._control = control
        self._view = view
        self._settle = settle
        self._activate = activate  # start ingesting (the data session)
        self._on_ready = on_ready  # the daemon is ready (sd_notify)
        self._clock = clock
        self.log = log
        self.claimed_at: float | None = None
        self.ready = False

    def step(self) -> None:
        if self._mode == "standby":
            self.lease_step()
        elif not self.ready:
            self._shared_start()

    def lease_step(self) -> None:
        control = self._control
        if control.subscribed_at is None or not control.connected:
            return
        holder, seen = self._view.lease()
        settle = self._settle
        now = time.monotonic()
        if not seen and now - control.subscribed_at < settle:
            return  # a retained lease, if any, has not reached us yet
        if self._status.role == "active":
            if holder is None:
                # Our data connection's Will cleared it (a blip): claim it again.
                self._claim(now)
            elif holder != self._names.instance:
                # Not ours to clear on the way out (stop() clears only a lease we hold).
                self._status.role = "standby"
                raise LeaseLost(
                    f"member {holder} holds the lease of group {self._names.group}: this member "
                    "steps down (exit 75) and systemd restarts it as a standby"
                )
            return
        if self.claimed_at is not None:
            if now - self.claimed_at < settle:
                return
            self.claimed_at = None
            if holder == self._names.instance:
                self._become_active()
            return
        if holder is None:
            self._claim(now)
        elif control.subscribed_at is not None and self._status.role == "standby":
            self._ready_once()

    def _shared_start(self) -> None:
        """Shared mode: ingest once the members' retained statuses had lease_settle to
        arrive, so that the first messages already go to their devices' owners."""
        subscribed = self._control.subscribed_at
        if subscribed is None or time.monotonic() - subscribed < self._settle:
            return
        self.ready = True
        self._activate()

    def _claim(self, now: float) -> None:
        self.claimed_at = now
        self._control.publish(self._names.lease, lease_payload(self._names.instance, self._clock()))
        self.log.info("lease_claimed")

    def _become_active(self) -> None:
        self._status.role = "active"
        self._status.since = self._clock()
        self._control.publish(self._names.status(), self._status.payload("online"))
        self.log.info("lease_held", note="active: ingesting for the group")
        self._activate()
        self._ready_once()

    def _ready_once(self) -> None:
        if not self.ready:
            self.ready = True
            self._on_ready()
