"""Cleaning of untrusted text before it is stored, logged or reaches a mail header.

Outside text is hostile until made valid:
`json.loads` turns a `"\\ud800"` escape into a lone surrogate, and aiosmtplib decodes relay
replies with `surrogateescape`, so one stray byte becomes one. Such a `str` cannot be encoded
to UTF-8: sqlite3, the journal, `email` and `print` then raise far from where it came in.
`valid_text` is applied at every boundary (payloads, relay replies, token sources, config
strings) before anything else sees the text.

Python's email package is not trusted to refuse header injection either: the pyenv 3.11.7 on
our development machines lacks the CVE-2024-6923 fix and NUL passes everywhere. So every piece
of device text is cleaned here, once at parse time and again by compose for headers.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

# Line and paragraph separators end a line for some mail clients and parsers.
_EXTRA_BREAKS = {"\u2028", "\u2029", "\u0085"}

# Lone surrogates (not encodable as UTF-8) and Unicode noncharacters (U+FDD0..U+FDEF and the
# last two code points of every plane: "not for open interchange", Unicode 15 section 23.7).
_INVALID = re.compile(
    "[\ud800-\udfff\ufdd0-\ufdef"
    + "".join(
        f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}" for plane in range(17)
    )
    + "]"
)
REPLACEMENT = "\ufffd"

# Codecs are imported on first use. Looked up here, at import time, so a thread that must not
# die never has to open a file (an exhausted descriptor table would make that import fail).
for _codec in ("unicode_escape", "latin-1", "ascii"):
    codecs.lookup(_codec)


def valid_text(text: str) -> str:
    """`text` with lone surrogates and noncharacters replaced by U+FFFD: always encodable."""
    if text.isascii():
        return text
    return _INVALID.sub(REPLACEMENT, text)


def reply_text(text: str) -> str:
    """A relay's reply text as aiosmtplib decoded it (`surrogateescape`), made valid.

    Bytes that were not UTF-8 come back as `\\xNN` escapes, so a Latin-1 "sp\\xe4ter" stays
    readable in the audit log instead of turning into replacement characters.
    """
    if text.isascii():
        return text
    raw = text.encode("utf-8", "surrogateescape")
    return valid_text(raw.decode("utf-8", "backslashreplace"))


def escaped_sample(payload: bytes, max_chars: int) -> str:
    """Bytes as a person may safely read them: printable ASCII, everything else escaped."""
    # Latin-1 maps every byte to one code point, so each non-ASCII byte shows as one \\xNN.
    text = payload[: max_chars * 4].decode("latin-1")
    return truncate(text.encode("unicode_escape").decode("ascii"), max_chars)


def clean_text(text: str, max_chars: int) -> str:
    """Replace control characters (CR, LF, NUL, tab, C1, bidi overrides) by spaces; cap length.

    Lone surrogates and noncharacters become U+FFFD first (see `valid_text`).
    """
    if text.isascii() and text.isprintable():
        # Most device text: no ASCII character outside Cc is Cf, Zl or Zp, and isprintable()
        # is False for every Cc one, so there is nothing to replace.
        cleaned = text
    else:
        cleaned = "".join(
            " "
            if (unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch in _EXTRA_BREAKS)
            else ch
            for ch in valid_text(text)
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
