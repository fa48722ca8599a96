"""Cleaning of untrusted device text before it is stored or reaches a mail header.

Python's email package is not trusted to refuse header injection: the pyenv 3.11.7 on our
development machines lacks the CVE-2024-6923 fix and NUL passes everywhere. So every piece of
device text is cleaned here, once at parse time and again by compose for headers.
"""

from __future__ import annotations

import unicodedata

# Line and paragraph separators end a line for some mail clients and parsers.
_EXTRA_BREAKS = {"\u2028", "\u2029", "\u0085"}


def clean_text(text: str, max_chars: int) -> str:
    """Replace control characters (CR, LF, NUL, tab, C1, bidi overrides) by spaces; cap length."""
    cleaned = "".join(
        " " if (unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch in _EXTRA_BREAKS) else ch
        for ch in text
    )
    cleaned = " ".join(cleaned.split())
    return truncate(cleaned, max_chars)


def truncate(text: str, max_chars: int) -> str:
    """Cut to max_chars, marking the cut with an ellipsis."""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 1)] + "…"


def header_text(text: str, max_chars: int) -> str:
    """Device text made safe for a mail header value.

    Besides control characters, RFC 2047 encoded-word openers are broken up: an interpreter
    without the CVE-2024-6923 fix decodes `=?UTF-8?Q?=0A?=` inside a value to a raw line break
    when the header is folded, which would let a device add a `Bcc:`.
    """
    return clean_text(text, max_chars).replace("=?", "= ?")
