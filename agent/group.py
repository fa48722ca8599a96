"""Running as a group (issue #17): the broker is the arbiter, no consensus of our own.

Every member keeps one control connection (clean session, `faultmail-<group>-<instance>-ctl`)
with a Last Will on its retained status topic. Over it the member learns who is online, who
holds the standby lease and which devices the group has blocked, and publishes:

- forwards (shared mode): a device's messages go to one owner, the live member that rendezvous
  hashing picks for its UID, so flood counts, blocks, threads and follow-ups stay whole
  although Mosquitto splits a device's messages round robin across the members;
- held records: an accepted alert is published retained under `held/<instance>/<identity>`
  before the device's message is acknowledged, and cleared once the alert is mailed (or
  otherwise settled), so a member that dies for good strands nothing it had acknowledged;
- blocks: retained under `blocked/<uid>`, honoured by every member, cleared by an unblock on
  any member.

A member that stays offline for cluster.takeover_after is adopted by one survivor (shared: the
rendezvous pick for it; standby: the lease holder): its held records are fed into the
survivor's intake, and in shared mode its MQTT session is taken over (agent.takeover).
In standby mode only the lease holder runs an MQTT data session (one session for the group,
`faultmail-<group>`, whose Will clears the lease); a member that loses the lease while active
exits 75 and systemd restarts it as a standby.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.errors import LeaseLost, OutboxCorrupt, OutboxError
from agent.health import write_atomically
from agent.identity import decision_identity
from agent.imports import without_dnspython
from agent.ingest import Session
from agent.liveness import Stage
from agent.models import Decision, RawMessage
from agent.outbox import Outbox
from agent.settings import Settings
from agent.takeover import Takeover
from agent.tls import tls_context

without_dnspython("paho.mqtt.client")
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402

# Acks of held records we adopted: cleared on the control connection, not PUBACKed.
HELD_SOURCE = -1
TICK_S = 0.25
# How long a held record or forward may wait for its PUBACK before we look again (we wait on
# while the intake beats: an unconfirmed record means no acknowledgement to the broker).
SETTLE_STEP_S = 1.0
SWEEP_EVERY_S = 1.0
GROUP_FILE = "group.json"


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


def rendezvous(key: str, members: Iterable[str]) -> str | None:
    """The member that highest-random-weight hashing gives `key`: the same on every member
    with the same view, and only the keys of a member that leaves move."""
    best: tuple[bytes, str] | None = None
    for member in members:
        weight = hashlib.sha256(f"{member}\x1f{key}".encode()).digest()
        if best is None or (weight, member) > best:
            best = (weight, member)
    return best[1] if best else None


@dataclass(slots=True)
class Member:
    state: str
    role: str
    since: float
    changed: float  # monotonic: when we saw its state change


@dataclass(slots=True)
class _Adoption:
    member: str
    takeover: Takeover | None = None
    session_done: bool = False


@dataclass(slots=True)
class _View:
    members: dict[str, Member] = field(default_factory=dict)
    lease: str | None = None
    lease_seen: bool = False
    blocked_events: list[tuple[str, bool, str]] = field(default_factory=list)


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
        self._settings = settings
        self.mode = cluster.mode
        self.names = Names(cluster.group, cluster.instance)
        self.instance = cluster.instance
        self._sink = sink
        self._stage = stage
        self._on_ready = on_ready
        self._activate = activate
        self._clock = clock
        self._lock = threading.Lock()
        self._view = _View()
        self._role = "standby" if self.mode == "standby" else "member"
        self._since = clock()
        self._subscribed_at: float | None = None
        self._claimed_at: float | None = None
        self._connected = False
        self._stopping = threading.Event()
        self._held_mids = itertools.count(1)
        self._held_topics: dict[int, str] = {}
        self._sources = itertools.count(1)
        self._adoptions: dict[str, _Adoption] = {}
        self._takeovers: dict[int, Takeover] = {}
        self._group_blocked: set[str] = set()
        self._last_sweep = 0.0
        self._written: str | None = None
        self._ready = False
        self._data_subscribed = False
        self._blocks_synced = False
        self._outbox = Outbox(settings.outbox_path, group=cluster.group)
        # Blocks from before this start: the group may have lifted them while we were away.
        self._blocked_at_start = self._outbox.blocked_uids()
        self._file = settings.outbox_path.parent / GROUP_FILE
        self.log = structlog.get_logger("faultmail.group").bind(
            group=cluster.group, instance=self.instance
        )
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="group", daemon=True)

    # ---- the control connection ----------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self._settings.mqtt
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.names.control_id,
            protocol=mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311,
            clean_session=None if s.protocol == "5" else True,
        )
        if s.tls:
            client.tls_set_context(tls_context(s.ca_file, s.client_cert, s.client_key))
        if s.username:
            client.username_pw_set(s.username, s.password())
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        # Held records and forwards of a whole batch are in flight at once.
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.will_set(self.names.status(), self._status_payload("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _status_payload(self, state: str) -> str:
        return json.dumps(
            {
                "state": state,
                "instance": self.instance,
                "mode": self.mode,
                "role": self._role,
                "since": self._since,
                "pid": os.getpid(),
            }
        )

    def start(self) -> None:
        s = self._settings.mqtt
        if s.protocol == "5":
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive, clean_start=True)
        else:
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self._client.loop_start()
        self._thread.start()

    @property
    def active(self) -> bool:
        """Whether this member ingests: always in shared mode, as lease holder in standby."""
        return self.mode == "shared" or self._role == "active"

    def network_alive(self) -> bool:
        thread: threading.Thread | None = getattr(self._client, "_thread", None)
        return thread is not None and thread.is_alive() and self._thread.is_alive()

    def stop(self) -> None:
        """Say goodbye: offline status, and the lease given back if we held it."""
        self._stopping.set()
        self._thread.join(5)
        for adoption in self._adoptions.values():
            if adoption.takeover is not None and not adoption.session_done:
                adoption.takeover.abandon()
        infos = [self._publish(self.names.status(), self._status_payload("offline"))]
        if self._role == "active":
            infos.append(self._publish(self.names.lease, b""))
        self._wait(infos, 3.0)
        self._client.disconnect()
        self._client.loop_stop()
        self._outbox.close()

    def _publish(self, topic: str, payload: str | bytes, retain: bool = True) -> Any:
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def _subscriptions(self) -> list[tuple[str, int]]:
        base = self.names.base
        subs = [(f"{base}/+/status", 1), (self.names.lease, 1), (f"{base}/blocked/+", 1)]
        subs += [(self.names.held_prefix(m) + "#", 1) for m in self._adoptions]
        return subs

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            self.log.error("group_connect_refused", reason=str(rc))
            return
        self._connected = True
        if self.mode == "standby" or self._data_subscribed:
            self._publish(self.names.status(), self._status_payload("online"))
        client.subscribe(self._subscriptions())
        self.log.info("group_connected")

    def data_subscribed(self) -> None:
        """The data session holds its subscriptions (paho's thread, on every (re)connect).

        Shared mode says "online" only now: the others forward a device's messages to its
        owner as soon as they see it online, and a forward that reaches the broker before our
        route subscription matches nothing: the broker acknowledges it all the same (0x10) and
        the alert would be gone (seen when a member came back while its session was taken
        over, which drops the member's route filter)."""
        self._data_subscribed = True
        if self.mode == "shared" and self._connected:
            self._publish(self.names.status(), self._status_payload("online"))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, p: Any) -> None:
        if self._subscribed_at is None:
            self._subscribed_at = time.monotonic()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._connected = False
        if not self._stopping.is_set():
            self.log.warning("group_disconnected", reason=str(rc), note="reconnecting")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._take(msg.topic, bytes(msg.payload))
        except Exception:
            # A callback that raises ends paho's network thread (PITFALLS): log, go on.
            self.log.exception("group_message_failed", topic=msg.topic)

    def _take(self, topic: str, payload: bytes) -> None:
        base = self.names.base + "/"
        if not topic.startswith(base):
            return
        rest = topic[len(base) :]
        if rest == "lease":
            holder = _json(payload).get("instance") if payload else None
            with self._lock:
                self._view.lease = holder if isinstance(holder, str) else None
                self._view.lease_seen = True
        elif rest.startswith("blocked/"):
            uid = rest[len("blocked/") :]
            reason = str(_json(payload).get("reason", "")) if payload else ""
            with self._lock:
                self._view.blocked_events.append((uid, bool(payload), reason))
        elif rest.startswith("held/"):
            if payload:
                self._adopt_record(topic, payload)
        elif rest.endswith("/status"):
            self._member_seen(rest[: -len("/status")], payload)

    def _member_seen(self, instance: str, payload: bytes) -> None:
        info = _json(payload) if payload else {}
        state = "online" if info.get("state") == "online" else "offline"
        role = str(info.get("role", "?"))
        since = info.get("since")
        now = time.monotonic()
        with self._lock:
            old = self._view.members.get(instance)
            changed = now if old is None or old.state != state else old.changed
            self._view.members[instance] = Member(
                state, role, float(since) if isinstance(since, int | float) else 0.0, changed
            )

    # ---- what the intake asks ------------------------------------------------------------

    def live(self) -> list[str]:
        with self._lock:
            online = {m for m, v in self._view.members.items() if v.state == "online"}
        return sorted(online | {self.instance})

    def owner_of(self, uid: str) -> str | None:
        """The member a device's messages belong to; None: this one."""
        if self.mode != "shared":
            return None
        owner = rendezvous(uid, self.live())
        return None if owner in (None, self.instance) else owner

    def forward(self, raw: RawMessage, owner: str) -> Any:
        return self._client.publish(
            self.names.route_prefix(owner) + raw.topic, raw.payload, qos=1, retain=False
        )

    def hold(self, decision: Decision) -> Any:
        """Publish an accepted alert's held record (retained), keyed by its identity."""
        raw = decision.raw
        identity = decision_identity(decision, self.names.group)
        record = json.dumps(
            {
                "topic": raw.topic,
                "payload": base64.b64encode(raw.payload).decode("ascii"),
                "received_at": raw.received_at,
            }
        )
        return self._publish(self.names.held_prefix() + identity, record)

    def settle(self, infos: Sequence[Any], stopping: threading.Event, stage: Stage) -> bool:
        """Wait until the broker has every forward and held record (PUBACK); False if we stop
        first. Meanwhile nothing of the batch is acknowledged, so nothing is lost either way."""
        while not stopping.is_set():
            if self._wait(infos, SETTLE_STEP_S):
                return True
            stage.beat()
            self.log.warning(
                "group_publish_waiting",
                pending=sum(not _acknowledged(i) for i in infos),
                note="device messages are acknowledged once the broker has their held "
                "records and forwards",
            )
        return False

    @staticmethod
    def _wait(infos: Sequence[Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for info in infos:
            while not _acknowledged(info):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                with info._condition:
                    info._condition.wait(min(left, 0.1))
        return True

    def ack(self, raw: RawMessage) -> bool:
        """Acknowledge a message that came by a group path: adopted held record or takeover."""
        if raw.source == HELD_SOURCE:
            topic = self._held_topics.pop(raw.mid, None)
            if topic is not None:
                self._publish(topic, b"")
            return True
        takeover = self._takeovers.get(raw.source)
        return takeover.ack(raw) if takeover is not None else False

    def _adopt_record(self, topic: str, payload: bytes) -> None:
        """A held record of a member we adopted: into our intake as if it came from MQTT."""
        info = _json(payload)
        try:
            original = str(info["topic"])
            body = base64.b64decode(str(info["payload"]), validate=True)
            received_at = float(info.get("received_at") or self._clock())
        except (KeyError, TypeError, ValueError, binascii.Error):
            self.log.warning("held_record_invalid", topic=topic)
            self._publish(topic, b"")
            return
        mid = next(self._held_mids)
        self._held_topics[mid] = topic
        self._sink(
            RawMessage(
                topic=original,
                payload=body,
                mid=mid,
                qos=1,
                dup=True,
                received_at=received_at,
                received_mono=time.monotonic(),
                source=HELD_SOURCE,
            )
        )

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
        if self.mode == "standby":
            self._lease_step()
        elif not self._ready:
            self._shared_start()
        self._adoption_step()
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            try:
                self._sync_blocks()
                self._clear_settled()
            except OutboxCorrupt:
                raise
            except OutboxError as exc:
                self.log.warning("group_sweep_failed", error=str(exc))
            self._write_view()

    def _lease_step(self) -> None:
        if self._subscribed_at is None or not self._connected:
            return
        with self._lock:
            holder, seen = self._view.lease, self._view.lease_seen
        settle = self._settings.cluster.lease_settle
        now = time.monotonic()
        if not seen and now - self._subscribed_at < settle:
            return  # a retained lease, if any, has not reached us yet
        if self._role == "active":
            if holder is None:
                # Our data connection's Will cleared it (a blip): claim it again.
                self._claim(now)
            elif holder != self.instance:
                # Not ours to clear on the way out (stop() clears only a lease we hold).
                self._role = "standby"
                raise LeaseLost(
                    f"member {holder} holds the lease of group {self.names.group}: this member "
                    "steps down (exit 75) and systemd restarts it as a standby"
                )
            return
        if self._claimed_at is not None:
            if now - self._claimed_at < settle:
                return
            self._claimed_at = None
            if holder == self.instance:
                self._become_active()
            return
        if holder is None:
            self._claim(now)
        elif self._subscribed_at is not None and self._role == "standby":
            self._ready_once()

    def _shared_start(self) -> None:
        """Shared mode: ingest once the members' retained statuses had lease_settle to
        arrive, so that the first messages already go to their devices' owners."""
        subscribed = self._subscribed_at
        if (
            subscribed is None
            or time.monotonic() - subscribed < self._settings.cluster.lease_settle
        ):
            return
        self._ready = True
        self._activate()

    def _claim(self, now: float) -> None:
        self._claimed_at = now
        self._publish(
            self.names.lease, json.dumps({"instance": self.instance, "since": self._clock()})
        )
        self.log.info("lease_claimed")

    def _become_active(self) -> None:
        self._role = "active"
        self._since = self._clock()
        self._publish(self.names.status(), self._status_payload("online"))
        self.log.info("lease_held", note="active: ingesting for the group")
        self._activate()
        self._ready_once()

    def _ready_once(self) -> None:
        if not self._ready:
            self._ready = True
            self._on_ready()

    def _adopter(self, member: str) -> str | None:
        if self.mode == "standby":
            with self._lock:
                return self._view.lease
        return rendezvous(f"member:{member}", self.live())

    def _adoption_step(self) -> None:
        after = self._settings.cluster.takeover_after
        now = time.monotonic()
        with self._lock:
            members = dict(self._view.members)
        for name, member in members.items():
            if name == self.instance:
                continue
            adoption = self._adoptions.get(name)
            if member.state == "online":
                if adoption is not None:
                    self._release(adoption)
                continue
            if adoption is None:
                if now - member.changed >= after and self._adopter(name) == self.instance:
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

    def _adopt(self, member: str) -> None:
        self.log.warning(
            "member_adopted",
            member=member,
            note="it has been offline for cluster.takeover_after: its held records "
            + ("and its broker session " if self.mode == "shared" else "")
            + "are taken over",
        )
        adoption = self._adoptions[member] = _Adoption(member)
        self._client.subscribe(self.names.held_prefix(member) + "#", qos=1)
        if self.mode == "shared":
            source = next(self._sources)
            cluster = self._settings.cluster
            session = Session(
                client_id=self.names.data_id(member),
                filters=(),
                unsubscribe=(
                    *(share_filter(cluster.group, t) for t in self._settings.mqtt.topics),
                    self.names.route_prefix(member) + "#",
                ),
                route_prefix=self.names.route_prefix(member),
                source=source,
                reconnect=False,
            )
            takeover = Takeover(self._settings.mqtt, member, session, self._sink, self._clock)
            self._takeovers[source] = takeover
            adoption.takeover = takeover
            takeover.start()
        else:
            adoption.session_done = True

    def _release(self, adoption: _Adoption) -> None:
        self.log.info("member_back", member=adoption.member)
        self._client.unsubscribe(self.names.held_prefix(adoption.member) + "#")
        if adoption.takeover is not None and not adoption.session_done:
            adoption.takeover.abandon()
        del self._adoptions[adoption.member]

    def _sync_blocks(self) -> None:
        """The group's retained blocks and this outbox's blocks, made the same.

        The first time, once the retained blocks have had lease_settle to arrive, a block from
        before this start that the group no longer has was lifted while we were away: it is
        lifted here too, not published again (one made since, by our flood guard, is new).
        From then on a local block the group lacks is ours (flood guard or `faultmail devices
        block`) and is published; one the group lifts is lifted here.
        """
        subscribed = self._subscribed_at
        settle = self._settings.cluster.lease_settle
        if subscribed is None or time.monotonic() - subscribed < settle:
            return
        with self._lock:
            events, self._view.blocked_events = self._view.blocked_events, []
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
        if not self._blocks_synced:
            self._blocks_synced = True
            for uid in sorted((local & self._blocked_at_start) - self._group_blocked):
                self._outbox.set_blocked(
                    uid, False, "unblocked in the group while this member was away", now, "group"
                )
            local = self._outbox.blocked_uids()
        for uid in sorted(local - self._group_blocked):
            self._group_blocked.add(uid)
            self._publish(
                self.names.blocked(uid),
                json.dumps({"uid": uid, "by": self.instance, "at": now, "reason": "blocked"}),
            )
        for uid in sorted(self._group_blocked - local):
            self._group_blocked.discard(uid)
            self._publish(self.names.blocked(uid), b"")

    def _clear_settled(self) -> None:
        """Held records of alerts that are mailed (or otherwise settled) are cleared."""
        while True:
            done = self._outbox.mirror_done(500)
            if not done:
                return
            prefix = self.names.held_prefix()
            for _, identity in done:
                self._publish(prefix + identity, b"")
            self._outbox.mark_mirror_cleared([alert_id for alert_id, _ in done])
            if len(done) < 500:
                return

    def view(self) -> dict[str, Any]:
        with self._lock:
            members = {
                name: {"state": m.state, "role": m.role, "since": m.since}
                for name, m in sorted(self._view.members.items())
            }
            lease = self._view.lease
        return {
            "group": self.names.group,
            "instance": self.instance,
            "mode": self.mode,
            "role": self._role,
            "lease": lease,
            "members": members,
            "adopted": sorted(self._adoptions),
        }

    def _write_view(self) -> None:
        view = self.view()
        text = json.dumps(view, sort_keys=True)
        if text == self._written:
            return
        self._written = text
        try:
            write_atomically(
                Path(self._file), json.dumps({**view, "updated_at": self._clock()}, indent=1)
            )
        except OSError as exc:
            self.log.warning("group_view_unwritable", path=str(self._file), error=str(exc))


def _acknowledged(info: Any) -> bool:
    """Whether the broker acknowledged a QoS 1 publish (its PUBACK arrived).

    Not `is_published()`: a publish made while the connection was down carries rc NO_CONN,
    and is_published() raises on it for good, although paho keeps the message and sends it
    after the reconnect (the PUBACK then marks it published all the same)."""
    return bool(getattr(info, "_published", False))


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
