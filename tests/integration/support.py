"""Small helpers shared by the integration tests: device payloads and accounting."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.harness.daemon import Daemon
from tests.harness.relay import ReceivedMail

T = TypeVar("T")


def fault(
    uid: str,
    seq: int,
    *,
    code: str = "E042",
    severity: str = "critical",
    message: str = "Overpressure",
    state: str = "active",
) -> tuple[str, bytes]:
    """One device fault as (topic, payload), following the device contract."""
    payload = {
        "code": code,
        "severity": severity,
        "message": f"{message} #{seq}",
        "seq": seq,
        "state": state,
        "ts": 1_795_000_000 + seq,
    }
    return f"devices/{uid}/fault", json.dumps(payload).encode()


def audit(daemon: Daemon) -> list[dict[str, Any]]:
    """`faultmail audit --json`, parsed."""
    result = daemon.cli("audit", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def eventually(probe: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    """Poll probe() until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def states(alerts: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for alert in alerts:
        out[alert["state"]] = out.get(alert["state"], 0) + 1
    return out


def all_settled(n: int) -> Callable[[list[dict[str, Any]]], bool]:
    """Predicate: n alerts exist and none is pending any more."""
    return lambda alerts: len(alerts) == n and all(a["state"] != "pending" for a in alerts)


# The "Sequence:" line of a mail's plain text part (mail.language "en", the default).
_SEQUENCE_LINE = re.compile(r"^Sequence:[ ]+(\d+)[ \r]*$", re.MULTILINE)
# A follow-up's count: "E042 on pump-17 occurred 199 more times since ...".
_FOLLOWUP_COUNT = re.compile(r"occurred ([\d,]+) more times? since")
# An alert mail's repeats: "... (and 3 earlier repeats)".
_EARLIER_REPEATS = re.compile(r"\(and ([\d,]+) earlier repeats?\)")


def plain_text(mail: ReceivedMail) -> str:
    """The mail's text/plain body."""
    part = mail.message.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def mail_kind(mail: ReceivedMail) -> str:
    return str(mail.message.get("X-Faultmail-Kind", ""))


def mail_alert_key(mail: ReceivedMail) -> tuple[str, int] | None:
    """(device uid, seq) of a mail about one alert, read as a technician would: the
    X-Faultmail-Device header and the body's Sequence line; None when either is missing.

    Independent of any member's database: in a group, alert ids differ per member, and the
    mail's device + seq is what says which device message it reports.
    """
    uid = mail.message.get("X-Faultmail-Device")
    found = _SEQUENCE_LINE.search(plain_text(mail))
    if uid is None or found is None:
        return None
    return str(uid), int(found.group(1))


def repeats_counted(mail: ReceivedMail) -> int:
    """How many occurrences a mail of a thread reports: an alert mail 1 plus its "(and N
    earlier repeats)", a follow-up its "occurred N more times"; 0 for anything else."""
    text = plain_text(mail)
    kind = mail_kind(mail)
    if kind == "alert":
        earlier = _EARLIER_REPEATS.search(text)
        return 1 + (int(earlier.group(1).replace(",", "")) if earlier else 0)
    if kind == "followup":
        found = _FOLLOWUP_COUNT.search(text)
        return int(found.group(1).replace(",", "")) if found else 0
    return 0
