"""structlog setup: JSON lines on stdout for journald, or a console format for people.

A redaction processor runs last before rendering, so no code path can log a secret by accident
(in the way aiosmtpd scrubs AUTH lines before logging them). Before it, every string is made
valid text, so no code path can break logging with text from outside either.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from agent.sanitize import valid_text

REDACTED = "[redacted]"
_SECRET_KEYS = frozenset(
    {"password", "passwd", "secret", "token", "access_token", "authorization", "client_secret"}
)


class Redactor:
    """Replaces values of secret-looking keys, and any known secret inside any string."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Very short "secrets" would blank out ordinary words; real ones are longer.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = self._clean(key, event_dict[key])
        return event_dict

    def _clean(self, key: str, value: Any) -> Any:
        if key.lower() in _SECRET_KEYS:
            return REDACTED
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean("", v) for v in value]
        return value


def valid_strings(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every str key and value (nested in dicts, lists and tuples too) made valid text.

    A lone surrogate (a device's "\\ud800" escape, a relay reply byte decoded with
    surrogateescape) makes the console renderer or stdout raise UnicodeEncodeError and the JSON
    renderer write an escape journald consumers cannot decode: the log line that should report
    the problem would itself kill the stage.
    """
    for key in list(event_dict):
        value = event_dict[key]
        clean_key = _valid(key)
        if clean_key is not key:
            del event_dict[key]
        event_dict[clean_key] = _valid(value)
    return event_dict


def _valid(value: Any) -> Any:
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {_valid(k): _valid(v) for k, v in value.items()}
    if type(value) is list:
        return [_valid(v) for v in value]
    if type(value) is tuple:
        return tuple(_valid(v) for v in value)
    return value


def configure_logging(
    *,
    fmt: str = "json",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            # After format_exc_info: a traceback's text is as hostile as the values.
            valid_strings,
            Redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
