"""The mail as it goes on the wire: its headers and a multipart/alternative body (plain text,
then HTML), serialised straight to the bytes the email package's generator writes for it.

Composed holds header objects made by the email package's header API (never strings pasted
together) and the two quoted-printable payloads. as_bytes() writes what
EmailMessage.as_bytes() would for the same message without building a message tree or
running the generator over it (two thirds of compose's cost): each header folded by the
policy (shared header objects fold once, see headers._Policy), fixed part headers taken from
the email package itself, payload lines ended with the policy's line end. message() parses
those bytes back into an EmailMessage for anything that wants to read the mail.
"""

from __future__ import annotations

import functools
import random
import re
import sys
from email import message_from_bytes, quoprimime
from email.headerregistry import BaseHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from typing import Any

from agent.compose.context import ComposeContext
from agent.compose.headers import POLICY, constant_header, header

# Quoted-printable body lines: as long as set_content makes them (the policy's line length).
_QP_LINE_LENGTH: int = POLICY.max_line_length or 78
# The multipart's Content-Type, written with its boundary when the mail is serialised.
_CONTENT_TYPE = "Content-Type"
_BOUNDARY_DIGITS = 19


class Composed:
    """One mail: header objects in order, then the text and HTML payloads."""

    def __init__(self, headers: list[tuple[str, BaseHeader | str]] | None = None) -> None:
        # None stands for the multipart's Content-Type, written with the boundary.
        self._headers: list[tuple[str, BaseHeader | str | None]] = list(headers or [])
        self._boundary = ""
        self._text = ""
        self._html = ""

    def __setitem__(self, name: str, value: str | BaseHeader) -> None:
        """Add a header (the email package's header API: a value with a line break raises)."""
        self._headers.append(
            (name, value if isinstance(value, BaseHeader) else header(name, value))
        )

    def __getitem__(self, name: str) -> BaseHeader | str | None:
        """The first header of that name (its decoded text is str(header)), or None."""
        key = name.lower()
        for have, value in self._headers:
            if have.lower() == key:
                return value if value is not None else header(have, self._content_type_value())
        return None

    def set_alternative(self, text: str, html_text: str) -> None:
        """multipart/alternative: `text` as text/plain, then `html_text` as text/html."""
        self["MIME-Version"] = constant_header("MIME-Version", "1.0")
        self._headers.append((_CONTENT_TYPE, None))
        self._boundary = _boundary()
        self._text = _quoted_printable(text)
        self._html = _quoted_printable(html_text)

    def as_bytes(self, policy: EmailPolicy = POLICY) -> bytes:
        """What EmailMessage.as_bytes(policy=policy) writes for this mail, byte for byte."""
        nl = policy.linesep.encode("ascii")
        out = [
            policy.fold_binary(name, value) if value is not None else self._content_type(policy)
            for name, value in self._headers
        ]
        plain, html_head = _part_heads(policy)
        dash = b"--" + self._boundary.encode("ascii")
        out += (nl, dash, nl, plain, _lines(self._text, nl), nl, dash, nl, html_head)
        out += (_lines(self._html, nl), nl, dash, b"--", nl)
        return b"".join(out)

    def message(self) -> EmailMessage:
        """The mail parsed back from its bytes, to read it as the email package sees it."""
        parsed = message_from_bytes(self.as_bytes(), policy=POLICY)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def _content_type_value(self) -> str:
        return f'multipart/alternative; boundary="{self._boundary}"'

    def _content_type(self, policy: EmailPolicy) -> bytes:
        """The folded Content-Type: the boundary's digits put into the folded form of a
        boundary of zeros (digits for digits cannot change where the header folds)."""
        around = _content_type_fold(policy)
        if around is None:
            return policy.fold_binary(
                _CONTENT_TYPE,
                policy.header_store_parse(_CONTENT_TYPE, self._content_type_value())[1],
            )
        digits = self._boundary[15 : 15 + _BOUNDARY_DIGITS].encode("ascii")
        return around[0] + digits + around[1]


