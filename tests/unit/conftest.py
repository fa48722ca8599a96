"""Unit-test helpers: a valid configuration on disk that each test can bend, a fresh outbox,
and the decisions and mails the pipeline hands between stages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.models import (
    Alert,
    AlertState,
    Decision,
    Fault,
    FaultState,
    Mail,
    RawMessage,
    Severity,
)
from agent.outbox import Outbox
from agent.settings import Settings, load_settings
from tests.harness.daemon import toml_value


def to_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for our config: tables, arrays of tables, strings, numbers, lists."""
    lines: list[str] = []
    for section, body in doc.items():
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            for key, value in table.items():
                lines.append(f"{key} = {toml_value(value)}")
            lines.append("")
    return "\n".join(lines)


def base_config(tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "smtp-password"
    secret.write_text("correct horse battery\n")
    secret.chmod(0o600)
    return {
        "gateway": {"id": "gw-test-01", "state_dir": str(tmp_path / "state")},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "client_id": "faultmail-gw-test-01"},
        "smtp": {
            "host": "mail.example.com",
            "port": 587,
            "security": "starttls",
            "username": "gw@example.com",
            "password_file": str(secret),
            "from": "Gateway Test <gw@example.com>",
        },
        "policy": {"allowed_domains": ["example.com"]},
        "routes": [
            {"topics": ["devices/+/fault"], "min_severity": "warning", "to": ["ops@example.com"]}
        ],
    }


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(doc: dict[str, Any]) -> Path:
        path = tmp_path / "faultmail.toml"
        path.write_text(to_toml(doc))
        return path

    return write


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    """A fresh outbox database in the test's directory, closed afterwards."""
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


@pytest.fixture
def settings(tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]) -> Settings:
    return load_settings(write_config(base_config(tmp_path)))


def pending_decision(
    seq: int | None,
    *,
    uid: str = "p",
    code: str = "E",
    severity: Severity = Severity.ERROR,
    payload: bytes | None = None,
    at: float = 1.0,
    state: FaultState = FaultState.ACTIVE,
) -> Decision:
    """A routed, valid alert as intake hands it to the outbox (one recipient)."""
    raw = RawMessage(
        topic=f"devices/{uid}/fault",
        payload=payload if payload is not None else str(seq).encode(),
        mid=seq or 0,
        qos=1,
        dup=False,
        received_at=at,
    )
    fault = Fault(uid=uid, code=code, severity=severity, message="m", state=state, seq=seq)
    return Decision(
        raw=raw, fault=fault, state=AlertState.PENDING, recipients=("ops@example.com",), uid=uid
    )


def one_alert_mail(
    message: str = "Overpressure",
    *,
    uid: str = "pump-17",
    code: str = "E042",
    severity: Severity = Severity.CRITICAL,
    state: FaultState = FaultState.ACTIVE,
    details: dict[str, str | int | float] | None = None,
    device_ts: float | None = 1_800_000_000.0,
    received_at: float = 1_800_000_001.0,
) -> Mail:
    """A planned mail carrying one alert, as the dispatcher claims it."""
    alert = Alert(
        id=7,
        topic=f"devices/{uid}/fault",
        uid=uid,
        seq=3,
        code=code,
        severity=severity,
        fault_state=state,
        message=message,
        details={"bar": 12.5} if details is None else details,
        device_ts=device_ts,
        received_at=received_at,
    )
    return Mail(
        id=1,
        message_id="<faultmail.gw-1.abc.1@example.com>",
        created_at=received_at + 1,
        recipients=("ops@example.com",),
        attempts=0,
        alerts=(alert,),
    )
