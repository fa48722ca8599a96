"""Property tests: parse never fails with anything but a Rejection, and compose never emits a
header or recipient that the configuration did not make."""

from __future__ import annotations

import json
from email import message_from_bytes, policy

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.compose import ComposeContext, compose
from agent.models import Fault, RawMessage, Rejection, Severity
from agent.parse import ParseLimits, parse
from tests.unit.conftest import one_alert_mail

FILTERS = ["devices/+/fault"]
CTX = ComposeContext(sender="GW <gw@example.com>", gateway_id="gw-1", site="Brno")
EXPECTED_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "x-auto-response-suppress",
    "x-faultmail-gateway",
    "x-faultmail-kind",
    "x-faultmail-device",
    "x-faultmail-code",
    "x-faultmail-severity",
    "x-faultmail-alert-ids",
    "content-type",
    "mime-version",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=2000), topic=st.text(max_size=40))
def test_parse_arbitrary_bytes(payload: bytes, topic: str) -> None:
    """Any bytes on any topic: a Fault or a Rejection, never an exception."""
    raw = RawMessage(topic=topic, payload=payload, mid=1, qos=1, dup=False, received_at=0.0)
    assert isinstance(parse(raw, FILTERS, ParseLimits()), Fault | Rejection)


@settings(max_examples=300, deadline=None)
@given(
    doc=st.dictionaries(
        st.sampled_from(
            ["code", "severity", "message", "state", "ts", "seq", "uid", "details", "x"]
        ),
        json_values,
        max_size=8,
    )
)
def test_parse_arbitrary_json(doc: dict[str, object]) -> None:
    """Any JSON object: a clean Fault (no control characters) or a Rejection."""
    payload = json.dumps(doc).encode()
    raw = RawMessage(
        topic="devices/p1/fault", payload=payload, mid=1, qos=1, dup=False, received_at=0.0
    )
    result = parse(raw, FILTERS, ParseLimits())
    assert isinstance(result, Fault | Rejection)
    if isinstance(result, Fault):
        for text in (result.code, result.message):
            assert not any(ord(c) < 32 or c in "\u2028\u2029\x7f" for c in text)


@settings(max_examples=200, deadline=None)
@given(
    code=st.text(min_size=1, max_size=80),
    message=st.text(min_size=1, max_size=400),
    uid=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
)
def test_compose_never_adds_headers_or_recipients(code: str, message: str, uid: str) -> None:
    """Whatever the device text, the mail has only our headers and only the configured To."""
    mail = one_alert_mail(
        message,
        uid=uid,
        code=code,
        severity=Severity.ERROR,
        details={"k": message},
        device_ts=None,
        received_at=0.0,
    )
    raw = compose(mail, CTX, 0.0).as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert {k.lower() for k in msg} <= EXPECTED_HEADERS
    assert msg.get_all("To") == ["ops@example.com"]
    assert msg["Bcc"] is None and msg["Cc"] is None