def set_bodies(msg: Composed, ctx: ComposeContext, name: str, values: dict[str, Any]) -> None:
    """multipart/alternative from the `name` templates: plain text first, then HTML."""

    def render(ext: str) -> str:
        return ctx.templates.get_template(f"{name}.{ext}.j2").render(values)

    msg.set_alternative(render("txt"), render("html"))


def _boundary() -> str:
    """A MIME boundary as the email package draws one for a multipart that has none.

    The package then also compiles a regular expression per mail to check that no line of the
    parts is the boundary. Drawn here, it cannot be one: the part headers are fixed and
    quoted-printable writes every "=" of the body as "=3D", so no body line holds "==".
    """
    return "=" * 15 + f"{random.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}" + "=="


def _quoted_printable(text: str, width: int = _QP_LINE_LENGTH) -> str:
    """A UTF-8 body as email.contentmanager encodes it for cte="quoted-printable"."""
    # Lines end in "\n" whatever the template wrote (serialising writes the policy's line end).
    body = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    latin = body.decode("latin-1")
    if _BODY_TABLE is not None and "=" in latin and _QP_QUOTED.search(latin) is None:
        latin = _Translated(latin, latin.replace("=", "=3D"))
    return quoprimime.body_encode(latin, width)


# What body_encode's translation table changes besides "=": everything but printable ASCII,
# tab and the line ends. A body without any (an English mail) translates as "=" -> "=3D".
_QP_QUOTED = re.compile(r"[^\t\n\r -~]")
# body_encode's table (private: with a Python without it, bodies are encoded as they come).
_BODY_TABLE = getattr(quoprimime, "_QUOPRI_BODY_ENCODE_MAP", None)


class _Translated(str):
    """A body whose quoted-printable translation is already known.

    body_encode first translates the whole body through its table, character by character
    through a dict once a character maps to three (the first "=" of an HTML body): 10 ns a
    character, two thirds of encoding an HTML part. For a body that holds nothing else to
    quote, one str.replace gives the same string. Asked for any other table, str's own.
    """

    _translated: str

    def __new__(cls, text: str, translated: str) -> _Translated:
        self = super().__new__(cls, text)
        self._translated = translated
        return self

    def translate(self, table: Any) -> str:
        if table is _BODY_TABLE:
            return self._translated
        return super().translate(table)


def _lines(payload: str, nl: bytes) -> bytes:
    # Quoted-printable text is ASCII and holds no "\r" (a CR in the body is written "=0D").
    return payload.encode("ascii").replace(b"\n", nl)


@functools.cache
def _content_type_fold(policy: EmailPolicy) -> tuple[bytes, bytes] | None:
    """The folded multipart Content-Type split around the boundary's digits; None if the
    digits do not come out in one piece (a policy with very short lines)."""
    zeros = "0" * _BOUNDARY_DIGITS
    value = f'multipart/alternative; boundary="{"=" * 15}{zeros}=="'
    folded = policy.fold_binary(_CONTENT_TYPE, policy.header_store_parse(_CONTENT_TYPE, value)[1])
    pieces = folded.split(zeros.encode("ascii"))
    return (pieces[0], pieces[1]) if len(pieces) == 2 else None


@functools.cache
def _part_heads(policy: EmailPolicy) -> tuple[bytes, bytes]:
    """The header blocks (with the blank line) of the text and the HTML part, as the email
    package writes them: the same for every mail."""

    def head(subtype: str, *extra: tuple[str, BaseHeader]) -> bytes:
        part = EmailMessage(policy=POLICY)
        part["Content-Type"] = constant_header("Content-Type", f'text/{subtype}; charset="utf-8"')
        part["Content-Transfer-Encoding"] = constant_header(
            "Content-Transfer-Encoding", "quoted-printable"
        )
        for name, value in extra:
            part[name] = value
        part.set_payload("")
        return part.as_bytes(policy=policy)

    # Like the email package's add_alternative, the HTML part has a MIME-Version of its own.
    return head("plain"), head("html", ("MIME-Version", constant_header("MIME-Version", "1.0")))
