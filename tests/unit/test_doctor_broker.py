"""doctor.broker: the pure parts of the broker check: the probe's topic filters and the
verdict on a SUBACK."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.doctor.broker import probe_filter, suback_check
from agent.doctor.result import Status
from agent.settings import Settings


def granted(qos: int) -> ReasonCode:
    return ReasonCode(PacketTypes.SUBACK, identifier=qos)


NOT_AUTHORIZED = ReasonCode(PacketTypes.SUBACK, "Not authorized")


def test_shared_subscriptions_are_probed_in_their_own_group() -> None:
    """$share/g/topic becomes $share/g-doctor/topic (never steal the daemon's messages);
    other filters stay as they are."""
    assert probe_filter("$share/fm/devices/+/fault") == "$share/fm-doctor/devices/+/fault"
    assert probe_filter("devices/+/fault") == "devices/+/fault"


def test_qos1_granted_is_ok(settings: Settings) -> None:
    """QoS 1 for every filter is OK and names them."""
    check = suback_check(settings, ["devices/+/fault"], [granted(1)], 5.0)
    assert check.status is Status.OK and check.detail == "QoS 1 granted for devices/+/fault"


def test_qos0_is_a_warning_and_refusal_a_failure(settings: Settings) -> None:
    """A downgrade to QoS 0 is a WARN (alerts could be lost); a refusal or no SUBACK a FAIL
    whose fix is the broker's ACL."""
    low = suback_check(settings, ["devices/+/fault"], [granted(0)], 5.0)
    assert low.status is Status.WARN and "only QoS 0 for devices/+/fault" in low.detail
    refused = suback_check(settings, ["a/#", "b/#"], [granted(1), NOT_AUTHORIZED], 5.0)
    assert refused.status is Status.FAIL and refused.detail.startswith("the broker refused: b/#")
    assert "ACL" in refused.fix
    silent = suback_check(settings, ["a/#"], None, 2.5)
    assert silent.status is Status.FAIL and silent.detail == "no SUBACK within 2.5 s"
