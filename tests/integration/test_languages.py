"""Mail in the reader's language, end to end: what the real daemon sends, parsed back."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import ReceivedMail, Relay
from tests.integration.support import fault

pytestmark = pytest.mark.integration


def _parsed(mail: ReceivedMail) -> EmailMessage:
    """The mail as sent, parsed from its bytes; every header decodes and re-encodes cleanly."""
    msg = message_from_bytes(mail.data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    header_block = mail.data.split(b"\r\n\r\n", 1)[0]
    assert header_block.isascii()  # RFC 5322: non-ASCII only as RFC 2047 encoded words
    return msg


def _plain(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_czech_gateway_mails_in_czech(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """A Czech gateway: subject and body Czech, plural forms and Czech dates; the encoded
    subject decodes back exactly."""
    daemon(
        daemon_config(
            site="Brno, čerpací stanice",
            mail={"language": "cs", "timezone": "Europe/Prague", "repeat_window": 3.0},
        )
    )
    publish_many(mosquitto, [fault("pump-17", i, message="Přetlak") for i in range(1, 5)])
    first, followup = relay.wait_for(2, timeout=20)
    publish_many(mosquitto, [fault("pump-17", 5, message="Přetlak", state="resolved")])
    resolved = relay.wait_for(3, timeout=20)[2]
    alert = _parsed(first)
    assert alert["Subject"] == "[KRITICKÁ] pump-17 E042: Přetlak #1"
    assert b"=?utf-8?" in first.data.split(b"\r\n\r\n", 1)[0].lower()
    text = _plain(alert)
    assert "Kritická porucha E042 na zařízení pump-17" in text
    assert "Brána:        gw-test-01 (Brno, čerpací stanice)" in text
    assert "Čas zařízení: 18. 11. 2026 11:06 UTC" in text
    assert "Závažnost:    kritická" in text
    repeats = _parsed(followup)
    assert repeats["Subject"] == "Re: [KRITICKÁ] pump-17 E042: Přetlak #4"
    assert "Porucha E042 na zařízení pump-17: 3 další výskyty od " in _plain(repeats)
    done = _parsed(resolved)
    assert str(done["Subject"]).startswith("[VYŘEŠENO] pump-17 E042: Přetlak #5")
    assert "VYŘEŠENO: E042 na zařízení pump-17" in _plain(done)


def test_german_gateway_mails_in_german(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """A German gateway: German subject tag and body, 01.12.2026-style dates, Vorkommen."""
    daemon(daemon_config(mail={"language": "de", "repeat_window": 3.0}))
    publish_many(
        mosquitto, [fault("pump-3", i, severity="warning", message="Überdruck") for i in (1, 2, 3)]
    )
    first, followup = relay.wait_for(2, timeout=20)
    alert = _parsed(first)
    assert alert["Subject"] == "[WARNUNG] pump-3 E042: Überdruck #1"
    text = _plain(alert)
    assert "Warnung E042 an pump-3" in text and "Schweregrad:  Warnung" in text
    assert "Gerätezeit:   18.11.2026 11:06 UTC" in text
    assert "E042 an pump-3: seit " in _plain(_parsed(followup))
    assert " 2 weitere Vorkommen." in _plain(_parsed(followup))


def test_ascii_subject_for_ticketing_systems(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """mail.ascii_subject: the Czech subject is transliterated to plain ASCII; the body stays
    Czech."""
    daemon(daemon_config(mail={"language": "cs", "ascii_subject": True}))
    publish_many(mosquitto, [fault("pump-1", 1, message="Přetlak čerpadla")])
    (mail,) = relay.wait_for(1, timeout=20)
    msg = _parsed(mail)
    assert msg["Subject"] == "[KRITICKA] pump-1 E042: Pretlak cerpadla #1"
    assert b"=?" not in mail.data.split(b"\r\n\r\n", 1)[0]
    assert "Kritická porucha E042 na zařízení pump-1" in _plain(msg)
