"""dkimpy's message parse and relaxed canonicalization, with the same results in fewer passes.

dkimpy (1.1.8) splits the whole message into lines to find its headers, joins the body back
together, and canonicalizes with module-level `re.sub` calls that rewrite every single space
as a space: about 100 µs of Python per signed mail here, a third of what signing costs beside
OpenSSL's RSA. The functions below return exactly what dkimpy's own return, for any bytes
(tests/unit/test_canonical.py compares them on generated input), but skip work where the
input needs none: a body without trailing whitespace, a value without a tab or two spaces in
a row, a header without a line end.

dkimpy has no hook for this, so its module functions are replaced, as agent.signing does for
RSA. `install()` first checks that the functions it replaces still behave as those of the
dkimpy this was written against (a probe set); a dkimpy that changed them keeps its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from agent.imports import attributes_set, without_dnspython

dkim: Any = without_dnspython("dkim")
_canon: Any = dkim.canonicalization

_EOL = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
# Runs of blanks that relaxed canonicalization changes: a single space stays as it is.
_CHANGING_BLANKS = re.compile(rb"\t[\t ]*| [\t ]+")
_TRAILING_BLANKS = re.compile(rb"[\t ]+\r\n")


def compress_whitespace(content: bytes) -> bytes:
    if b"\t" not in content and b"  " not in content:
        return content
    return _CHANGING_BLANKS.sub(b" ", content)


def strip_trailing_whitespace(content: bytes) -> bytes:
    if b" \r\n" not in content and b"\t\r\n" not in content:
        return content
    return _TRAILING_BLANKS.sub(b"\r\n", content)


def unfold_header_value(content: bytes) -> bytes:
    first = content.find(b"\n")
    if first < 0:
        return content
    if first == len(content) - 1:  # the usual value: one line and its line end
        return content[: -2 if content.endswith(b"\r\n") else -1]
    # Removing every CRLF, then every LF left, removes what \r?\n matches, no more: a CR
    # that is not followed by LF is kept either way.
    return content.replace(b"\r\n", b"").replace(b"\n", b"")


def _crlf_lines(text: bytes) -> bytes:
    """text with every line end (\\r?\\n) written as CRLF."""
    if text.count(b"\n") == text.count(b"\r\n"):
        return text
    return _EOL.sub(b"\r\n", text)


def rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's rfc822_parse: (headers as [name, value + CRLF] pairs, body with CRLF line
    ends). Reads the header lines one at a time up to the empty line, instead of splitting
    the whole message; raises what dkimpy raises (MessageFormatError, IndexError for a
    continuation line before any header)."""
    headers: list[list[bytes]] = []
    pos, end = 0, len(message)
    while pos <= end:
        eol = _EOL.search(message, pos)
        line = message[pos : eol.start()] if eol else message[pos:]
        nxt = eol.end() if eol else end + 1
        if not line:
            return headers, _crlf_lines(message[nxt:]) if nxt <= end else b""
        if line[0] in (0x09, 0x20):
            headers[-1][1] += line + b"\r\n"
        else:
            match = _FIELD_NAME.match(line)
            if match is not None:
                headers.append([match.group(1), line[match.end(0) :] + b"\r\n"])
            elif not line.startswith(b"From "):
                raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
        pos = nxt
    return headers, b""


def select_headers(headers: list[Any], include_headers: Any) -> list[Any]:
    """dkimpy's select_headers: for each name to sign, the last header of that name not yet
    taken (so a name listed twice takes the two last ones, or signs an absent second). Each
    header's name is lowered once, not once per name to sign."""
    names = [header[0].lower() for header in headers]
    sign_headers = []
    lastindex: dict[bytes, int] = {}
    for h in include_headers:
        assert h == h.lower()
        i = lastindex.get(h, len(headers))
        while i > 0:
            i -= 1
            if h == names[i]:
                sign_headers.append(headers[i])
                break
        lastindex[h] = i
    return sign_headers


_REPLACED: dict[tuple[Any, str], Callable[..., Any]] = {
    (_canon, "compress_whitespace"): compress_whitespace,
    (_canon, "strip_trailing_whitespace"): strip_trailing_whitespace,
    (_canon, "unfold_header_value"): unfold_header_value,
    (dkim, "rfc822_parse"): rfc822_parse,
    (dkim, "select_headers"): select_headers,
}
_ORIGINAL: dict[tuple[Any, str], Callable[..., Any]] = {
    key: getattr(*key) for key in _REPLACED if hasattr(*key)
}

# What the replaced functions are checked against before they are replaced: tabs, runs,
# trailing blanks, bare LF and CR, folded headers, an mbox From line, no body.
_PROBES = [
    b"From: a@b\r\nSubject:  x \t y \r\n\tz\r\nTo: c\r\nfrom: d\r\n\r\nline \t \r\n"
    b"\tbody  end\n\rx\r\n\r\n\r\n",
    b"From a@b Mon\nTo: c@d\n\nbody\n",
    b"A: 1\r\nB: 2",
    b"",
    b"X:\r\n\r\n",
]
_SIGNED = (b"from", b"from", b"to", b"subject", b"x")


def _same_as_dkimpy() -> bool:
    parse = (dkim, "rfc822_parse")
    try:
        for probe in _PROBES:
            for key, ours in _REPLACED.items():
                if key == (dkim, "select_headers"):
                    headers = _ORIGINAL[parse](probe)[0]
                    same = ours(headers, _SIGNED) == _ORIGINAL[key](headers, _SIGNED)
                else:
                    same = ours(probe) == _ORIGINAL[key](probe)
                if not same:
                    return False
    except Exception:  # a dkimpy whose functions now raise differently keeps its own
        return False
    return True


def install() -> bool:
    """Replace dkimpy's functions with ours; False (dkimpy keeps its own) if it lacks one of
    them or one of its own no longer gives what ours gives. Idempotent."""
    if len(_ORIGINAL) != len(_REPLACED) or not _same_as_dkimpy():
        return False
    for (module, name), ours in _REPLACED.items():
        setattr(module, name, ours)
    return True


def dkimpy_own() -> AbstractContextManager[None]:
    """dkimpy's own functions for the duration (to compare with them)."""
    return attributes_set(_ORIGINAL)
