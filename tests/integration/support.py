"""Small helpers shared by the integration tests: device payloads and accounting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.harness.daemon import Daemon

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
