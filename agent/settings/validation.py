"""Validation shared by the configuration sections, and the rules that span sections.

Every section refuses unknown keys (a misspelt key must stop startup, not silently leave a
default in force) and names the key a problem belongs to. Checks used by several sections
(readable files, MQTT topic filters, format strings) and the cross-section rules (recipients
inside the allowlist, DKIM aligned with From) live here, so the section models stay
declarations.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from agent.policy import Allowlist


class Section(BaseModel):
    """Base of every section: unknown keys refused, values immutable once validated, every
    float finite.

    TOML has `inf` and `nan`, and a float bound does not stop them all (nan compares false
    with everything): refused here for every float field, whatever its own bounds. Every
    number also carries an upper bound of its own (tests/unit/test_settings.py walks them).

    pydantic copies a mutable default (`= []`) for each instance; ruff's RUF012 cannot see
    that a subclass in another module is a pydantic model, hence its `noqa` there.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class KeyedError(ValueError):
    """A cross-field problem that belongs to a specific key rather than to the model."""

    def __init__(self, key: str, text: str) -> None:
        self.key = key
        super().__init__(text)


def check_readable_file(value: str, key_hint: str) -> str:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"file {value!r} does not exist; create it or fix the path ({key_hint})")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file {value!r} is not readable by this user; fix its permissions")
    return value


# Shared subscription prefixes: MQTT 5's "$share/<group>/" (4.8.2) and EMQX's older
# "$queue/". The UID check and the routes see the topic a message was published to, which
# never carries the prefix, so a filter written with one matches nothing there.


def shared_subscription_plain(topic: str) -> str | None:
    """The plain filter inside a shared subscription filter ("" if it has none), or None
    when `topic` is not one."""
    lowered = topic.lower()
    if lowered.startswith("$share/"):
        parts = topic.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    if lowered.startswith("$queue/"):
        return topic.split("/", 1)[1]
    return None


def check_topic_filter(topic: str) -> None:
    plain = shared_subscription_plain(topic)
    if plain is not None:
        write = f"write the plain filter {plain!r}" if plain else "write the plain filter"
        raise ValueError(
            f"{topic!r} is a shared subscription, which faultmail does not take written by "
            f'hand; {write} and set [cluster] mode = "shared" with a group on every member: '
            "faultmail then subscribes with $share/<group>/ itself"
        )
    levels = topic.split("/")
    if not topic or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels):
        raise ValueError(f"{topic!r} is not a valid MQTT topic filter")
    if "#" in levels[:-1]:
        raise ValueError(f"{topic!r}: '#' may only be the last level")


# The names agent/compose/ formats each user format string with (subject_for in subjects.py,
# runbook_link in values.py).
SUBJECT_FIELDS = ("severity", "device", "code", "message", "gateway", "site")
RUNBOOK_FIELDS = ("code",)
# A padded or cut field wider than this is a typo or an attack, not a subject: with
# "{message:>99999999999}" str.format asks for gigabytes and raises MemoryError at send time.
FORMAT_MAX_WIDTH = 200
# Standard format spec for a str (Python "Format Specification Mini-Language"):
# [[fill]align][sign][z][#][0][width][grouping][.precision][type]; only width and precision
# allocate, so only they are bounded here. What does not apply to a str (a sign, type "d")
# is caught by the trial format below.
_FORMAT_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d*))?[A-Za-z%]?",
    re.DOTALL,
)


