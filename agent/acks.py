"""What an acknowledgement names and says, read from the command line or an MQTT message.

Both are outside input: device and code are checked like a fault's (a UID of 1-64 of
A-Z a-z 0-9 . _ -, a code cleaned and at most 64 characters), `by` and `note` are cleaned
(control characters, lone surrogates) and bounded. Parsing never raises anything but
ValueError with a message fit for the user or the log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agent.models import UID_RE
from agent.sanitize import clean_text

MAX_CODE_CHARS = 64
MAX_BY_CHARS = 64
MAX_NOTE_CHARS = 500
# An ack message is a few short fields; anything larger is refused before json.loads.
MAX_ACK_BYTES = 2048


@dataclass(frozen=True, slots=True)
class AckRequest:
    """Which thread to acknowledge (device + code, or an alert id), by whom, with what note."""

    uid: str | None
    code: str | None
    alert_id: int | None
    by: str
    note: str


def thread_of(words: list[str]) -> tuple[str | None, str | None, int | None]:
    """("DEVICE", "CODE"), ("DEVICE CODE"), ("DEVICE/CODE") or ("ALERT-ID",) →
    (uid, code, alert id). A UID holds no space or slash, so the first one splits."""
    text = " ".join(words).strip()
    if text.isdigit():
        return None, None, int(text)
    uid, sep, code = text.replace("/", " ", 1).partition(" ")
    if not sep:
        raise ValueError("THREAD is 'DEVICE CODE', 'DEVICE/CODE' or an alert id")
    return _uid(uid), _code(code), None


def ack_from_payload(payload: bytes) -> AckRequest:
    """An MQTT ack message: JSON {"device", "code", "by", "note"} (note optional)."""
    if len(payload) > MAX_ACK_BYTES:
        raise ValueError(f"ack message over {MAX_ACK_BYTES} bytes")
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"ack message is not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise ValueError("ack message must be a JSON object")
    unknown = set(doc) - {"device", "code", "by", "note"}
    if unknown:
        raise ValueError(f"ack message has unknown keys: {', '.join(sorted(unknown))[:200]}")
    fields = {k: doc.get(k) for k in ("device", "code", "by", "note")}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"ack '{key}' must be a string")
    if fields["by"] is None:
        raise ValueError("ack 'by' is required: who acknowledges")
    return AckRequest(
        uid=_uid(str(fields["device"] or "")),
        code=_code(str(fields["code"] or "")),
        alert_id=None,
        by=who(str(fields["by"])),
        note=note_text(str(fields["note"] or "")),
    )


def who(text: str) -> str:
    """A cleaned, bounded name of who acknowledged; never empty."""
    cleaned = clean_text(text, MAX_BY_CHARS)
    if not cleaned:
        raise ValueError("'by' must name who acknowledges")
    return cleaned


def note_text(text: str) -> str:
    return clean_text(text, MAX_NOTE_CHARS)


def _uid(text: str) -> str:
    if not UID_RE.match(text):
        raise ValueError("the device UID must be 1-64 of A-Z a-z 0-9 . _ -")
    return text


def _code(text: str) -> str:
    cleaned = clean_text(text, MAX_CODE_CHARS)
    if not cleaned:
        raise ValueError("the fault code is missing")
    return cleaned


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
