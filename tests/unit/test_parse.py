"""parse: every payload becomes a clean Fault or a Rejection with a reason; nothing raises."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.acks import ack_from_payload
from agent.models import Fault, FaultState, RawMessage, Rejection, Severity, safe_uid
from agent.parse import ParseLimits, parse, uid_from_topic
from agent.silences import check_pattern

FILTERS = ["devices/+/fault"]


def _raw(payload: bytes | dict[str, Any], topic: str = "devices/pump-17/fault") -> RawMessage:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return RawMessage(topic=topic, payload=data, mid=1, qos=1, dup=False, received_at=1.0)


def _ok(payload: bytes | dict[str, Any], **kw: Any) -> Fault:
    result = parse(_raw(payload, **kw), FILTERS, ParseLimits())
    assert isinstance(result, Fault), result
    return result


def _rejected(payload: bytes | dict[str, Any], **kw: Any) -> Rejection:
    result = parse(_raw(payload, **kw), FILTERS, ParseLimits())
    assert isinstance(result, Rejection), result
    return result


GOOD = {"code": "E042", "severity": "critical", "message": "Overpressure"}


def test_minimal_fault() -> None:
    """The three required fields make a fault; state defaults to active, uid from the topic."""
    fault = _ok(GOOD)
    assert (fault.uid, fault.code, fault.severity, fault.state) == (
        "pump-17",
        "E042",
        Severity.CRITICAL,
        FaultState.ACTIVE,
    )
    assert fault.seq is None and fault.device_ts is None and fault.details == {}


def test_full_fault() -> None:
    """Optional fields are parsed: RFC 3339 and epoch ts, seq, resolved state, details."""
    fault = _ok(
        GOOD
        | {
            "state": "resolved",
            "ts": "2026-11-26T10:02:00+01:00",
            "seq": 7,
            "uid": "pump-17",
            "details": {"bar": 12.5, "valve": "V3"},
        }
    )
    assert fault.state is FaultState.RESOLVED
    assert fault.device_ts is not None and fault.device_ts.timestamp() == 1_795_683_720.0
    assert fault.seq == 7 and fault.details == {"bar": 12.5, "valve": "V3"}
    assert _ok(GOOD | {"ts": 1_795_683_720}).device_ts == fault.device_ts


def test_control_characters_are_stripped() -> None:
    """CR, LF, NUL and Unicode line separators never survive into stored text."""
    fault = _ok(GOOD | {"message": "Over\r\nBcc: evil@x.test\x00\u2028pressure"})
    assert fault.message == "Over Bcc: evil@x.test pressure"
    assert not any(ch in fault.message for ch in "\r\n\x00\u2028")


def test_long_text_is_truncated() -> None:
    """A very long message is cut with an ellipsis, not rejected."""
    fault = _ok(GOOD | {"message": "x" * 5000})
    assert len(fault.message) == 1000 and fault.message.endswith("…")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "not_utf8"),
        (b"{not json", "invalid_json"),
        (b'{"code": NaN}', "invalid_json"),
        (b"[1, 2]", "not_object"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        ({"severity": "critical", "message": "m"}, "missing_field"),
        (GOOD | {"severity": "fatal"}, "bad_field"),
        (GOOD | {"code": 42}, "bad_field"),
        (GOOD | {"code": "   "}, "bad_field"),
        (GOOD | {"seq": -1}, "bad_field"),
        (GOOD | {"seq": 2**64}, "bad_field"),
        (GOOD | {"seq": True}, "bad_field"),
        (GOOD | {"ts": "yesterday"}, "bad_field"),
        (GOOD | {"ts": "2026-01-01T00:00:00"}, "bad_field"),
        (GOOD | {"ts": 1e300}, "bad_field"),
        (GOOD | {"details": {"nested": {"a": 1}}}, "bad_field"),
        (GOOD | {"details": {"n": 10**30}}, "bad_field"),
        (GOOD | {"details": {str(i): i for i in range(33)}}, "bad_field"),
        (GOOD | {"uid": "pump-18"}, "uid_mismatch"),
        (GOOD | {"extra": 1}, "unknown_field"),
    ],
)
def test_bad_payloads_are_rejected_with_reason(
    payload: bytes | dict[str, Any], reason: str
) -> None:
    """Each kind of bad input gets its own reason and keeps the topic UID for the record."""
    rejection = _rejected(payload)
    assert rejection.reason == reason
    assert rejection.uid == "pump-17"
    assert rejection.detail


def test_oversize_payload() -> None:
    """A payload over the limit is rejected before it is decoded."""
    big = json.dumps(GOOD | {"message": "x" * 20000}).encode()
    assert _rejected(big).reason == "too_large"


def test_oversize_payload_kept_as_a_sample_is_rejected_with_its_full_size() -> None:
    """Ingest queues only a sample of an oversized payload: the size it had decides, and is
    what the rejection records."""
    raw = RawMessage(
        topic="devices/pump-17/fault",
        payload=b"{" * 512,
        mid=1,
        qos=1,
        dup=False,
        received_at=1.0,
        size=5_000_000,
    )
    rejection = parse(raw, ["devices/+/fault"], ParseLimits())
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.uid) == ("too_large", "pump-17")
    assert rejection.detail == "payload is 5000000 bytes, the limit is 16384"


def test_unsafe_uid_in_topic() -> None:
    """A topic UID outside the safe charset is rejected and not stored as a UID."""
    rejection = _rejected(GOOD, topic="devices/pump 17;rm/fault")
    assert rejection.reason == "bad_uid" and rejection.uid is None


@pytest.mark.parametrize("uid", ["pump-7\n", "pump-7\r\n", "\npump-7", "pump\x1f7"])
def test_a_uid_with_a_line_break_is_rejected_not_stored(uid: str) -> None:
    """Python's `$` also matches before a final line break: a check written with it took
    "pump-7\n" for a UID, to go into the outbox and every mail header that names the device.
    (Mosquitto refuses control characters in topics; MQTT 5 only says they SHOULD NOT occur,
    so another broker may pass them.)"""
    rejection = _rejected(GOOD, topic=f"devices/{uid}/fault")
    assert rejection.reason == "bad_uid" and rejection.uid is None
    assert safe_uid(uid) is None


def test_uid_from_topic_uses_the_wildcard_level() -> None:
    """The UID is the level that the filter's '+' stands for."""
    assert uid_from_topic("devices/pump-1/fault", ["devices/+/fault"]) == "pump-1"
    assert uid_from_topic("site/a/devices/p2/fault", ["site/a/devices/+/fault"]) == "p2"
    assert uid_from_topic("devices/p3/fault", ["devices/#"]) == "p3"
    assert uid_from_topic("other/p4/fault", ["devices/+/fault"]) is None


