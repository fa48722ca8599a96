"""logs: secrets are redacted by the processor, whatever the code tried to log."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
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


def _utf8_stream() -> tuple[io.BytesIO, io.TextIOWrapper]:
    """A stream that encodes strictly, as stdout does under a UTF-8 locale (journald)."""
    raw = io.BytesIO()
    return raw, io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_lone_surrogates_cannot_break_a_log_line(fmt: str) -> None:
    """A lone surrogate (from a \\ud800 escape) and a surrogateescaped byte (from a relay reply
    or os.environ), in the event, a value, a nested value or a key, are written as U+FFFD."""
    raw, stream = _utf8_stream()
    configure_logging(fmt=fmt, stream=stream)
    structlog.get_logger("t").warning(
        "reply \udce4",
        reply="sp\udce4ter",
        nested={"k\ud800": ["x\ud800"]},
        **{"device\udcff": "pump"},
    )
    text = raw.getvalue().decode("utf-8")
    assert "\\ud" not in text.lower()  # no surrogate escape for a JSON reader to choke on
    if fmt == "json":
        line = json.loads(text)
        assert line["event"] == "reply \ufffd" and line["reply"] == "sp\ufffdter"
        assert line["nested"] == {"k\ufffd": ["x\ufffd"]} and line["device\ufffd"] == "pump"
    else:
        assert "reply \ufffd" in text and "sp\ufffdter" in text


def test_exception_text_with_a_lone_surrogate_is_logged() -> None:
    """A traceback whose message carries a lone surrogate is written, made valid."""
    raw, stream = _utf8_stream()
    configure_logging(fmt="console", stream=stream)
    try:
        raise RuntimeError("relay said sp\udce4ter")
    except RuntimeError:
        structlog.get_logger("t").exception("delivery_failed")
    text = raw.getvalue().decode("utf-8")
    assert "RuntimeError: relay said sp\ufffdter" in text


def test_secret_keys_are_redacted_whatever_their_value_and_case() -> None:
    """A secret-named key is redacted when its value is a number, a flag or None too (values
    with no text skip the string work, not the key check), in any case and at any depth."""
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    structlog.get_logger("t").info(
        "login",
        token=123456,
        Password=True,
        secret=None,
        client_secret=1.5,
        attempt=3,
        ok=False,
        nested=({"Authorization": 7, "n": 2},),
        ids={1: "x"},
    )
    line = json.loads(out.getvalue())
    for key in ("token", "Password", "secret", "client_secret"):
        assert line[key] == REDACTED, key
    assert line["attempt"] == 3 and line["ok"] is False
    assert line["nested"] == [{"Authorization": REDACTED, "n": 2}]
    assert line["ids"] == {"1": "x"}


def test_a_secret_next_to_invalid_text_is_redacted_and_the_text_made_valid() -> None:
    """Both in one walk: the secret inside a string with a lone surrogate is redacted, and the
    surrogate written as U+FFFD, at the top level and nested in a list in a dict."""
    raw, stream = _utf8_stream()
    configure_logging(fmt="json", secrets=["hunter2-secret"], stream=stream)
    structlog.get_logger("t").error(
        "reply", reply="hunter2-secret\udce4", nested={"k\ud800": ["\ud800hunter2-secret"]}
    )
    line = json.loads(raw.getvalue().decode("utf-8"))
    assert line["reply"] == f"{REDACTED}\ufffd"
    assert line["nested"] == {"k\ufffd": [f"\ufffd{REDACTED}"]}


def test_values_json_has_no_type_for_are_written_as_their_repr() -> None:
    """A Path or an exception as a value is written as its repr, not a failed log line."""
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    log = structlog.get_logger("t")
    log.warning("stored", path=Path("/var/lib/faultmail"), error=ValueError("bad"))
    log.warning("again", path=Path("/tmp"))
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["path"] == repr(Path("/var/lib/faultmail"))
    assert first["error"] == repr(ValueError("bad"))
    assert second["path"] == repr(Path("/tmp")) and second["event"] == "again"
