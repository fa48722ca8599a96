"""Property tests: parse never fails with anything but a Rejection, and compose never emits a
header or recipient that the configuration did not make."""

from __future__ import annotations

import json
import math
import sqlite3
import unicodedata
from email import message_from_bytes, policy

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.compose import ComposeContext, compose
from agent.models import Fault, RawMessage, Rejection, Severity
from agent.parse import ParseLimits, parse
from agent.sanitize import clean_text, truncate, valid_text
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


# ---- raw JSON text as a hostile device could write it ----------------------------------------
# json.dumps never produces what hurts (lone surrogates from \\u escapes, NaN, 1e999, 400-digit
# integers, a BOM, duplicate keys), so these strategies build the JSON text itself.

_SURROGATE_OR_NONCHAR = st.one_of(
    st.integers(0xD800, 0xDFFF),
    st.integers(0xFDD0, 0xFDEF),
    st.sampled_from([0xFFFE, 0xFFFF]),
)
_escape = st.one_of(_SURROGATE_OR_NONCHAR, st.integers(0, 0xFFFF)).map(lambda n: f"\\u{n:04x}")
# Raw characters as a UTF-8 encoder would write them (no surrogates: those cannot be encoded).
# Controls, which JSON forbids unescaped, come in through the escapes and the free-form text.
_raw_char = st.characters(exclude_categories=["Cs", "Cc"], exclude_characters='"\\')
_fragment = st.one_of(
    _escape,
    _raw_char,
    st.sampled_from(["\\n", "\\r", '\\"', "\\\\", "\\/", "\\t", "\\u0000", "\\ud83d\\ude00"]),
)
json_string = st.lists(_fragment, max_size=12).map(lambda parts: '"' + "".join(parts) + '"')
_text = st.lists(_fragment, min_size=1, max_size=12).map(lambda p: '"' + "".join(p) + '"')

# Digit counts around the edges: a float overflows past 308 digits, int() refuses over 4300.
_digits = st.one_of(st.sampled_from([17, 309, 400, 4300, 4301]), st.integers(1, 5000))
json_number = st.one_of(
    st.integers(-(2**63), 2**63).map(str),
    _digits.map(lambda n: "9" * n),
    _digits.map(lambda n: "-" + "1" * n),
    st.sampled_from(
        ["1e999", "-1e999", "1E-999", "1e308", "4.9e-324", "0.0", "-0", "1795683720", "1.5e9"]
    ),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
json_scalar = st.one_of(json_string, json_number, st.sampled_from(["true", "false", "null"]))


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in members) + "}"


json_value = st.recursive(
    json_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(json_string, children), max_size=4).map(_object),
    ),
    max_leaves=16,
)
deep = st.integers(1, 3000).flatmap(
    lambda n: st.sampled_from(["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n])
)


def _member(key: str, value: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(st.just(json.dumps(key)), value)


_valid_severity = st.sampled_from(['"critical"', '"error"', '"warning"', '"info"'])
# one_of picks a branch uniformly: the repeats make the valid values the common case, so most
# documents get past the first checks to the fields after them.
_severity = st.one_of(_valid_severity, _valid_severity, _valid_severity, json_string)
_ts = st.one_of(
    json_number,
    json_string,
    st.sampled_from(['"2026-01-01T00:00:00Z"', '"0001-01-01T00:00:00+01:00"', '"9999-12-31"']),
)
_details = st.lists(st.tuples(json_string, json_scalar), max_size=6).map(_object)
# A document close to the device contract: the required fields, hostile values in every field,
# sometimes a field twice (valid JSON; the last one wins in Python), an unknown key, or depth.
_contract = st.tuples(
    st.tuples(_member("code", _text), _member("severity", _severity), _member("message", _text)),
    st.lists(
        st.one_of(
            _member("ts", _ts),
            _member("ts", json_number),
            _member("seq", json_number),
            _member("state", st.sampled_from(['"active"', '"resolved"']) | json_string),
            _member("details", _details | json_value),
            _member("uid", st.sampled_from(['"p1"', '"p2"'])),
            _member("code", json_string),
            _member("message", deep | json_value),
            st.tuples(json_string, json_value),
        ),
        max_size=5,
    ),
).flatmap(lambda t: st.permutations([*t[0], *t[1]]))
_free_form = st.lists(
    st.tuples(
        st.sampled_from(["code", "severity", "message", "ts", "seq", "details"]).map(json.dumps)
        | json_string,
        json_value | deep,
    ),
    max_size=8,
)
json_document = st.tuples(
    st.sampled_from(["", "\ufeff", " ", "\ufeff "]), st.one_of(_contract, _free_form)
).map(lambda t: t[0] + _object(list(t[1])))


def _assert_storable(texts: list[str]) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v TEXT)")
    for text in texts:
        text.encode("utf-8")
        assert not any(0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE for c in text)
        conn.execute("INSERT INTO t VALUES (?)", (text,))
    conn.close()


@settings(max_examples=500, deadline=None)
@given(doc=json_document)
def test_parse_hostile_json_text(doc: str) -> None:
    """Any JSON text a device can write: a Fault of valid, storable text and bounded numbers,
    or a Rejection with valid text; parse never raises."""
    raw = RawMessage(
        topic="devices/p1/fault",
        payload=doc.encode("utf-8"),
        mid=1,
        qos=1,
        dup=False,
        received_at=0.0,
    )
    result = parse(raw, FILTERS, ParseLimits())
    assert isinstance(result, Fault | Rejection)
    if isinstance(result, Rejection):
        assert result.reason != "internal_error", result
        _assert_storable([result.reason, result.detail])
        return
    texts = [result.uid, result.code, result.message, *result.details]
    texts += [v for v in result.details.values() if isinstance(v, str)]
    texts.append(json.dumps(result.details, ensure_ascii=False))
    _assert_storable(texts)
    for value in result.details.values():
        if isinstance(value, int):
            assert abs(value) <= 2**53
        elif isinstance(value, float):
            assert math.isfinite(value)
    if result.device_ts is not None:
        assert 2000 <= result.device_ts.year <= 2100
    assert result.seq is None or 0 <= result.seq <= 2**53


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


def _clean_text_per_character(text: str, max_chars: int) -> str:
    """clean_text as it was written before its ASCII shortcut: every character looked up."""
    text = valid_text(text)
    cleaned = "".join(
        " " if (unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch in _BREAKS) else ch
        for ch in text
    )
    return truncate(" ".join(cleaned.split()), max_chars)


_BREAKS = {"\u2028", "\u2029", "\u0085"}


@settings(max_examples=1000, deadline=None)
@given(
    text=st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text(),
    max_chars=st.integers(0, 50),
)
def test_clean_text_shortcut_cleans_as_every_character_looked_up(text: str, max_chars: int) -> None:
    """Printable ASCII skips the per-character lookup (issue 18); the result is the same for
    any text, ASCII controls, NUL, bidi overrides and lone surrogates included."""
    assert clean_text(text, max_chars) == _clean_text_per_character(text, max_chars)