def _valid(text: str) -> bool:
    """Encodable as UTF-8 and free of noncharacters."""
    text.encode("utf-8")
    return not any(0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE for c in text)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"code": "E1", "severity": "info", "message": "x\\ud800"}',
        b'{"code": "E\\udfff1", "severity": "info", "message": "x"}',
        b'{"code": "E1", "severity": "info", "message": "x\\ufdd0y\\uffff"}',
        b'{"code": "E1", "severity": "info", "message": "x", "details": {"k\\ud800": "v"}}',
        b'{"code": "E1", "severity": "info", "message": "x", "details": {"k": "v\\udbff"}}',
    ],
)
def test_lone_surrogates_and_noncharacters_become_replacement(payload: bytes) -> None:
    """Escaped lone surrogates and noncharacters in any text field become U+FFFD."""
    fault = _ok(payload)
    texts = [fault.code, fault.message, *fault.details, *map(str, fault.details.values())]
    assert all(_valid(t) for t in texts)
    assert any("\ufffd" in t for t in texts)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"code": "E1", "severity": "info\\ud800", "message": "x"}', "bad_field"),
        (b'{"code": "E1", "severity": "info", "message": "x", "k\\ud800": 1}', "unknown_field"),
        (
            b'{"code": "E1", "severity": "info", "message": "x", "ts": ' + b"9" * 400 + b"}",
            "bad_field",
        ),
        (
            b'{"code": "E1", "severity": "info", "message": "x", "ts": -' + b"9" * 400 + b"}",
            "bad_field",
        ),
        (b'{"code": "E1", "severity": "info", "message": "x", "ts": 1e999}', "bad_field"),
        (b'{"code": "E1", "severity": "info", "message": "x", "ts": Infinity}', "invalid_json"),
        (
            b'{"code": "E1", "severity": "info", "message": "x", "seq": ' + b"9" * 400 + b"}",
            "bad_field",
        ),
        (
            b'{"code": "E1", "severity": "info", "message": "x", "details": {"n": 1e999}}',
            "bad_field",
        ),
    ],
)
def test_hostile_values_are_rejected_with_valid_text(payload: bytes, reason: str) -> None:
    """Bad enum text, unknown keys with surrogates and out-of-range numbers: a clean Rejection."""
    rejection = _rejected(payload)
    assert rejection.reason == reason
    assert _valid(rejection.detail) and _valid(rejection.reason)


def test_leading_bom_is_accepted() -> None:
    """A UTF-8 BOM before the JSON (some device toolchains write one) is ignored (RFC 8259 8.1)."""
    fault = _ok(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert fault.code == "E042"


def test_bom_inside_is_not_stripped() -> None:
    """Only a BOM at the very start is ignored; one after whitespace is still invalid JSON."""
    assert _rejected(b" \xef\xbb\xbf" + json.dumps(GOOD).encode()).reason == "invalid_json"


def test_unexpected_exception_becomes_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside parsing becomes an internal_error Rejection naming the type, never a raise."""
    import agent.parse as parse_mod

    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(parse_mod, "_details", boom)
    rejection = _rejected(GOOD | {"details": {"a": 1}})
    assert rejection.reason == "internal_error"
    assert "ZeroDivisionError" in rejection.detail
    assert rejection.uid == "pump-17"


@pytest.mark.parametrize("text", ["pump-*\n", "E1\n"])
def test_a_silence_pattern_with_a_line_break_is_refused(text: str) -> None:
    """A silence's device or code pattern goes into notices and `silences` output: the same
    `$` as in the UID check let a final line break through."""
    with pytest.raises(ValueError, match="pattern"):
        check_pattern(text, "device")


def test_an_ack_for_a_uid_with_a_line_break_is_refused() -> None:
    """An ack names its device in JSON, which reaches us through any broker."""
    with pytest.raises(ValueError, match="device UID"):
        ack_from_payload(b'{"device": "pump-7\\n", "code": "E1", "by": "ops"}')