def check_format(value: str, fields: tuple[str, ...]) -> str:
    """A str.format template that can only ever use `fields` and cannot fail at send time.

    Device text is what gets formatted, so the template must not reach into it (attribute or
    index access), nest placeholders inside a spec, or ask for unbounded padding.
    """
    allowed = ", ".join(f"{{{name}}}" for name in fields)
    fix = f"use only {allowed} (write {{{{ and }}}} for literal braces)"
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"not a valid format string ({exc}); {fix}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(f"positional placeholder {{{name}}} is not filled in; {fix}")
        if "." in name or "[" in name:
            raise ValueError(f"{{{name}}}: attribute or index access is not allowed; {fix}")
        if name not in fields:
            raise ValueError(f"unknown placeholder {{{name}}}; {fix}")
        if conversion not in (None, "s", "r", "a"):
            raise ValueError(
                f"{{{name}!{conversion}}}: unknown conversion (use !s, !r or none); {fix}"
            )
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"{{{name}:{spec}}}: a placeholder inside a format spec; {fix}")
        match = _FORMAT_SPEC.fullmatch(spec or "")
        if match is None:
            raise ValueError(f"{{{name}:{spec}}}: not a format spec for text; {fix}")
        for what in ("width", "precision"):
            number = match.group(what)
            if number and int(number) > FORMAT_MAX_WIDTH:
                raise ValueError(
                    f"{{{name}:{spec}}}: {what} {number} is too large (at most "
                    f"{FORMAT_MAX_WIDTH}); {fix}"
                )
    # Whatever the checks above do not know about shows up here, not at the first alert.
    try:
        value.format(**{name: "x" for name in fields})
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"cannot be formatted ({exc}); {fix}") from None
    return value


# Runbook links go into the mail's HTML as an href: only web links, never javascript:, data:,
# file: or a scheme-relative "//host" that a mail client resolves as it likes.
RUNBOOK_SCHEMES = ("https", "http")


def check_runbook_url(value: str, *, code: str | None = None) -> str:
    """A runbook link: an https:// or http:// URL with a host name.

    Without `code` it is mail.runbook_default, a template: the text before its first
    placeholder must already hold the whole host, so {code} (percent-encoded by compose) can
    only land in the path, query or fragment. With `code` it is that code's mail.runbooks
    link, used as it is.
    """
    template = code is None
    example = "runbooks/{code}" if template else f"runbooks/{code}"
    fix = f"use an https:// (or http://) link like https://wiki.example.com/{example}"
    name = "" if template else f"the runbook of {code!r}: "
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(
            f"{name}{value!r} has a space or a control character (percent-encode it: %20); {fix}"
        )
    # The literal text before the first placeholder (check_format has vetted the template).
    head = next(iter(string.Formatter().parse(value)))[0] if template and value else value
    try:
        url = urlsplit(head)
        host = url.hostname
    except ValueError as exc:
        raise ValueError(f"{name}{value!r} is not a URL ({exc}); {fix}") from None
    scheme = url.scheme.lower()
    if scheme not in RUNBOOK_SCHEMES or not head.lower().startswith(f"{scheme}://"):
        raise ValueError(f"{name}{value!r} is not an https:// or http:// link; {fix}")
    if not host:
        raise ValueError(f"{name}{value!r} has no fixed host name before any placeholder; {fix}")
    if head != value and len(head) <= len(f"{scheme}://{url.netloc}"):
        raise ValueError(
            f"{value!r}: {{code}} would become part of the host; put it after a '/', '?' or "
            f"'#'; {fix}"
        )
    return value


def check_recipients_allowed(
    allowlist: Allowlist, routes_to: Sequence[Sequence[str]], notify: Sequence[str]
) -> None:
    """Every route recipient and security contact inside the allowlist, or a KeyedError."""
    for index, addresses in enumerate(routes_to):
        for addr in addresses:
            if not allowlist.allows(addr):
                raise KeyedError(
                    f"routes[{index}].to",
                    f"{addr} is outside the allowlist; add its domain to "
                    "policy.allowed_domains or the address to policy.allowed_recipients",
                )
    for addr in notify:
        if not allowlist.allows(addr):
            raise KeyedError(
                "flood.notify",
                f"{addr} is outside the allowlist; add it to policy.allowed_recipients",
            )


def check_dkim_aligned(dkim_domain: str, sender_domain: str) -> None:
    """The DKIM d= domain must be the From domain, or DMARC fails (RFC 7489 3.1.1)."""
    if dkim_domain.lower() != sender_domain:
        raise KeyedError(
            "dkim.domain",
            f"{dkim_domain} differs from the From domain {sender_domain}; "
            "DMARC needs them aligned: sign with the From domain",
        )


def key_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part == "sender":
            name += ".from"
        else:
            name += f".{part}" if name else str(part)
    return name
