"""compose reuses parsed header objects and their folded form across mails, and builds the
multipart itself (issue 18): still no header from device text, no line break in a header, no
folded form written under another policy's settings, no boundary inside a part."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from email import message_from_bytes, policy, quoprimime
from email.headerregistry import BaseHeader
from email.message import EmailMessage
from email.policy import EmailPolicy

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.compose import POLICY, ComposeContext, Composed, compose, mime
from agent.compose.headers import PLAIN_VALUES, header
from agent.sanitize import header_text
from tests.unit.conftest import one_alert_mail

CTX = ComposeContext(sender="Gateway <gw@example.com>", gateway_id="gw-1", site="Brno")
NOW = 1_800_000_003.0
BOUNDARY = re.compile(rb'boundary="(={15}\d{19}==)"')
DELIMITER = re.compile(rb"\n--(={15}\d{19}==)\r?\n")  # the first part's, whatever the folding


def test_thread_root_with_a_line_break_is_refused() -> None:
    """A thread root is set through the header API like any value: a line break is refused,
    cached header or not, and never reaches the wire."""
    mail = dataclasses.replace(one_alert_mail(), thread_root="<a@x>\r\nBcc: evil@evil.test")
    with pytest.raises(ValueError, match="linefeed"):
        compose(mail, CTX, NOW)


def test_folded_headers_follow_the_serialising_policy() -> None:
    """A shared header folded once for CRLF and 78 columns is folded again under other
    settings: after the usual serialisation, an LF one has no CR in its headers and a
    40-column one no header line past 40 columns."""
    mail = one_alert_mail("ab " * 40)
    usual = compose(mail, CTX, NOW).as_bytes().split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert max(len(line) for line in usual) > 40
    lf = compose(mail, CTX, NOW).as_bytes(policy=POLICY.clone(linesep="\n"))
    assert b"\r" not in lf.split(b"\n\n", 1)[0]
    narrow = compose(mail, CTX, NOW).as_bytes(policy=POLICY.clone(max_line_length=40))
    lines = narrow.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    long = [line for line in lines if len(line) > 40]
    assert long == [] and len(lines) > len(usual)


def test_same_value_under_two_names_stays_two_headers() -> None:
    """Shared headers are keyed by name and value: a device named like its code keeps both."""
    raw = compose(one_alert_mail(uid="E042", code="E042"), CTX, NOW).as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["X-Faultmail-Device"] == "E042" and msg["X-Faultmail-Code"] == "E042"
    assert msg.get_all("X-Faultmail-Device") == ["E042"]


def test_device_text_that_looks_like_the_boundary_stays_in_its_part() -> None:
    """The boundary is drawn before the parts are written; a message quoting one (or this very
    mail's) cannot end a part early: quoted-printable writes its "=" as "=3D"."""
    first = compose(one_alert_mail("x"), CTX, NOW).as_bytes()
    found = BOUNDARY.search(first)
    assert found is not None
    fake = b"--" + found.group(1)
    hostile = f"a\n{fake.decode()}\nContent-Type: text/html\n\n<b>x</b>\n{fake.decode()}--\nz"
    msg = compose(one_alert_mail(hostile), CTX, NOW)
    raw = msg.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    plain = parsed.get_body(("plain",))
    assert plain is not None and fake.decode() in plain.get_content()
    assert raw == msg.as_bytes()  # the boundary is the mail's, not drawn again per serialisation
    again = BOUNDARY.search(compose(one_alert_mail("x"), CTX, NOW).as_bytes())
    assert again is not None and again.group(1) != found.group(1)  # random per mail, as before


_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=400)
_LINE_ENDS = st.sampled_from([POLICY, POLICY.clone(linesep="\n"), POLICY.clone(max_line_length=40)])


@settings(max_examples=150, deadline=None)
@given(subject=_TEXT, text=_TEXT, html_text=_TEXT, serialising=_LINE_ENDS)
def test_composed_bytes_are_the_email_packages(
    subject: str, text: str, html_text: str, serialising: EmailPolicy
) -> None:
    """Composed writes what the email package writes for the same mail (set_content with
    quoted-printable, then add_alternative), whatever the text, under any policy: only the
    random boundary differs. The golden test pins 50 real mails; this covers any body."""
    subject = header_text(subject, 200)
    old = EmailMessage(policy=POLICY)
    old["Subject"] = subject
    old.set_content(text, cte="quoted-printable")
    old.add_alternative(html_text, subtype="html", cte="quoted-printable")
    new = Composed([("Subject", header("Subject", subject))])
    new.set_alternative(text, html_text)
    new_bytes = new.as_bytes(policy=serialising)
    found = DELIMITER.search(new_bytes)
    assert found is not None
    old.set_boundary(found.group(1).decode())
    assert new_bytes == old.as_bytes(policy=serialising)


# Bodies of templates: mostly printable ASCII with "=" (HTML attributes), spaces and tabs at
# line ends, long lines to fold, sometimes a control character or a non-ASCII one.
_ASCII_BODY = st.text(
    st.one_of(
        st.sampled_from('= \t\n\r"<>a'),
        st.characters(min_codepoint=32, max_codepoint=126),
        st.sampled_from("\x00\x0b\x0c\x1b\x7f\x80\xa0\u00e9\u2028"),
    ),
    max_size=600,
)


@settings(max_examples=800, deadline=None)
@given(text=_ASCII_BODY, width=st.sampled_from([4, 5, 40, 76, 78, 998]))
@example(text="a" * 76 + "=b\n", width=78)
@example(text="x" * 75 + " \n" + "=" * 100, width=78)
def test_quoted_printable_bodies_are_the_email_packages(text: str, width: int) -> None:
    """Any body, with or without characters to quote besides "=", comes out of compose's
    quoted-printable step exactly as out of the email package's own body_encode."""
    body = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    expected = quoprimime.body_encode(body.decode("latin-1"), width)
    assert mime._quoted_printable(text, width) == expected


_ID_CHARS = 'abcXYZ019._+-@<> =?()\\"\t,;:'


@settings(max_examples=600, deadline=None)
@given(
    name=st.sampled_from(sorted(PLAIN_VALUES)),
    value=st.one_of(
        st.text(_ID_CHARS, max_size=200),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200),
        *(st.from_regex(plain, fullmatch=True) for plain in PLAIN_VALUES.values()),
    ),
    serialising=_LINE_ENDS,
)
# Encoded words: parsing decodes them, so the value written differs from the plain string.
@example(name="subject", value="a =?utf-8?b?Zm9v?= b", serialising=POLICY)
@example(name="subject", value="x =?UTF-8?Q?=0A?=Bcc: e", serialising=POLICY)
@example(name="message-id", value="<=?utf-8?q?x?=@example.com>", serialising=POLICY)
def test_plain_values_are_written_as_their_header_objects_would_be(
    name: str, value: str, serialising: EmailPolicy
) -> None:
    """A Message-ID, alert-id run or ASCII subject kept as a plain string is written exactly
    as its parsed header object would be, under any policy; anything else is parsed as before
    (and fails as before: the email package cannot fold some malformed Message-IDs)."""

    def written(make: Callable[[], BaseHeader | str]) -> bytes | str:
        try:
            return serialising.fold_binary(name, make())
        except Exception as exc:  # the outcome to compare, whatever it is
            return type(exc).__name__

    parsed = written(lambda: POLICY.header_store_parse(name, value)[1])
    assert written(lambda: header(name, value)) == parsed
