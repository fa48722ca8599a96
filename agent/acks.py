"""What an acknowledgement names and says, read from the command line or an MQTT message.

Both are outside input: device and code are checked like a fault's (a UID of 1-64 of
A-Z a-z 0-9 . _ -, a code cleaned and at most 64 characters), `by` and `note` are cleaned
(control characters, lone surrogates) and bounded. Parsing never raises anything but
ValueError with a message fit for the user or the log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.errors import OutboxError
from agent.models import UID_RE
from agent.outbox import Outbox
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


def ack_topic(gateway_id: str) -> str:
    """The MQTT topic a site HMI publishes acks to (QoS 1, not retained)."""
    return f"faultmail/{gateway_id}/ack"


class AckListener:
    """Stores the acks that arrive on the MQTT ack topic; runs on paho's thread.

    Called with a payload; returns True when done with it (stored, or invalid and dropped with
    a log line: PUBACK), False when the outbox could not store it (no PUBACK: the broker sends
    it again after a reconnect). Opens its own outbox connection (one per thread) on first use.
    """

    def __init__(self, outbox_path: Path, clock: Callable[[], float]) -> None:
        self._path = outbox_path
        self._clock = clock
        self._outbox: Outbox | None = None
        self._lock = threading.Lock()
        self.log = structlog.get_logger("faultmail.acks")

    def __call__(self, payload: bytes) -> bool:
        try:
            request = ack_from_payload(payload)
        except ValueError as exc:
            self.log.warning("mqtt_ack_rejected", reason=str(exc), size=len(payload))
            return True
        with self._lock:
            try:
                if self._outbox is None:
                    self._outbox = Outbox(self._path)
                result = self._outbox.acknowledge(
                    request.uid,
                    request.code,
                    request.by,
                    request.note,
                    self._clock(),
                    source="mqtt",
                )
            except OutboxError as exc:
                self.log.error("mqtt_ack_not_stored", error=str(exc))
                return False
        if result.error:
            self.log.warning("mqtt_ack_refused", reason=result.error, by=request.by)
        else:
            self.log.info("mqtt_ack", device=result.uid, code=result.code, by=request.by)
        return True

    def close(self) -> None:
        with self._lock:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None
