"""The mail's top-level headers, set from header objects parsed once and shared across mails."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.policy import EmailPolicy

from agent.compose.context import ComposeContext
from agent.models import Mail
from agent.sanitize import header_text


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard registry, but it builds each header class once instead of on every header
    set (CPython's HeaderRegistry.__getitem__ calls type() each time: a fifth of compose)."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(key)
        return cls


# The attribute of a shared header object (see _shared_header) that holds its folded forms.
_FOLDS = "_faultmail_folds"


class _Policy(EmailPolicy):
    """email.policy.SMTP (CRLF line ends) that folds a shared header object once.

    Folding refolds the header's whole parse tree on every serialisation (about a sixth of a
    mail's CPU). A header object never changes after it is built, so its folded form is a
    function of the policy settings folding reads; headers built for one mail are folded as
    before."""

    def fold_binary(self, name: str, value: str) -> bytes:
        folds: dict[tuple[str, int | None, bool], bytes] | None = getattr(value, _FOLDS, None)
        if folds is None:
            return super().fold_binary(name, value)
        key = (self.linesep, self.max_line_length, self.utf8)
        folded = folds.get(key)
        if folded is None:
            folded = folds[key] = super().fold_binary(name, value)
        return folded


POLICY = _Policy(linesep="\r\n", header_factory=_CachedHeaderRegistry())


def _parse(name: str, value: str | datetime) -> BaseHeader:
    """A header object from the email package's header factory (which refuses a value with a
    line break, as setting the string would)."""
    parsed: BaseHeader = POLICY.header_store_parse(name, value)[1]
    return parsed


def _shared_header(name: str, value: str | datetime) -> BaseHeader:
    """A header parsed by the email package's header factory, to be set on many mails: the
    package stores a header object as is, and _Policy folds it once."""
    header = _parse(name, value)
    setattr(header, _FOLDS, {})
    return header


# Parsed header objects hold their parse tree (a subject takes about 9 kB): the caches are
# small. Addresses: From and the few recipient sets (an address list is the dearest parse).
address_header = functools.lru_cache(maxsize=64)(_shared_header)
# Dates to the second: a burst plans many mails within one second.
date_header = functools.lru_cache(maxsize=16)(_shared_header)
# Device, code, thread and subject headers: a storm repeats a few devices and codes.
device_header = functools.lru_cache(maxsize=128)(_shared_header)
# Fixed values (Auto-Submitted, MIME-Version, the parts' Content-Type, kinds, severities, the
# gateway's id).
constant_header = functools.cache(_shared_header)


# Values that the policy writes from a plain string exactly as from their parsed header object
# (it writes a string that fits on a line as it is, and refolds a longer one through the
# header factory): the Message-IDs and alert-id runs compose makes, and ASCII subjects, each
# parsed per mail otherwise. A value holding "=?" never is: parsing decodes an encoded word.
# tests/unit/test_compose_shared_headers.py compares both ways.
PLAIN_VALUES = {
    "message-id": re.compile(r"<[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+>"),
    "x-faultmail-alert-ids": re.compile(r"[0-9]+(?:-[0-9]+)?(?: [0-9]+(?:-[0-9]+)?)*"),
    "subject": re.compile(r"[!-~]+(?: [!-~]+)*"),
}


def header(
    name: str, value: str, parse: Callable[[str, str], BaseHeader] = _parse
) -> BaseHeader | str:
    """A header for one mail: the value itself where PLAIN_VALUES says the policy writes it
    unchanged, else parsed by the email package's header factory (through `parse`, one of the
    caches above, where the value is likely to recur)."""
    plain = PLAIN_VALUES.get(name.lower())
    if plain is not None and "=?" not in value and plain.fullmatch(value):
        return value
    return parse(name, value)


def mail_headers(
    mail: Mail, ctx: ComposeContext, subject: str
) -> list[tuple[str, BaseHeader | str]]:
    """The headers every kind of mail has (addresses, subject, date, ids), in order."""
    # RFC 3834 (Auto-Submitted): machine-generated; auto-responders must not answer it. Not
    # "Precedence: bulk": an alert is not bulk mail, and some filters treat it as such.
    # The email package writes a datetime as format_datetime does (to the second), without
    # parsing a formatted date back.
    sent = datetime.fromtimestamp(mail.created_at, UTC).replace(microsecond=0)
    return [
        ("From", address_header("From", ctx.sender)),
        ("To", address_header("To", ", ".join(mail.recipients))),
        ("Subject", header("Subject", subject, device_header)),
        ("Date", date_header("Date", sent)),
        ("Message-ID", header("Message-ID", mail.message_id)),
        ("Auto-Submitted", constant_header("Auto-Submitted", "auto-generated")),
        ("X-Auto-Response-Suppress", constant_header("X-Auto-Response-Suppress", "All")),
        (
            "X-Faultmail-Gateway",
            constant_header("X-Faultmail-Gateway", header_text(ctx.gateway_id, 64)),
        ),
        ("X-Faultmail-Kind", constant_header("X-Faultmail-Kind", mail.kind.value)),
    ]
