"""The [cluster] section and the shared-subscription filters it replaces: every bad value
names its key and the fix."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.settings import Settings, load_settings
from agent.signing import keygen
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "faultmail.toml"


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return dict(info.value.problems)


def _with_cluster(tmp_path: Path, **cluster: Any) -> dict[str, Any]:
    doc = base_config(tmp_path)
    doc["cluster"] = cluster
    return doc


def test_without_the_section_a_gateway_runs_alone(tmp_path: Path, write_config: Writer) -> None:
    """No [cluster]: mode single, no group, the instance is gateway.id, not grouped."""
    cluster = load_settings(write_config(base_config(tmp_path))).cluster
    assert (cluster.mode, cluster.group, cluster.instance) == ("single", "", "gw-test-01")
    assert not cluster.grouped
    assert (cluster.takeover_after, cluster.lease_settle) == (30.0, 1.0)


@pytest.mark.parametrize("mode", ["shared", "standby"])
def test_a_group_member_takes_gateway_id_as_its_instance(
    tmp_path: Path, write_config: Writer, mode: str
) -> None:
    """A grouped member without an instance is named by gateway.id; a given one wins."""
    settings = load_settings(write_config(_with_cluster(tmp_path, mode=mode, group="brno-gw")))
    assert settings.cluster.grouped and settings.cluster.group == "brno-gw"
    assert settings.cluster.instance == "gw-test-01"
    doc = _with_cluster(tmp_path, mode=mode, group="brno-gw", instance="gw-b")
    assert load_settings(write_config(doc)).cluster.instance == "gw-b"


@pytest.mark.parametrize("mode", ["shared", "standby"])
def test_a_grouped_mode_without_a_group_is_refused(
    tmp_path: Path, write_config: Writer, mode: str
) -> None:
    """shared and standby need a group: the problem names cluster.group and what to set."""
    problem = _problems(write_config(_with_cluster(tmp_path, mode=mode)))["cluster.group"]
    assert f'mode = "{mode}"' in problem and "same name on every member" in problem


def test_an_unknown_mode_is_refused(tmp_path: Path, write_config: Writer) -> None:
    """A mode other than single, shared or standby names cluster.mode and the three choices."""
    problem = _problems(write_config(_with_cluster(tmp_path, mode="active", group="g")))
    assert "'single', 'shared' or 'standby'" in problem["cluster.mode"]


@pytest.mark.parametrize(
    "group", ["brno.gw", "brno/gw", "plant+", "gw#", "$SYS", "gw a", "g" * 33, "ž", "gw\n"]
)
def test_a_group_name_that_cannot_be_a_topic_level_is_refused(
    tmp_path: Path, write_config: Writer, group: str
) -> None:
    """A group name outside [A-Za-z0-9_-]{1,32} (it goes into topics, $share/ and
    Message-IDs) names cluster.group with the rule."""
    doc = _with_cluster(tmp_path, mode="shared", group=group)
    problem = _problems(write_config(doc))["cluster.group"]
    assert "1 to 32 letters, digits, '_' and '-'" in problem


@pytest.mark.parametrize("instance", ["gw.a", "gw/a", "+", "i" * 33, "gw-a\n"])
def test_an_instance_name_that_cannot_be_a_topic_level_is_refused(
    tmp_path: Path, write_config: Writer, instance: str
) -> None:
    """A bad instance name names cluster.instance with the rule."""
    doc = _with_cluster(tmp_path, mode="standby", group="g", instance=instance)
    assert "1 to 32 letters" in _problems(write_config(doc))["cluster.instance"]


@pytest.mark.parametrize("instance", ["lease", "blocked", "route", "held"])
def test_an_instance_named_like_a_group_topic_is_refused(
    tmp_path: Path, write_config: Writer, instance: str
) -> None:
    """faultmail/<group>/<instance>/status must not read as the lease, a block, a route or a
    held record: those names are refused for an instance, given or taken from gateway.id."""
    doc = _with_cluster(tmp_path, mode="shared", group="g", instance=instance)
    assert "own topics" in _problems(write_config(doc))["cluster.instance"]
    doc = _with_cluster(tmp_path, mode="shared", group="g")
    doc["gateway"]["id"] = instance
    assert "own topics" in _problems(write_config(doc))["cluster.instance"]


def test_a_gateway_id_that_cannot_stand_in_for_the_instance(
    tmp_path: Path, write_config: Writer
) -> None:
    """gateway.id may hold dots and 64 characters; grouped, such an id cannot be the instance
    name, and the problem says to set cluster.instance. Alone, it is fine."""
    doc = _with_cluster(tmp_path, mode="shared", group="g")
    doc["gateway"]["id"] = "gw.brno.01"
    problem = _problems(write_config(doc))["cluster.instance"]
    assert "gateway.id" in problem and "set cluster.instance" in problem
    doc["cluster"] = {"mode": "single"}
    assert load_settings(write_config(doc)).cluster.instance == "gw.brno.01"


def test_alone_a_group_does_not_count(tmp_path: Path, write_config: Writer) -> None:
    """mode single with a group left in place (a member taken out of its group) runs with no
    group: single-mode identities and topics carry none."""
    doc = _with_cluster(tmp_path, mode="single", group="brno-gw", instance="gw-a")
    cluster = load_settings(write_config(doc)).cluster
    assert (cluster.group, cluster.instance, cluster.grouped) == ("", "gw-a", False)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("takeover_after", -1),
        ("takeover_after", 3601),
        ("takeover_after", float("inf")),
        ("lease_settle", 0.05),
        ("lease_settle", 31),
        ("lease_settle", float("nan")),
    ],
)
def test_timings_out_of_bounds_are_refused(
    tmp_path: Path, write_config: Writer, key: str, value: float
) -> None:
    """takeover_after outside 0..3600 s and lease_settle outside 0.1..30 s name their key."""
    doc = _with_cluster(tmp_path, mode="standby", group="g", **{key: value})
    assert f"cluster.{key}" in _problems(write_config(doc))


def test_timings_at_their_bounds_load(tmp_path: Path, write_config: Writer) -> None:
    """The bounds themselves are accepted (0 s: adopt at once; 0.1 s settle in tests)."""
    doc = _with_cluster(tmp_path, mode="standby", group="g", takeover_after=0, lease_settle=0.1)
    cluster = load_settings(write_config(doc)).cluster
    assert (cluster.takeover_after, cluster.lease_settle) == (0.0, 0.1)
    doc = _with_cluster(tmp_path, mode="shared", group="g", takeover_after=3600, lease_settle=30)
    assert load_settings(write_config(doc)).cluster.takeover_after == 3600.0


def test_an_unknown_cluster_key_is_refused(tmp_path: Path, write_config: Writer) -> None:
    """A misspelt key in [cluster] is named, like in every other section."""
    doc = _with_cluster(tmp_path, mode="shared", group="g", takover_after=5)
    assert "unknown key" in _problems(write_config(doc))["cluster.takover_after"]


def test_the_environment_can_group_a_member(
    tmp_path: Path, write_config: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAULTMAIL_CLUSTER__* overrides the file like every other key."""
    monkeypatch.setenv("FAULTMAIL_CLUSTER__MODE", "standby")
    monkeypatch.setenv("FAULTMAIL_CLUSTER__GROUP", "brno-gw")
    cluster = load_settings(write_config(base_config(tmp_path))).cluster
    assert (cluster.mode, cluster.group, cluster.instance) == ("standby", "brno-gw", "gw-test-01")


