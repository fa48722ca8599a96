"""logs: secrets are redacted by the processor, whatever the code tried to log."""

from __future__ import annotations

import io
import json

import structlog

from agent.logs import REDACTED, configure_logging


def test_secret_values_and_keys_are_redacted() -> None:
    """A known secret inside any string, list or dict, and any secret-named key, is redacted."""
    out = io.StringIO()
    configure_logging(fmt="json", secrets=["hunter2-secret"], stream=out)
    structlog.get_logger("t").info(
        "auth failed for hunter2-secret",
        password="x",
        nested={"token": "t", "err": ["hunter2-secret!"]},
    )
    line = json.loads(out.getvalue())
    assert "hunter2" not in out.getvalue()
    assert line["event"] == f"auth failed for {REDACTED}"
    assert line["password"] == REDACTED
    assert line["nested"] == {"token": REDACTED, "err": [f"{REDACTED}!"]}
    assert line["level"] == "info" and "timestamp" in line


def test_level_filter() -> None:
    """Below the configured level nothing is written."""
    out = io.StringIO()
    configure_logging(fmt="json", level="warning", stream=out)
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["loud"]
