"""agent.mqtt_properties: paho's MQTT 5 property objects, made and cleared by our two methods,
are exactly what paho's own make, for every packet type and for any PUBLISH properties a
publisher may send; a paho that makes them otherwise keeps its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import mqtt_properties
from agent.mqtt_properties import PacketTypes, Properties, pahos_own

_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    assert mqtt_properties.install()
    yield


def _made(packet_type: int) -> dict[str, Any]:
    return dict(vars(Properties(packet_type)))


@pytest.mark.parametrize("packet_type", mqtt_properties._packet_types())
def test_each_packet_types_object_is_made_as_pahos_own(packet_type: int) -> None:
    ours = _made(packet_type)
    with pahos_own():
        theirs = _made(packet_type)
    assert ours == theirs


_PUBLISH_PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "PayloadFormatIndicator": st.integers(0, 1),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": _TEXT,
        "ResponseTopic": _TEXT.filter(bool),
        "CorrelationData": st.binary(max_size=20),
        "TopicAlias": st.integers(1, 65535),
        "UserProperty": st.lists(st.tuples(_TEXT, _TEXT), max_size=3),
    },
)


def _received(packed: bytes, held: dict[str, Any]) -> dict[str, Any] | str:
    """A PUBLISH's properties as paho reads them from the wire, into an object that already
    holds `held` (unpack clears it first); or paho's refusal (a NUL in a string, say)."""
    props = Properties(PacketTypes.PUBLISH)
    for name, value in held.items():
        if name != "UserProperty" or value:
            setattr(props, name, value)
    try:
        props.unpack(packed)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return dict(vars(props))


@settings(max_examples=300, deadline=None)
@given(sent=_PUBLISH_PROPERTIES, held=_PUBLISH_PROPERTIES)
def test_received_publish_properties_read_as_with_pahos_own(
    sent: dict[str, Any], held: dict[str, Any]
) -> None:
    with pahos_own():
        wire = Properties(PacketTypes.PUBLISH)
        for name, value in sent.items():
            if name != "UserProperty" or value:
                setattr(wire, name, value)
        packed = wire.pack()
        theirs = _received(packed, held)
    assert _received(packed, held) == theirs


def test_a_paho_that_makes_its_objects_otherwise_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A paho release whose __init__ sets something more: nothing is replaced."""
    original = mqtt_properties._ORIGINAL["__init__"]

    def init_with_more(self: Any, packet_type: int) -> None:
        original(self, packet_type)
        object.__setattr__(self, "extra", [])

    with pahos_own():
        monkeypatch.setitem(mqtt_properties._ORIGINAL, "__init__", init_with_more)
        assert not mqtt_properties.install()
        assert Properties.__init__ is original


def test_a_paho_whose_probe_raises_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A paho release that refuses what the startup probe sets: install() says no instead of
    raising out of new_client, which would keep the ingest stage from starting."""
    original = mqtt_properties._ORIGINAL["__init__"]

    def init_that_raises(self: Any, packet_type: int) -> None:
        raise ValueError("a paho that makes its objects some other way")

    with pahos_own():
        monkeypatch.setitem(mqtt_properties._ORIGINAL, "__init__", init_that_raises)
        assert not mqtt_properties.install()
        assert Properties.__init__ is original
