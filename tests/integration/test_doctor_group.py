"""`faultmail doctor`'s group checks against Mosquitto: other members are faked by retained
status and lease messages published the way members publish them, and doctor reads them
through its own throw-away session (faultmail-<group>-<instance>-doctor)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent import doctor
from agent.doctor import Check, Status
from agent.doctor.broker import broker_checks
from agent.doctor.group import group_checks
from agent.outbox import Outbox
from agent.settings import Settings
from tests.conftest import write_secret
from tests.harness.dns import DnsServer
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.integration.conftest import SettingsFactory, by_name, run
from tests.integration.test_doctor_broker import DYNSEC_PLUGIN, dynsec_config

pytestmark = pytest.mark.integration

GROUP = "brno-gw"
SINCE = 1_800_000_000.0


def status(instance: str, state: str, mode: str, role: str, since: float = SINCE) -> bytes:
    """A member's status payload as the group runtime writes it."""
    document = {"state": state, "instance": instance, "mode": mode, "role": role, "since": since}
    return json.dumps(document).encode()


def fake_members(broker: Mosquitto, messages: dict[str, bytes], protocol: str = "5") -> None:
    """Publish retained messages under faultmail/<GROUP>/ (topic relative to it)."""
    publish_many(
        broker,
        [(f"faultmail/{GROUP}/{topic}", payload) for topic, payload in messages.items()],
        retain=True,
        protocol=protocol,
    )


def member_settings(
    settings_for: SettingsFactory, mode: str, protocol: str = "5", **kwargs: Any
) -> Settings:
    cluster = {"mode": mode, "group": GROUP, "instance": "gw-a"}
    return settings_for(extra={"cluster": cluster}, mqtt={"protocol": protocol}, **kwargs)


def group_family(settings: Settings, timeout: float = 5.0) -> dict[str, Check]:
    """The broker family, then the group family, as doctor runs them."""
    broker = broker_checks(settings, timeout)
    return by_name(group_checks(settings, timeout, broker).checks)


def test_standby_group_in_the_doctor_report(
    settings_for: SettingsFactory, dns_server: DnsServer, mosquitto: Mosquitto
) -> None:
    """Two members faked on the broker (gw-b active and holding the lease, gw-c offline):
    doctor's report has the group lines after the broker's, names the lease holder, warns
    about the offline member with the command that retires it, and finds our name free."""
    fake_members(
        mosquitto,
        {
            "gw-b/status": status("gw-b", "online", "standby", "active"),
            "gw-c/status": status("gw-c", "offline", "standby", "standby", SINCE + 100),
            "lease": json.dumps({"instance": "gw-b", "since": SINCE}).encode(),
        },
    )
    checks = run(member_settings(settings_for, "standby"), dns_server)
    names = [c.name for c in checks]
    at = names.index("broker subscribe") + 1
    assert names[at : at + 4] == [
        "group shared subscriptions",
        "group members",
        "group lease",
        "group instance",
    ]
    found = by_name(checks)
    share = found["group shared subscriptions"]
    assert share.status is Status.OK and 'not needed in mode "standby"' in share.detail
    members = found["group members"]
    assert members.status is Status.WARN
    assert members.detail == (
        "1 of 2 online: gw-b online (active, since 2027-01-15T08:00:00Z), "
        "gw-c offline (standby, since 2027-01-15T08:01:40Z)"
    )
    assert (
        f"mosquitto_pub -h {mosquitto.host} -p {mosquitto.port} -t faultmail/{GROUP}/gw-c/status"
        " -r -n" in members.fix
    )
    lease = found["group lease"]
    assert lease.status is Status.OK
    assert lease.detail == "held by gw-b, since 2027-01-15T08:00:00Z (online, active)"
    instance = found["group instance"]
    assert instance.status is Status.OK
    assert instance.detail == "gw-a is not in use by another member (missing)"
    assert f"faultmail-{GROUP}-gw-a-doctor" in mosquitto.log_text()
    text = doctor.format_checks(checks)
    assert "group members" in text and "fix: start faultmail on gw-c" in text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_stale_lease_and_our_name_taken(
    settings_for: SettingsFactory, mosquitto: Mosquitto, protocol: str
) -> None:
    """The lease held by a member whose status is offline is a FAIL (nobody ingests); our
    instance name online while this gateway's daemon is not running is a WARN (another
    member uses it)."""
    fake_members(
        mosquitto,
        {
            "gw-a/status": status("gw-a", "online", "standby", "standby"),
            "gw-b/status": status("gw-b", "offline", "standby", "active"),
            "lease": json.dumps({"instance": "gw-b", "since": SINCE}).encode(),
        },
        protocol,
    )
    found = group_family(member_settings(settings_for, "standby", protocol))
    lease = found["group lease"]
    assert lease.status is Status.FAIL
    assert "held by gw-b, since 2027-01-15T08:00:00Z, whose status is offline" in lease.detail
    assert f"-t faultmail/{GROUP}/lease -r -n" in lease.fix
    instance = found["group instance"]
    assert instance.status is Status.WARN
    assert "another member uses instance gw-a" in instance.detail
    assert "its own cluster.instance" in instance.fix


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_shared_group_on_a_broker_with_shared_subscriptions(
    settings_for: SettingsFactory, mosquitto: Mosquitto, protocol: str
) -> None:
    """Mosquitto offers shared subscriptions (MQTT 5 CONNACK and a granted $share/ probe, or
    the probe alone on 3.1.1): OK. A member in another mode and a status topic written by
    something else are WARNs naming them."""
    fake_members(
        mosquitto,
        {
            "gw-b/status": status("gw-b", "online", "shared", "member"),
            "gw-c/status": status("gw-c", "online", "standby", "standby"),
            "gw-x/status": b"hello",
        },
        protocol,
    )
    found = group_family(member_settings(settings_for, "shared", protocol))
    share = found["group shared subscriptions"]
    assert share.status is Status.OK
    assert f"$share/{GROUP}/faultmail/{GROUP}/doctor granted" in share.detail
    members = found["group members"]
    assert members.status is Status.WARN
    assert members.detail.startswith("2 of 3 online: gw-b online (member, since")
    assert "gw-x unreadable (not JSON" in members.detail
    assert "this gateway: shared; gw-c: standby" in members.fix
    assert f"faultmail/{GROUP}/gw-x/status" in members.fix
    assert "group lease" not in found


