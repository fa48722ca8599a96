"""(topic, payload) → Fault, or a Rejection with the reason. Every byte here is untrusted."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from agent.errors import RejectedInput
from agent.models import (
    UID_RE,
    Fault,
    FaultState,
    RawMessage,
    Reason,
    Rejection,
    Severity,
    safe_uid,
)
from agent.sanitize import clean_text, valid_text

E = TypeVar("E", Severity, FaultState)
_KNOWN_KEYS = frozenset({"code", "severity", "message", "state", "ts", "seq", "uid", "details"})
# Above 2**53 a JSON number stops being exact in most device toolchains and in JavaScript.
_MAX_INT = 2**53
# Device clocks before 2000 or far in the future are broken clocks, not times.
_MIN_TS = 946_684_800.0
_MAX_TS = 4_102_444_800.0
# RFC 8259 section 8.1: a parser MAY ignore a leading byte order mark. Some device toolchains
# (.NET, Windows editors for test payloads) write one; refusing it would lose real alerts.
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_payload_bytes: int = 16 * 1024
    max_code_chars: int = 64
    max_message_chars: int = 1000
    max_details: int = 32
    max_detail_key_chars: int = 64
    max_detail_value_chars: int = 256


def uid_from_topic(topic: str, filters: list[str]) -> str | None:
    """The device UID: the topic level that the first '+' of the matching filter stands for.

    With the default filter `devices/+/fault` that is the level after `devices/`.
    """
    levels = topic.split("/")
    for flt in filters:
        flevels = flt.split("/")
        if not topic_matches(flevels, levels):
            continue
        if "+" in flevels:
            return levels[flevels.index("+")]
        if "devices" in levels[:-1]:
            return levels[levels.index("devices") + 1]
    return None


def topic_matches(flevels: list[str], levels: list[str]) -> bool:
    for i, flv in enumerate(flevels):
        if flv == "#":
            return True
        if i >= len(levels) or (flv != "+" and flv != levels[i]):
            return False
    return len(flevels) == len(levels)


def parse(raw: RawMessage, filters: list[str], limits: ParseLimits) -> Fault | Rejection:
    """Validate and clean one payload. Never raises: every problem becomes a Rejection.

    Every str in the result is valid text (encodable as UTF-8, no noncharacters) and every
    number is finite and within the documented range.
    """
    uid: str | None = None
    try:
        uid = uid_from_topic(raw.topic, filters)
        if uid is None or not UID_RE.match(uid):
            raise RejectedInput(
                Reason.BAD_UID, "the topic's device UID must be 1-64 of A-Z a-z 0-9 . _ -"
            )
        if raw.payload_size > limits.max_payload_bytes:
            # The size as received: ingest keeps only a sample of an oversized payload.
            raise RejectedInput(
                Reason.TOO_LARGE,
                f"payload is {raw.payload_size} bytes, the limit is {limits.max_payload_bytes}",
            )
        return _parse_payload(raw.payload, uid, limits)
    except RejectedInput as exc:
        return Rejection(
            reason=Reason(exc.reason), detail=valid_text(exc.detail), uid=safe_uid(uid)
        )
    except Exception as exc:
        # A bug here must cost one message, not the intake thread: it is recorded like any
        # other rejection, with the exception type, and the traceback goes to the log.
        structlog.get_logger("faultmail.parse").error(
            "parse_internal_error", topic=raw.topic, error=type(exc).__name__, exc_info=True
        )
        return Rejection(
            reason=Reason.INTERNAL_ERROR,
            detail=f"{type(exc).__name__} while parsing (a faultmail bug; the payload is kept)",
            uid=safe_uid(uid),
        )


def _parse_payload(payload: bytes, uid: str, limits: ParseLimits) -> Fault:
    if payload.startswith(_BOM):
        payload = payload[len(_BOM) :]
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedInput(Reason.NOT_UTF8, f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise RejectedInput(Reason.TOO_DEEP, "JSON nesting is too deep") from None
    except ValueError as exc:
        raise RejectedInput(Reason.INVALID_JSON, f"payload is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RejectedInput(Reason.NOT_OBJECT, "payload must be a JSON object")
    unknown = sorted(set(doc) - _KNOWN_KEYS)
    if unknown:
        shown = ", ".join(clean_text(k, 32) for k in unknown[:5])
        raise RejectedInput(Reason.UNKNOWN_FIELD, f"unknown field(s): {shown}")
    if "uid" in doc and doc["uid"] != uid:
        raise RejectedInput(Reason.UID_MISMATCH, "payload uid differs from the topic's UID")
    return Fault(
        uid=uid,
        code=_text(doc, "code", limits.max_code_chars),
        severity=_enum(doc, "severity", Severity, None),
        message=_text(doc, "message", limits.max_message_chars),
        state=_enum(doc, "state", FaultState, FaultState.ACTIVE),
        device_ts=_timestamp(doc.get("ts")),
        seq=_seq(doc.get("seq")),
        details=_details(doc.get("details"), limits),
    )


def _refuse_constant(name: str) -> Any:
    raise RejectedInput(Reason.INVALID_JSON, f"{name} is not a JSON number")


def _text(doc: dict[str, Any], key: str, max_chars: int) -> str:
    value = doc.get(key)
    if value is None:
        raise RejectedInput(Reason.MISSING_FIELD, f"'{key}' is required")
    if not isinstance(value, str):
        raise RejectedInput(Reason.BAD_FIELD, f"'{key}' must be a string")
    cleaned = clean_text(value, max_chars)
    if not cleaned:
        raise RejectedInput(Reason.BAD_FIELD, f"'{key}' is empty")
    return cleaned


def _enum(doc: dict[str, Any], key: str, kind: type[E], default: E | None) -> E:
    value = doc.get(key)
    if value is None:
        if default is None:
            raise RejectedInput(Reason.MISSING_FIELD, f"'{key}' is required")
        return default
    try:
        return kind(value)
    except ValueError:
        allowed = " | ".join(m.value for m in kind)
        raise RejectedInput(Reason.BAD_FIELD, f"'{key}' must be one of {allowed}") from None


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise RejectedInput(Reason.BAD_FIELD, "'ts' must be epoch seconds or an RFC 3339 string")
    if isinstance(value, int) and not _MIN_TS <= value <= _MAX_TS:
        # Checked before float(): a 400-digit integer is valid JSON and overflows a float.
        raise RejectedInput(Reason.BAD_FIELD, "'ts' is outside 2000..2100")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise RejectedInput(Reason.BAD_FIELD, "'ts' is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise RejectedInput(Reason.BAD_FIELD, "'ts' needs a time zone offset (e.g. Z)")
        seconds = parsed.timestamp()
    else:
        raise RejectedInput(Reason.BAD_FIELD, "'ts' must be epoch seconds or an RFC 3339 string")
    if not (math.isfinite(seconds) and _MIN_TS <= seconds <= _MAX_TS):
        raise RejectedInput(Reason.BAD_FIELD, "'ts' is outside 2000..2100")
    return datetime.fromtimestamp(seconds, UTC)


def _seq(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise RejectedInput(Reason.BAD_FIELD, "'seq' must be a non-negative integer")
    return value


def _details(value: Any, limits: ParseLimits) -> dict[str, str | int | float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RejectedInput(Reason.BAD_FIELD, "'details' must be a flat object")
    if len(value) > limits.max_details:
        raise RejectedInput(
            Reason.BAD_FIELD, f"'details' has more than {limits.max_details} entries"
        )
    out: dict[str, str | int | float] = {}
    for key, item in value.items():
        clean_key = clean_text(key, limits.max_detail_key_chars)
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise RejectedInput(Reason.BAD_FIELD, "'details' values must be strings or numbers")
        if isinstance(item, str):
            out[clean_key] = clean_text(item, limits.max_detail_value_chars)
        elif isinstance(item, int) and abs(item) > _MAX_INT:
            raise RejectedInput(Reason.BAD_FIELD, "a 'details' number is too large")
        elif isinstance(item, float) and not math.isfinite(item):
            raise RejectedInput(Reason.BAD_FIELD, "a 'details' number is not finite")
        else:
            out[clean_key] = item
    return out