@pytest.mark.parametrize(
    ("topic", "plain"),
    [
        ("$share/faultmail/devices/+/fault", "devices/+/fault"),
        ("$share/g/#", "#"),
        ("$queue/devices/+/fault", "devices/+/fault"),
        ("$SHARE/g/devices/+/fault", "devices/+/fault"),
    ],
)
def test_a_shared_subscription_in_mqtt_topics_is_refused_with_the_fix(
    tmp_path: Path, write_config: Writer, topic: str, plain: str
) -> None:
    """A $share/ or $queue/ filter in mqtt.topics names the key, the plain filter to write and
    [cluster] mode = "shared" instead of letting every UID fail to match."""
    doc = base_config(tmp_path)
    doc["mqtt"]["topics"] = ["devices/+/status", topic]
    problem = _problems(write_config(doc))["mqtt.topics"]
    assert repr(topic) in problem and f"write the plain filter {plain!r}" in problem
    assert 'set [cluster] mode = "shared"' in problem and "$share/<group>/" in problem


def test_a_shared_subscription_in_a_route_is_refused(tmp_path: Path, write_config: Writer) -> None:
    """A route's $share/ filter (which would match no published topic) names routes[i].topics."""
    doc = base_config(tmp_path)
    doc["routes"].append(
        {"topics": ["$share/gw/devices/+/fault"], "min_severity": "info", "to": ["a@example.com"]}
    )
    problem = _problems(write_config(doc))["routes[1].topics"]
    assert "write the plain filter 'devices/+/fault'" in problem


