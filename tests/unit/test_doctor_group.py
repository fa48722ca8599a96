"""doctor.group_probe reading the members' retained status and the lease (hostile payloads
included), and doctor.group's verdicts on what was seen: shared subscriptions, members, the
standby lease and this gateway's instance name."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.doctor.group import (
    SHARE_FIX,
    Local,
    group_checks,
    instance_check,
    lease_check,
    local_facts,
    members_check,
    share_check,
    verdicts,
)
from agent.doctor.group_probe import (
    Lease,
    MemberStatus,
    Seen,
    parse_lease,
    parse_status,
    read_message,
)
from agent.doctor.result import Group, Status, fail, ok
from agent.outbox import Outbox
from agent.settings import Settings, load_settings
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]
GRANTED = ReasonCode(PacketTypes.SUBACK, identifier=1)
NOT_SUPPORTED = ReasonCode(PacketTypes.SUBACK, identifier=0x9E)
REFUSED_311 = ReasonCode(PacketTypes.SUBACK, identifier=0x80)
SHARE = "$share/brno-gw/faultmail/brno-gw/doctor"


def local(mode: str = "shared", pid: int | None = None, own_since: float | None = None) -> Local:
    return Local("brno-gw", "gw-a", mode, "broker.lan -p 1883", pid, own_since)


def seen(
    *members: MemberStatus,
    protocol: str = "5",
    flag: int | None = None,
    reply: ReasonCode | None = GRANTED,
    lease: Lease | None = None,
) -> Seen:
    return Seen(
        protocol,
        share_flag=flag,
        share_filter=SHARE,
        share_reply=reply,
        members={m.instance: m for m in members},
        lease=lease or Lease(),
    )


def online(name: str, role: str = "member", **kw: Any) -> MemberStatus:
    return MemberStatus(name, "online", role=role, mode=kw.pop("mode", "shared"), **kw)


def offline(name: str, role: str = "member", **kw: Any) -> MemberStatus:
    return MemberStatus(name, "offline", role=role, mode=kw.pop("mode", "shared"), **kw)


# --- reading what members publish -------------------------------------------------------------


def test_status_payload_is_read_with_its_role_mode_and_since() -> None:
    """A member's JSON status gives its state, role, mode and since; a bare "offline" (a Last
    Will written by hand) is offline; an empty payload is a cleared topic."""
    payload = json.dumps(
        {"state": "online", "instance": "gw-b", "mode": "standby", "role": "active", "since": 5.0}
    ).encode()
    assert parse_status("gw-b", payload) == MemberStatus("gw-b", "online", "active", "standby", 5.0)
    assert parse_status("gw-b", b"offline") == MemberStatus("gw-b", "offline")
    assert parse_status("gw-b", b"") is None


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"state": "zombie"}', "state is 'zombie', not online/offline"),
        (b'{"state": NaN}', "not JSON"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_a_status_nobody_could_have_written_is_unreadable(payload: bytes, problem: str) -> None:
    """Bytes that are not a faultmail status (not UTF-8, not an object, a foreign state, NaN,
    nesting deep enough to exhaust the parser) are "unreadable" with the reason, never a
    traceback."""
    status = parse_status("gw-x", payload)
    assert status is not None and status.state == "unreadable"
    assert problem in status.problem


def test_text_from_other_members_is_made_printable() -> None:
    """A role with a lone surrogate, escape sequences or a newline, and a since of Infinity,
    come out printable and without the bogus time."""
    payload = b'{"state": "online", "role": "\\ud800\\u001b[31mact\\nive", "since": 1e999}'
    status = parse_status("gw-b", payload)
    assert status is not None and status.state == "online"
    assert status.role == "\ufffd [31mact ive" and status.since is None
    status.role.encode("utf-8")  # printable: no lone surrogate left


def test_lease_payloads() -> None:
    """The lease names its holder; empty means nobody; anything else is a problem to show."""
    assert parse_lease(b'{"instance": "gw-a", "since": 7}') == Lease("gw-a", 7.0)
    assert parse_lease(b"") == Lease()
    assert parse_lease(b'{"instance": 5}').problem == "it names no instance"
    assert parse_lease(b"gw-a").problem.startswith("not JSON")


def test_messages_are_filed_under_their_member_and_later_ones_win() -> None:
    """Only faultmail/<group>/<instance>/status and the lease count; another group's topics and
    deeper ones are ignored; an empty status clears the member seen before."""
    found = seen()
    status = b'{"state": "online", "role": "member"}'
    read_message(found, "brno-gw", "faultmail/brno-gw/gw-b/status", status)
    read_message(found, "brno-gw", "faultmail/brno-gw/gw-c/status", status)
    read_message(found, "brno-gw", "faultmail/other/gw-d/status", status)
    read_message(found, "brno-gw", "faultmail/brno-gw/route/gw-e/status", status)
    read_message(found, "brno-gw", "faultmail/brno-gw/gw-c/status", b"")
    read_message(found, "brno-gw", "faultmail/brno-gw/lease", b'{"instance": "gw-b"}')
    assert list(found.members) == ["gw-b"] and found.lease.holder == "gw-b"


# --- shared subscriptions -----------------------------------------------------------------------


def test_connack_flag_zero_fails_shared_mode_with_the_fix() -> None:
    """MQTT 5 Shared Subscription Available = 0 is a FAIL in shared mode whose fix is another
    broker or standby mode; in standby mode it is only reported."""
    check = share_check(local("shared"), seen(flag=0))
    assert check.status is Status.FAIL and "Shared Subscription Available = 0" in check.detail
    assert check.fix == SHARE_FIX
    standby = share_check(local("standby"), seen(flag=0))
    assert standby.status is Status.OK and 'not needed in mode "standby"' in standby.detail
    assert "unavailable" in standby.detail


def test_absent_flag_and_granted_probe_is_ok() -> None:
    """No CONNACK flag (means available) plus a granted $share/ probe is OK and names both;
    MQTT 3.1.1 has no flag: the granted probe alone is OK."""
    v5 = share_check(local(), seen(flag=None))
    assert v5.status is Status.OK and f"{SHARE} granted" in v5.detail
    v311 = share_check(local(), seen(protocol="3.1.1", flag=None))
    assert v311.status is Status.OK and "MQTT 3.1.1 has no flag" in v311.detail


def test_refused_probe_fails_shared_mode() -> None:
    """A SUBACK refusing the $share/ probe (not supported, or 3.1.1's 0x80) or none at all is a
    FAIL in shared mode; "not supported" gets the broker fix, a plain refusal the ACL fix."""
    unsupported = share_check(local(), seen(reply=NOT_SUPPORTED))
    assert unsupported.status is Status.FAIL and unsupported.fix == SHARE_FIX
    refused = share_check(local(), seen(protocol="3.1.1", reply=REFUSED_311))
    assert refused.status is Status.FAIL and f"the broker refused {SHARE}" in refused.detail
    assert "$share/brno-gw/<each mqtt.topics filter>" in refused.fix and SHARE_FIX in refused.fix
    silent = share_check(local(), seen(reply=None))
    assert silent.status is Status.FAIL and f"no SUBACK to {SHARE}" in silent.detail


# --- members ------------------------------------------------------------------------------------


def test_all_members_online_is_ok_with_their_roles() -> None:
    """Every member online in our mode: OK, listing each with its role."""
    check = members_check(local(), seen(online("gw-a"), online("gw-b", since=1_800_000_000)))
    assert check.status is Status.OK
    assert check.detail == (
        "2 of 2 online: gw-a online (member), gw-b online (member, since 2027-01-15T08:00:00Z)"
    )


def test_offline_member_is_a_warning_with_the_way_to_retire_it() -> None:
    """An offline member is a WARN: start it, or clear its retained status if it is retired
    (the exact mosquitto_pub line)."""
    check = members_check(local(), seen(online("gw-a"), offline("gw-c")))
    assert check.status is Status.WARN and "1 of 2 online" in check.detail
    assert "gw-c offline (member)" in check.detail
    assert "start faultmail on gw-c" in check.fix
    assert "mosquitto_pub -h broker.lan -p 1883 -t faultmail/brno-gw/gw-c/status -r -n" in (
        check.fix
    )


def test_member_in_another_mode_is_a_warning() -> None:
    """A member whose status says another mode than ours: WARN naming both modes."""
    check = members_check(local("shared"), seen(online("gw-a"), online("gw-b", mode="standby")))
    assert check.status is Status.WARN
    assert "same cluster.mode" in check.fix and "gw-b: standby" in check.fix


def test_no_member_seen_and_refused_read() -> None:
    """No status at all is a WARN (no member ever connected); a refused subscription to the
    group topics is a FAIL whose fix is the ACL for faultmail/<group>/#."""
    none = members_check(local(), seen())
    assert none.status is Status.WARN and "no member status under faultmail/brno-gw/" in (
        none.detail
    )
    found = seen()
    found.read_refused = ["faultmail/brno-gw/+/status (Not authorized)"]
    refused = members_check(local(), found)
    assert refused.status is Status.FAIL and "faultmail/brno-gw/# in the broker's ACL" in (
        refused.fix
    )


def test_unreadable_status_is_a_warning_naming_the_topic() -> None:
    """A status topic with foreign content: WARN naming the topic to look after."""
    junk = MemberStatus("gw-x", "unreadable", problem="not a JSON object")
    check = members_check(local(), seen(online("gw-a"), junk))
    assert check.status is Status.WARN and "gw-x unreadable (not a JSON object)" in check.detail
    assert "faultmail/brno-gw/gw-x/status" in check.fix


# --- lease --------------------------------------------------------------------------------------


def test_no_lease_is_a_warning_no_active_member() -> None:
    """Standby mode with nobody holding the lease: WARN "no active member"."""
    check = lease_check(local("standby"), seen(online("gw-a", "standby", mode="standby")))
    assert check.status is Status.WARN and check.detail.startswith("no active member")


def test_lease_held_by_an_offline_member_fails() -> None:
    """A lease whose holder's status is offline: FAIL, fix start it or clear the lease."""
    found = seen(offline("gw-b", "active", mode="standby"), lease=Lease("gw-b", 1_800_000_000))
    check = lease_check(local("standby"), found)
    assert check.status is Status.FAIL
    assert check.detail.startswith("held by gw-b, since 2027-01-15T08:00:00Z, whose status is")
    assert "mosquitto_pub -h broker.lan -p 1883 -t faultmail/brno-gw/lease -r -n" in check.fix


def test_lease_held_by_an_online_member_is_ok_and_unknown_holder_warns() -> None:
    """The holder online: OK with its role; a holder without a status topic: WARN."""
    good = lease_check(
        local("standby"), seen(online("gw-b", "active", mode="standby"), lease=Lease("gw-b"))
    )
    assert good.status is Status.OK and good.detail == "held by gw-b (online, active)"
    ghost = lease_check(local("standby"), seen(lease=Lease("gw-z")))
    assert ghost.status is Status.WARN and "status topic is missing" in ghost.detail
    garbled = lease_check(local("standby"), seen(lease=Lease(problem="not a JSON object")))
    assert garbled.status is Status.WARN and "unreadable: not a JSON object" in garbled.detail


def test_lease_line_only_in_standby_mode() -> None:
    """verdicts: shared mode has no lease line, standby mode has one."""
    names = [c.name for c in verdicts(local("shared"), seen())]
    assert names == ["group shared subscriptions", "group members", "group instance"]
    names = [c.name for c in verdicts(local("standby"), seen())]
    assert "group lease" in names


# --- this instance ------------------------------------------------------------------------------


def test_our_name_online_while_our_daemon_is_down_is_another_member() -> None:
    """Our instance's status online while this gateway's daemon is not running: WARN, rename."""
    check = instance_check(local(pid=None), seen(online("gw-a")))
    assert check.status is Status.WARN
    assert "another member uses instance gw-a" in check.detail
    assert "its own cluster.instance" in check.fix
    free = instance_check(local(pid=None), seen(offline("gw-a")))
    assert free.status is Status.OK and "not in use by another member (offline)" in free.detail


def test_our_name_online_while_our_daemon_runs_is_us() -> None:
    """Daemon running: a matching pid or since says "this gateway"; a different pid is
    another member; no way to tell is "(this gateway?)"; no status at all is a WARN."""
    us = instance_check(local(pid=41), seen(online("gw-a", pid=41)))
    assert us.status is Status.OK and us.detail == "gw-a online: this gateway (pid 41)"
    them = instance_check(local(pid=41), seen(online("gw-a", pid=42)))
    assert them.status is Status.WARN and "another member uses instance gw-a" in them.detail
    same_since = instance_check(local(pid=41, own_since=5.0), seen(online("gw-a", since=5.0)))
    assert same_since.status is Status.OK and "this gateway (since" in same_since.detail
    unsure = instance_check(local(pid=41, own_since=5.0), seen(online("gw-a", since=9.0)))
    assert unsure.detail == "gw-a online (this gateway?)"
    down = instance_check(local(pid=41), seen(offline("gw-a")))
    assert down.status is Status.WARN and "group connection to the broker is down" in (down.detail)


# --- the family as doctor runs it --------------------------------------------------------------


def grouped(tmp_path: Path, write_config: Writer, **cluster: Any) -> Settings:
    doc = base_config(tmp_path)
    doc["cluster"] = {"mode": "standby", "group": "brno-gw", "instance": "gw-a", **cluster}
    return load_settings(write_config(doc))


def test_single_mode_is_one_ok_line(settings: Settings) -> None:
    """Single mode: one OK "group" line and no broker connection."""
    (check,) = group_checks(settings, 0.1, Group([ok("broker", "fine")])).checks
    assert check.status is Status.OK and check.name == "group"
    assert "single mode" in check.detail


def test_broker_failure_means_group_not_checked(tmp_path: Path, write_config: Writer) -> None:
    """When the broker checks failed, the group family says so in one WARN and does not try
    the broker again (no second timeout)."""
    settings = grouped(tmp_path, write_config)
    broker = Group([fail("broker", "cannot connect to 127.0.0.1:1883", "start it")])
    started = time.monotonic()
    (check,) = group_checks(settings, 5.0, broker).checks
    assert time.monotonic() - started < 1.0
    assert check.status is Status.WARN and "group brno-gw not checked" in check.detail


def test_local_facts_read_the_heartbeat_and_group_file(
    tmp_path: Path, write_config: Writer
) -> None:
    """No database: the daemon is not running. A fresh heartbeat from a live pid: it runs; the
    group.json's own member gives the since to compare."""
    settings = grouped(tmp_path, write_config)
    assert local_facts(settings).daemon_pid is None
    settings.gateway.state_dir.mkdir()
    box = Outbox(settings.outbox_path)
    box.health(time.time(), os.getpid())
    box.close()
    view = {"members": {"gw-a": {"state": "online", "role": "active", "since": 12.5}}}
    (settings.gateway.state_dir / "group.json").write_text(json.dumps(view))
    facts = local_facts(settings)
    assert (facts.daemon_pid, facts.own_since) == (os.getpid(), 12.5)
    assert facts.broker == "127.0.0.1 -p 1883"
