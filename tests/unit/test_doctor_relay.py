"""doctor.relay: the pure parts of the relay check: the date in a 220 greeting and the wording
of what EHLO advertised."""

from __future__ import annotations

import datetime

from agent.doctor.relay import extensions_text, greeting_time


def test_greeting_dates_are_read_in_the_forms_relays_write() -> None:
    """Exim's, Sendmail's and Microsoft's greeting dates parse, with their zone."""
    exim = greeting_time("mx.example.com ESMTP Exim 4.96 Fri, 27 Nov 2026 10:00:05 +0100")
    assert exim is not None
    when, text = exim
    assert when == datetime.datetime(2026, 11, 27, 9, 0, 5, tzinfo=datetime.UTC)
    assert text == "Fri, 27 Nov 2026 10:00:05 +0100"
    microsoft = greeting_time("Microsoft ESMTP MAIL Service ready at 27 Nov 2026 10:00:05 UTC")
    assert microsoft is not None and microsoft[0].tzinfo is not None
    assert microsoft[0] == datetime.datetime(2026, 11, 27, 10, 0, 5, tzinfo=datetime.UTC)


def test_greeting_without_a_date_gives_none() -> None:
    """A greeting without a date (Postfix's default) or with a broken one gives None."""
    assert greeting_time("mail.example.com ESMTP Postfix") is None
    assert greeting_time("ready 31 Feb 2026 99:99 +0000") is None


def test_extensions_list_what_was_offered_and_what_was_not() -> None:
    """SIZE in MiB, the flags faultmail cares about, AUTH mechanisms, then what is missing."""
    offered = {"size": "36700160", "pipelining": "", "auth": "plain login", "8bitmime": ""}
    assert extensions_text(offered) == (
        "SIZE 35.0 MiB, PIPELINING, 8BITMIME, AUTH PLAIN LOGIN; not SMTPUTF8"
    )
    assert extensions_text({}) == "nothing; not SIZE, PIPELINING, AUTH, SMTPUTF8"
    assert extensions_text({"size": "0", "smtputf8": ""}).startswith("SIZE, SMTPUTF8;")
