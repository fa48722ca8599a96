"""The group runtime: one member's part in the group, composed of the parts of this package.

The control connection (`control`) files what it hears into the view (`membership`) or, for
a held record of a member we adopted, into our intake (`held`). The group worker then acts on
it every TICK_S: the lease or the shared start (`activation`), adoptions (`adoption`), and once
a second the shared blocks (`blocks`), the clearing of settled held records and `group.json`
(`group_file`). The intake asks for owners, forwards and held records (agent.intake.GroupLink).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import structlog

from agent.errors import LeaseLost, OutboxCorrupt, OutboxError
from agent.group.activation import Activation
from agent.group.adoption import Adoptions
from agent.group.blocks import BlockSync
from agent.group.control import Control
from agent.group.group_file import GroupFile
from agent.group.held import HELD_SOURCE, HeldRecords
from agent.group.membership import View, rendezvous
from agent.group.names import Names
from agent.group.records import OwnStatus, block_reason, lease_holder, read_status
from agent.liveness import Stage
from agent.models import Decision, RawMessage
from agent.outbox import Outbox

if TYPE_CHECKING:
    from agent.settings import Settings

TICK_S = 0.25
SWEEP_EVERY_S = 1.0


class Group:
    """One member's part in the group: control connection, ownership, lease, adoption."""

    def __init__(
        self,
        settings: Settings,
        sink: Callable[[RawMessage], None],
        stage: Stage,
        on_ready: Callable[[], None],
        activate: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        cluster = settings.cluster
        self.mode = cluster.mode
        self.names = Names(cluster.group, cluster.instance)
        self.instance = cluster.instance
        self._stage = stage
        self._clock = clock
        self._stopping = threading.Event()
        self._last_sweep = 0.0
        self._data_subscribed = False
        role = "standby" if self.mode == "standby" else "member"
        self._status = OwnStatus(self.instance, self.mode, role, clock())
        self._view = View()
        self._outbox = Outbox(settings.outbox_path, group=cluster.group)
        self.log = structlog.get_logger("faultmail.group").bind(
            group=cluster.group, instance=self.instance
        )
        self._control = Control(
            settings.mqtt,
            self.names.control_id,
            (self.names.status(), self._status.payload("offline")),
            on_connected=self._on_connected,
            subscriptions=self._subscriptions,
            on_message=self._take,
            stopping=self._stopping,
            log=self.log,
        )
        control, view, log = self._control, self._view, self.log
        self._activation = Activation(
            self.mode,
            self.names,
            self._status,
            control,
            view,
            cluster.lease_settle,
            activate=activate,
            on_ready=on_ready,
            clock=clock,
            log=log,
        )
        self._held = HeldRecords(self.names, control, self._outbox, sink, clock, log)
        self._adoptions = Adoptions(settings, self.names, control, view, sink, clock, log)
        self._blocks = BlockSync(
            self.names, control, view, self._outbox, cluster.lease_settle, clock
        )
        self._file = GroupFile(settings.outbox_path.parent, clock, log)
        self._thread = threading.Thread(target=self._run, name="group", daemon=True)

    def start(self) -> None:
        self._control.start()
        self._thread.start()

    @property
    def active(self) -> bool:
        """Whether this member ingests: always in shared mode, as lease holder in standby."""
        return self.mode == "shared" or self._status.role == "active"

    def network_alive(self) -> bool:
        return self._control.network_alive() and self._thread.is_alive()

    def stop(self) -> None:
        """Say goodbye: offline status, and the lease given back if we held it."""
        self._stopping.set()
        self._thread.join(5)
        self._adoptions.abandon()
        publish = self._control.publish
        infos = [publish(self.names.status(), self._status.payload("offline"))]
        if self._status.role == "active":
            infos.append(publish(self.names.lease, b""))
        self._control.wait(infos, 3.0)
        self._control.stop()
        self._outbox.close()

    # ---- the control connection ----------------------------------------------------------

    def _subscriptions(self) -> list[tuple[str, int]]:
        base = self.names.base
        subs = [(f"{base}/+/status", 1), (self.names.lease, 1), (f"{base}/blocked/+", 1)]
        subs += [(self.names.held_prefix(m) + "#", 1) for m in self._adoptions.members()]
        return subs

    def _on_connected(self) -> None:
        if self.mode == "standby" or self._data_subscribed:
            self._control.publish(self.names.status(), self._status.payload("online"))

    def data_subscribed(self) -> None:
        """The data session holds its subscriptions (paho's thread, on every (re)connect).

        Shared mode says "online" only now: the others forward a device's messages to its
        owner as soon as they see it online, and a forward that reaches the broker before our
        route subscription matches nothing: the broker acknowledges it all the same (0x10) and
        the alert would be gone (seen when a member came back while its session was taken
        over, which drops the member's route filter)."""
        self._data_subscribed = True
        if self.mode == "shared" and self._control.connected:
            self._control.publish(self.names.status(), self._status.payload("online"))

    def _take(self, topic: str, payload: bytes) -> None:
        base = self.names.base + "/"
        if not topic.startswith(base):
            return
        rest = topic[len(base) :]
        if rest == "lease":
            self._view.lease_seen(lease_holder(payload))
        elif rest.startswith("blocked/"):
            uid = rest[len("blocked/") :]
            self._view.block_seen(uid, bool(payload), block_reason(payload))
        elif rest.startswith("held/"):
            if payload:
                self._held.adopt(topic, payload)
        elif rest.endswith("/status"):
            self._view.member_seen(rest[: -len("/status")], *read_status(payload))

    # ---- what the intake asks ------------------------------------------------------------

    def live(self) -> list[str]:
        return self._view.live(self.instance)

    def owner_of(self, uid: str) -> str | None:
        """The member a device's messages belong to; None: this one."""
        if self.mode != "shared":
            return None
        owner = rendezvous(uid, self.live())
        return None if owner in (None, self.instance) else owner

    def forward(self, raw: RawMessage, owner: str) -> Any:
        return self._control.publish(
            self.names.route_prefix(owner) + raw.topic, raw.payload, retain=False
        )

    def hold(self, decision: Decision) -> Any:
        """Publish an accepted alert's held record (retained), keyed by its identity."""
        return self._held.hold(decision)

    def choosing(self) -> AbstractContextManager[Any]:
        """Held while the intake chooses and publishes a batch's held records."""
        return self._held.choosing()

    def settle(self, infos: Sequence[Any], stopping: threading.Event, stage: Stage) -> bool:
        """Wait until the broker has every forward and held record (agent.group.control)."""
        return self._control.settle(infos, stopping, stage)

    def ack(self, raw: RawMessage) -> bool:
        """Acknowledge a message that came by a group path: adopted held record or takeover."""
        if raw.source == HELD_SOURCE:
            return self._held.ack(raw)
        return self._adoptions.ack(raw)

    # ---- the worker: lease, adoption, sweeps, group.json ---------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.wait(TICK_S):
                self._stage.beat()
                self._tick()
        except LeaseLost as exc:
            self._stage.failed(exc)
        except OutboxCorrupt as exc:
            self._stage.failed(exc)
        except BaseException as exc:
            self.log.critical("group_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self._stage.failed(exc)

    def _tick(self) -> None:
        self._activation.step()
        self._adoptions.step()
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            try:
                self._blocks.sync()
                self._held.clear_settled()
            except OutboxCorrupt:
                raise
            except OutboxError as exc:
                self.log.warning("group_sweep_failed", error=str(exc))
            self._file.write(self.view())

    def view(self) -> dict[str, Any]:
        members, lease = self._view.snapshot()
        return {
            "group": self.names.group,
            "instance": self.instance,
            "mode": self.mode,
            "role": self._status.role,
            "lease": lease,
            "members": members,
            "adopted": sorted(self._adoptions.members()),
        }
