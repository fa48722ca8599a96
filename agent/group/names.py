"""Every topic and client id of a group member, and the MQTT sessions made of them: the data
session a member opens (shared or standby) and the one a survivor opens to take over a dead
member's (agent.takeover)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.ingest import Session

if TYPE_CHECKING:
    from agent.settings import Settings


def share_filter(group: str, topic: str) -> str:
    return f"$share/{group}/{topic}"


@dataclass(frozen=True, slots=True)
class Names:
    """Every topic and client id of one member of one group."""

    group: str
    instance: str

    @property
    def base(self) -> str:
        return f"faultmail/{self.group}"

    def status(self, instance: str | None = None) -> str:
        return f"{self.base}/{instance or self.instance}/status"

    @property
    def lease(self) -> str:
        return f"{self.base}/lease"

    def blocked(self, uid: str) -> str:
        return f"{self.base}/blocked/{uid}"

    def route_prefix(self, instance: str | None = None) -> str:
        return f"{self.base}/route/{instance or self.instance}/"

    def held_prefix(self, instance: str | None = None) -> str:
        return f"{self.base}/held/{instance or self.instance}/"

    @property
    def control_id(self) -> str:
        return f"faultmail-{self.group}-{self.instance}-ctl"

    def data_id(self, instance: str | None = None) -> str:
        return f"faultmail-{self.group}-{instance or self.instance}"

    @property
    def standby_id(self) -> str:
        return f"faultmail-{self.group}"


def data_session(settings: Settings) -> Session:
    """The data connection a member opens: shared or standby, per the spec in the README."""
    cluster = settings.cluster
    names = Names(cluster.group, cluster.instance)
    topics = tuple(settings.mqtt.topics)
    if cluster.mode == "shared":
        return Session(
            client_id=names.data_id(),
            filters=(
                *(share_filter(cluster.group, t) for t in topics),
                names.route_prefix() + "#",
            ),
            route_prefix=names.route_prefix(),
        )
    return Session(client_id=names.standby_id, filters=topics, will=(names.lease, b""))


def takeover_session(settings: Settings, member: str, source: int) -> Session:
    """The dead shared member's own session, resumed by a survivor: it subscribes to nothing
    and drops the member's filters, so that the round robin stops choosing it; it does not
    reconnect once the member takes its session back."""
    cluster = settings.cluster
    names = Names(cluster.group, cluster.instance)
    return Session(
        client_id=names.data_id(member),
        filters=(),
        unsubscribe=(
            *(share_filter(cluster.group, t) for t in settings.mqtt.topics),
            names.route_prefix(member) + "#",
        ),
        route_prefix=names.route_prefix(member),
        source=source,
        reconnect=False,
    )