def test_our_own_status_while_our_daemon_runs(
    settings_for: SettingsFactory, mosquitto: Mosquitto
) -> None:
    """With this gateway's daemon running (a fresh heartbeat from a live pid) and its
    group.json naming the same since as the status on the broker, the name is ours: OK."""
    settings = member_settings(settings_for, "shared")
    state = settings.gateway.state_dir
    state.mkdir(parents=True, exist_ok=True)
    box = Outbox(settings.outbox_path)
    box.health(time.time(), os.getpid())
    box.close()
    view = {"members": {"gw-a": {"state": "online", "role": "member", "since": SINCE}}}
    (state / "group.json").write_text(json.dumps(view))
    fake_members(mosquitto, {"gw-a/status": status("gw-a", "online", "shared", "member")})
    found = group_family(settings)
    assert found["group instance"].status is Status.OK
    assert found["group instance"].detail == (
        "gw-a online: this gateway (since 2027-01-15T08:00:00Z)"
    )
    assert found["group members"].status is Status.OK


def test_group_topics_refused_by_the_acl(
    tmp_path: Path, settings_for: SettingsFactory, mosquitto: Mosquitto
) -> None:
    """A broker whose ACL lets this user read devices/# but not faultmail/<group>/#: the
    members line is a FAIL whose fix is the ACL every member needs."""
    assert DYNSEC_PLUGIN.exists(), "the Mosquitto package ships the dynamic security plugin"
    mosquitto.stop()
    work = tmp_path / "dynsec-broker"
    work.mkdir()
    dynsec = dynsec_config(work / "dynsec.json", "faultmail", "fm-secret-3", "devices/#")
    broker = Mosquitto(
        work, extra_config=f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {dynsec}"
    )
    broker.start()
    try:
        secret = write_secret(tmp_path / "mqtt-password", "fm-secret-3")
        mqtt = {"port": broker.port, "username": "faultmail", "password_file": str(secret)}
        cluster = {"mode": "standby", "group": GROUP, "instance": "gw-a"}
        found = group_family(settings_for(extra={"cluster": cluster}, mqtt=mqtt))
    finally:
        broker.close()
    members = found["group members"]
    assert members.status is Status.FAIL
    assert f"the broker refused: faultmail/{GROUP}/+/status" in members.detail
    assert f"read and write faultmail/{GROUP}/# in the broker's ACL" in members.fix
