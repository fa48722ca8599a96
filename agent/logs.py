"""structlog setup: JSON lines on stdout for journald, or a console format for people.

One scrubbing processor runs last before rendering, so no code path can log a secret by
accident (in the way aiosmtpd scrubs AUTH lines before logging them) nor break logging with
text from outside: in one walk over the event it makes every string valid text, then redacts
secret-named keys and any known secret inside a string.
"""

from __future__ import annotations

import json
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
# Values with no text in them: nothing to make valid or redact (most of an attempt's fields).
_PLAIN = frozenset({int, float, bool, type(None)})


class Scrubber:
    """Makes every str key and value valid text (nested in dicts, lists and tuples too), then
    replaces values of secret-looking keys, and any known secret inside any string.

    Valid text: a lone surrogate (a device's "\\ud800" escape, a relay reply byte decoded with
    surrogateescape) makes the console renderer or stdout raise UnicodeEncodeError and the
    JSON renderer write an escape journald consumers cannot decode: the log line that should
    report the problem would itself kill the stage. Runs after format_exc_info: a traceback's
    text is as hostile as the values. One walk, not one per concern: every log line pays it.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        # Very short "secrets" would blank out ordinary words; real ones are longer.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            value = event_dict[key]
            clean_key = valid_text(key)
            if clean_key is not key:
                del event_dict[key]
            elif type(value) in _PLAIN and key.lower() not in _SECRET_KEYS:
                continue  # the common case, without a call
            event_dict[clean_key] = self._clean(clean_key, value)
        return event_dict

    def _clean(self, key: Any, value: Any) -> Any:
        if str(key).lower() in _SECRET_KEYS:
            return REDACTED
        if type(value) in _PLAIN:
            return value
        if isinstance(value, str):
            value = valid_text(value)
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            cleaned = {}
            for k, v in value.items():
                clean_k = valid_text(k) if isinstance(k, str) else k
                cleaned[clean_k] = self._clean(clean_k, v)
            return cleaned
        if isinstance(value, list | tuple):
            return [self._clean("", v) for v in value]
        return value


class JsonLines:
    """structlog's JSONRenderer, with one encoder for every line: json.dumps given an option
    (`default`) builds a new JSONEncoder per call, a cost each attempt's line paid."""

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(default=_json_fallback).encode

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        return self._encode(event_dict)


def _json_fallback(value: Any) -> Any:
    """What JSONRenderer writes for a value JSON has no type for: its __structlog__() or its
    repr (an exception, a Path)."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def configure_logging(
    *,
    fmt: str = "json",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    renderer: Any = JsonLines() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Scrubber(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        # Every logger is made after this call (the daemon configures once, at startup), so
        # each may keep its processors from its first line instead of looking them up anew.
        cache_logger_on_first_use=True,
    )
