"""The group runtime's decisions without a broker: ownership, what a control message means,
the lease, held records adopted, blocks kept the same as the group's. The broker side runs in
tests/integration/test_group.py and tests/faults/test_group_faults.py."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import LeaseLost
from agent.group import HELD_SOURCE, Group, Names, data_session, rendezvous
from agent.liveness import Stage
from agent.models import RawMessage
from agent.outbox import Outbox
from agent.settings import Settings, load_settings
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]


def _settings(tmp_path: Path, write_config: Writer, mode: str) -> Settings:
    doc = base_config(tmp_path)
    doc["cluster"] = {"mode": mode, "group": "brno-gw", "instance": "gw-a", "lease_settle": 0.5}
    return load_settings(write_config(doc))


class _Recorder:
    """Stands in for the control connection's publish: what would have gone to the broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: str | bytes, retain: bool = True) -> Any:
        self.sent.append((topic, payload.encode() if isinstance(payload, str) else payload))
        return None


@pytest.fixture
def make_group(
    tmp_path: Path, write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[Group, _Recorder, list[RawMessage], list[str]]]:
    def make(mode: str = "shared") -> tuple[Group, _Recorder, list[RawMessage], list[str]]:
        sunk: list[RawMessage] = []
        events: list[str] = []
        group = Group(
            _settings(tmp_path, write_config, mode),
            sink=sunk.append,
            stage=Stage("group"),
            on_ready=lambda: events.append("ready"),
            activate=lambda: events.append("activate"),
        )
        recorder = _Recorder()
        monkeypatch.setattr(group._control, "publish", recorder)
        monkeypatch.setattr(group._control.client, "subscribe", lambda *a, **k: None)
        group._control.connected = True
        group._control.subscribed_at = time.monotonic() - 10
        return group, recorder, sunk, events

    return make


def _status(group: Group, instance: str, state: str, role: str = "member") -> None:
    payload = json.dumps({"state": state, "instance": instance, "role": role, "since": 1.0})
    group._take(f"faultmail/brno-gw/{instance}/status", payload.encode())


def test_rendezvous_moves_only_the_keys_of_the_member_that_left() -> None:
    members = ["gw-a", "gw-b", "gw-c"]
    uids = [f"dev{n:03}" for n in range(300)]
    before = {uid: rendezvous(uid, members) for uid in uids}
    assert before == {uid: rendezvous(uid, reversed(members)) for uid in uids}
    assert set(before.values()) == set(members)
    after = {uid: rendezvous(uid, ["gw-a", "gw-c"]) for uid in uids}
    moved = {uid for uid in uids if before[uid] != after[uid]}
    assert moved == {uid for uid in uids if before[uid] == "gw-b"}
    assert rendezvous("dev", []) is None


def test_data_sessions_per_mode(tmp_path: Path, write_config: Writer) -> None:
    shared = data_session(_settings(tmp_path, write_config, "shared"))
    assert shared.client_id == "faultmail-brno-gw-gw-a"
    assert shared.filters == ("$share/brno-gw/devices/+/fault", "faultmail/brno-gw/route/gw-a/#")
    assert shared.route_prefix == "faultmail/brno-gw/route/gw-a/"
    assert shared.will is None
    standby = data_session(_settings(tmp_path, write_config, "standby"))
    assert standby.client_id == "faultmail-brno-gw"
    assert standby.filters == ("devices/+/fault",)
    assert standby.will == ("faultmail/brno-gw/lease", b"")


def test_ownership_follows_the_members_online(make_group: Callable[..., Any]) -> None:
    group, _, _, _ = make_group("shared")
    uids = [f"dev{n:03}" for n in range(60)]
    assert all(group.owner_of(uid) is None for uid in uids)  # alone: every device is ours
    _status(group, "gw-b", "online")
    owners = {uid: group.owner_of(uid) for uid in uids}
    assert set(owners.values()) == {None, "gw-b"}
    assert all((owners[uid] or "gw-a") == rendezvous(uid, ["gw-a", "gw-b"]) for uid in uids)
    _status(group, "gw-b", "offline")
    assert all(group.owner_of(uid) is None for uid in uids)


