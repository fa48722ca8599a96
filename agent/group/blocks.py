"""Blocks shared by the group: retained under `blocked/<uid>`, honoured by every member,
cleared by an unblock on any member. The group's blocks and this member's outbox are kept the
same by one sweep, on the group worker."""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.group.control import Control
from agent.group.membership import View
from agent.group.names import Names
from agent.group.records import block_payload
from agent.outbox import Outbox


class BlockSync:
    """The group's retained blocks, as this member last published or honoured them."""

    def __init__(
        self,
        names: Names,
        control: Control,
        view: View,
        outbox: Outbox,
        settle: float,
        clock: Callable[[], float],
    ) -> None:
        self._names = names
        self._control = control
        self._view = view
        self._outbox = outbox
        self._settle = settle
        self._clock = clock
        self._group_blocked: set[str] = set()
        self._synced = False
        # Blocks from before this start: the group may have lifted them while we were away.
        self.blocked_at_start = outbox.blocked_uids()

    def sync(self) -> None:
        """The group's retained blocks and this outbox's blocks, made the same.

        The first time, once the retained blocks have had lease_settle to arrive, a block from
        before this start that the group no longer has was lifted while we were away: it is
        lifted here too, not published again (one made since, by our flood guard, is new).
        From then on a local block the group lacks is ours (flood guard or `faultmail devices
        block`) and is published; one the group lifts is lifted here.
        """
        subscribed = self._control.subscribed_at
        if subscribed is None or time.monotonic() - subscribed < self._settle:
            return
        events = self._view.take_blocked_events()
        now = self._clock()
        for uid, blocked, reason in events:
            if blocked:
                self._group_blocked.add(uid)
                if uid not in self._outbox.blocked_uids():
                    self._outbox.set_blocked(
                        uid, True, reason or "blocked by the group", now, "group"
                    )
            else:
                self._group_blocked.discard(uid)
                self._outbox.set_blocked(uid, False, "", now, "group")
        local = self._outbox.blocked_uids()
        if not self._synced:
            self._synced = True
            for uid in sorted((local & self.blocked_at_start) - self._group_blocked):
                self._outbox.set_blocked(
                    uid, False, "unblocked in the group while this member was away", now, "group"
                )
            local = self._outbox.blocked_uids()
        for uid in sorted(local - self._group_blocked):
            self._group_blocked.add(uid)
            self._control.publish(
                self._names.blocked(uid), block_payload(uid, self._names.instance, now)
            )
        for uid in sorted(self._group_blocked - local):
            self._group_blocked.discard(uid)
            self._control.publish(self._names.blocked(uid), b"")
