"""The body: multipart/alternative, plain text then HTML, as the email package builds it."""

from __future__ import annotations

import random
import sys
from email import quoprimime
from email.message import EmailMessage
from typing import Any

from agent.compose.context import ComposeContext
from agent.compose.headers import POLICY, constant_header

# Quoted-printable body lines: as long as set_content makes them (the policy's line length).
_QP_LINE_LENGTH: int = POLICY.max_line_length or 78


def set_bodies(msg: EmailMessage, ctx: ComposeContext, name: str, values: dict[str, Any]) -> None:
    """multipart/alternative from the `name` templates: plain text first, then HTML."""

    def render(ext: str) -> str:
        return ctx.templates.get_template(f"{name}.{ext}.j2").render(values)

    set_alternative(msg, render("txt"), render("html"))


def set_alternative(msg: EmailMessage, text: str, html_text: str) -> None:
    """The multipart/alternative that set_content(text, cte="quoted-printable") and then
    add_alternative(html_text, subtype="html", ...) build, byte for byte, from shared header
    objects: those calls parse Content-Type six times per mail and build two headers per part.
    Like theirs, the HTML part carries a MIME-Version of its own (harmless)."""
    msg["MIME-Version"] = constant_header("MIME-Version", "1.0")
    msg["Content-Type"] = f'multipart/alternative; boundary="{_boundary()}"'
    msg.attach(_text_part("plain", text))
    html_part = _text_part("html", html_text)
    html_part["MIME-Version"] = constant_header("MIME-Version", "1.0")
    msg.attach(html_part)


def _boundary() -> str:
    """A MIME boundary as the email package draws one for a multipart that has none.

    The package then also compiles a regular expression per mail to check that no line of the
    parts is the boundary. Drawn here, it cannot be one: the part headers are fixed and
    quoted-printable writes every "=" of the body as "=3D", so no body line holds "==".
    """
    return "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="


def _text_part(subtype: str, text: str) -> EmailMessage:
    """A UTF-8 quoted-printable text/`subtype` part, encoded as email.contentmanager does it."""
    part = EmailMessage(policy=POLICY)
    part["Content-Type"] = constant_header("Content-Type", f'text/{subtype}; charset="utf-8"')
    part["Content-Transfer-Encoding"] = constant_header(
        "Content-Transfer-Encoding", "quoted-printable"
    )
    # Lines end in "\n" whatever the template wrote (the generator writes CRLF).
    body = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    part.set_payload(quoprimime.body_encode(body.decode("latin-1"), _QP_LINE_LENGTH))
    return part