def test_standby_never_forwards(make_group: Callable[..., Any]) -> None:
    group, _, _, _ = make_group("standby")
    _status(group, "gw-b", "online", "standby")
    assert {group.owner_of(f"dev{n}") for n in range(40)} == {None}


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'{"state": "online"'], ids=repr
)
def test_a_garbled_status_counts_as_offline(make_group: Callable[..., Any], payload: bytes) -> None:
    group, _, _, _ = make_group("shared")
    group._take("faultmail/brno-gw/gw-x/status", payload)
    assert group.view()["members"]["gw-x"]["state"] == "offline"
    assert group.live() == ["gw-a"]


def test_a_device_named_status_is_a_block_not_a_member(make_group: Callable[..., Any]) -> None:
    """`blocked/status` also matches the `+/status` subscription."""
    group, _, _, _ = make_group("shared")
    group._take("faultmail/brno-gw/blocked/status", b'{"uid": "status"}')
    assert "blocked" not in group.view()["members"]
    assert group._view.take_blocked_events() == [("status", True, "")]


def test_a_held_record_is_fed_in_and_cleared_on_ack(make_group: Callable[..., Any]) -> None:
    group, sent, sunk, _ = make_group("shared")
    body = b'{"code": "E1", "severity": "critical", "message": "x", "seq": 4}'
    record = {"topic": "devices/p1/fault", "payload": base64.b64encode(body).decode()}
    topic = "faultmail/brno-gw/held/gw-b/" + "a" * 32
    group._take(topic, json.dumps({**record, "received_at": 5.0}).encode())
    (raw,) = sunk
    assert (raw.topic, raw.payload, raw.source, raw.received_at) == (
        "devices/p1/fault",
        body,
        HELD_SOURCE,
        5.0,
    )
    assert sent.sent == []
    assert group.ack(raw)
    assert sent.sent == [(topic, b"")]


@pytest.mark.parametrize(
    "record",
    [b"{}", b'{"topic": "t", "payload": "***"}', b'{"payload": "eA=="}', b"nonsense"],
    ids=repr,
)
def test_an_invalid_held_record_is_cleared_not_fed_in(
    make_group: Callable[..., Any], record: bytes
) -> None:
    group, sent, sunk, _ = make_group("shared")
    topic = "faultmail/brno-gw/held/gw-b/" + "b" * 32
    group._take(topic, record)
    assert sunk == []
    assert sent.sent == [(topic, b"")]


def test_an_empty_lease_is_claimed_and_held_after_settling(
    make_group: Callable[..., Any],
) -> None:
    group, sent, _, events = make_group("standby")
    group._take("faultmail/brno-gw/lease", b"")
    group._activation.lease_step()
    assert sent.sent[-1][0] == "faultmail/brno-gw/lease"
    assert json.loads(sent.sent[-1][1])["instance"] == "gw-a"
    group._take("faultmail/brno-gw/lease", sent.sent[-1][1])
    group._activation.lease_step()
    assert events == []  # still settling
    group._activation.claimed_at = time.monotonic() - 1
    group._activation.lease_step()
    assert events == ["activate", "ready"]
    assert group.view()["role"] == "active"


def test_a_claim_that_another_member_overwrote_stays_standby(
    make_group: Callable[..., Any],
) -> None:
    group, _, _, events = make_group("standby")
    group._take("faultmail/brno-gw/lease", b"")
    group._activation.lease_step()
    group._take("faultmail/brno-gw/lease", b'{"instance": "gw-b"}')
    group._activation.claimed_at = time.monotonic() - 1
    group._activation.lease_step()
    group._activation.lease_step()
    assert events == ["ready"]
    assert group.view()["role"] == "standby"