def test_a_share_prefix_without_a_filter_still_names_the_fix(
    tmp_path: Path, write_config: Writer
) -> None:
    """A "$share/g" alone (no filter) is refused the same way, without a filter to quote."""
    doc = base_config(tmp_path)
    doc["mqtt"]["topics"] = ["$share/g"]
    problem = _problems(write_config(doc))["mqtt.topics"]
    assert "write the plain filter and set [cluster]" in problem


def test_other_dollar_topics_are_not_shared_subscriptions(
    tmp_path: Path, write_config: Writer
) -> None:
    """Only the shared-subscription prefixes are refused: "$SYS/#" or a level named "$share"
    deeper in a filter load as before."""
    doc = base_config(tmp_path)
    doc["mqtt"]["topics"] = ["$SYS/broker/uptime", "site/$share/+/fault", "$shared/x"]
    settings = load_settings(write_config(doc))
    assert settings.mqtt.topics[1] == "site/$share/+/fault"


def _uncommented_cluster_block(text: str) -> str:
    """The example with its commented [cluster] block turned into settings."""
    for key in ("[cluster]", "mode = ", "group = ", "instance = ", "takeover_after = "):
        text = re.sub(rf"^# ({re.escape(key)})", r"\1", text, count=1, flags=re.MULTILINE)
    return text.replace("# lease_settle = ", "lease_settle = ", 1)


def test_the_examples_cluster_block_loads_when_uncommented(tmp_path: Path) -> None:
    """config/faultmail.toml's commented [cluster] block, uncommented as it stands, makes a
    valid shared-mode member (so what the example shows is what works)."""
    secret = tmp_path / "smtp-password"
    secret.write_text("pw")
    key = keygen("gw2026", "example.com", tmp_path / "dkim.key")
    text = EXAMPLE.read_text().replace("/etc/faultmail/smtp-password", str(secret))
    text = text.replace("/etc/faultmail/dkim.key", str(key.path))
    as_shipped = tmp_path / "shipped.toml"
    as_shipped.write_text(text)
    assert load_settings(as_shipped).cluster.mode == "single"
    grouped = tmp_path / "grouped.toml"
    grouped.write_text(_uncommented_cluster_block(text))
    cluster = load_settings(grouped).cluster
    assert (cluster.mode, cluster.group, cluster.instance) == ("shared", "brno-gw", "gw-a")
    assert (cluster.takeover_after, cluster.lease_settle) == (30.0, 1.0)


def test_settings_expose_the_cluster_section() -> None:
    """The root model declares [cluster] with single mode as its default."""
    assert "cluster" in Settings.model_fields
    assert Settings.model_fields["cluster"].default.mode == "single"