def test_an_active_member_that_sees_another_holder_steps_down(
    make_group: Callable[..., Any],
) -> None:
    group, _, _, _ = make_group("standby")
    group._status.role = "active"
    group._take("faultmail/brno-gw/lease", b'{"instance": "gw-b"}')
    with pytest.raises(LeaseLost, match="gw-b holds the lease"):
        group._activation.lease_step()
    assert group.view()["role"] == "standby"  # stop() must not clear gw-b's lease


def test_an_active_member_whose_lease_was_cleared_claims_it_again(
    make_group: Callable[..., Any],
) -> None:
    group, sent, _, _ = make_group("standby")
    group._status.role = "active"
    group._take("faultmail/brno-gw/lease", b"")
    group._activation.lease_step()
    assert sent.sent and sent.sent[-1][0] == "faultmail/brno-gw/lease"


def test_blocks_are_kept_the_same_as_the_groups(make_group: Callable[..., Any]) -> None:
    group, sent, _, _ = make_group("shared")
    outbox: Outbox = group._outbox
    now = time.time()
    # Blocked here before a restart, and lifted by the group meanwhile: lifted here too.
    outbox.set_blocked("old", True, "test", now, "tester")
    group._blocks.blocked_at_start = outbox.blocked_uids()
    # Blocked by our flood guard since the start, before the first sync: a new block.
    outbox.set_blocked("rogue", True, "flood", now, "tester")
    group._blocks.sync()
    assert "old" not in outbox.blocked_uids()
    assert sent.sent == [("faultmail/brno-gw/blocked/rogue", sent.sent[0][1])]
    # A block made here later is published to the group too.
    outbox.set_blocked("rogue-2", True, "flood", now, "tester")
    group._blocks.sync()
    assert sent.sent[-1][0] == "faultmail/brno-gw/blocked/rogue-2"
    assert json.loads(sent.sent[-1][1])["by"] == "gw-a"
    # A block another member published is honoured here, without publishing it again.
    group._take("faultmail/brno-gw/blocked/other", b'{"uid": "other", "reason": "flood"}')
    published = len(sent.sent)
    group._blocks.sync()
    assert "other" in outbox.blocked_uids()
    assert len(sent.sent) == published
    # The group lifts it: lifted here.
    group._take("faultmail/brno-gw/blocked/other", b"")
    group._blocks.sync()
    assert "other" not in outbox.blocked_uids()
    # Unblocked here (the CLI): cleared for the group.
    outbox.set_blocked("rogue", False, "", now, "tester")
    group._blocks.sync()
    assert sent.sent[-1] == ("faultmail/brno-gw/blocked/rogue", b"")
    assert "rogue-2" in outbox.blocked_uids()


def test_names() -> None:
    names = Names("g", "a")
    assert names.status() == "faultmail/g/a/status"
    assert names.status("b") == "faultmail/g/b/status"
    assert names.held_prefix("b") == "faultmail/g/held/b/"
    assert names.control_id == "faultmail-g-a-ctl"
    assert names.data_id("b") == "faultmail-g-b"


@pytest.mark.parametrize("mode", ["shared", "standby"])
def test_a_shared_member_says_online_only_once_its_data_session_subscribed(
    make_group: Callable[..., Any], mode: str
) -> None:
    """Others forward to a member they see online: before its route subscription exists the
    broker would acknowledge those forwards and drop them."""
    group, sent, _, _ = make_group(mode)
    connack = ReasonCode(PacketTypes.CONNACK, identifier=0)
    group._control._on_connect(group._control.client, None, None, connack, None)
    online = [(t, json.loads(p)["state"]) for t, p in sent.sent]
    if mode == "standby":
        assert online == [("faultmail/brno-gw/gw-a/status", "online")]
        return
    assert online == []
    group.data_subscribed()
    assert [(t, json.loads(p)["state"]) for t, p in sent.sent] == [
        ("faultmail/brno-gw/gw-a/status", "online")
    ]
    group._control._on_connect(
        group._control.client, None, None, connack, None
    )  # a reconnect: at once
    assert len(sent.sent) == 2
