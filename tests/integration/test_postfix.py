"""The real daemon against a real relay: Debian's Postfix as a strict submission service
(STARTTLS only, Cyrus SASL, bare LF refused, a size limit), the mail read back from the Maildir
Postfix delivered it to, where both DKIM signatures must still verify."""

from __future__ import annotations

import json
import re
import smtplib
import ssl
from pathlib import Path
from typing import Any

import dkim
import pytest

from agent.signing import GeneratedKey
from tests.conftest import Credentials, DaemonConfigFactory, DaemonFactory
from tests.harness.dns import dkim_txt_lookup
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.postfix import DeliveredMail, Postfix
from tests.harness.publisher import publish_many
from tests.integration.conftest import DOMAIN, ED_SELECTOR, SELECTOR, record
from tests.integration.support import all_settled, fault

pytestmark = pytest.mark.integration

# Text that makes compose encode: non-ASCII in every part, and a message at parse's 1000-char
# limit, far beyond RFC 5322's 78-character line recommendation.
EHLO_NAME = "gw1.example.com"
LONG_UTF8 = ("Überdruck im Kreislauf 2 — Ventil schließt nicht, 温度 ↑ " * 20)[:1000]


def smtp_table(postfix: Postfix) -> dict[str, Any]:
    """[smtp] keys that point the daemon at postfix (STARTTLS, its CA, host name checked),
    greeting with a fully qualified name as the documented install path sets one."""
    return {
        "host": "localhost",
        "port": postfix.port,
        "security": "starttls",
        "ca_file": str(postfix.ca_file),
        "ehlo_name": EHLO_NAME,
    }


def dkim_table(keys: tuple[GeneratedKey, GeneratedKey]) -> dict[str, Any]:
    """[dkim] with the RSA and the Ed25519 key."""
    rsa_key, ed_key = keys
    return {
        "domain": DOMAIN,
        "selector": SELECTOR,
        "private_key_file": str(rsa_key.path),
        "ed25519_selector": ED_SELECTOR,
        "ed25519_key_file": str(ed_key.path),
    }


def signature_algorithms(mail: DeliveredMail) -> list[str]:
    """The a= tag of each DKIM-Signature header, in order."""
    headers = mail.message.get_all("DKIM-Signature") or []
    return [m.group(1) for h in headers if (m := re.search(r"\ba=([\w-]+)", str(h)))]


def test_mail_through_postfix_verifies_both_dkim_signatures(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    postfix: Postfix,
    dkim_keys: tuple[GeneratedKey, GeneratedKey],
) -> None:
    """Published faults become mails that Postfix accepts over STARTTLS after a SASL login,
    and in its Maildir both signatures (rsa-sha256, ed25519-sha256) verify."""
    dm = daemon(daemon_config(smtp=smtp_table(postfix), extra={"dkim": dkim_table(dkim_keys)}))
    long_fault = {
        "code": "E042",
        "severity": "critical",
        "message": LONG_UTF8,
        "seq": 2,
        "details": {f"Sensor {i} — Temperatur": "98,6 °C " * 32 for i in range(4)},
    }
    publish_many(
        mosquitto,
        [
            fault("pump-1", 1, severity="error"),
            ("devices/valve-2/fault", json.dumps(long_fault, ensure_ascii=False).encode()),
        ],
    )
    mails = postfix.wait_for(2)
    alerts = dm.wait_for_alerts(all_settled(2))
    assert {a["state"] for a in alerts} == {"sent"}, alerts
    assert {a["message_id"] for a in alerts} == {m.message["Message-ID"] for m in mails}

    records = dkim_txt_lookup({k.dns_name: record(k) for k in dkim_keys})
    for mail in mails:
        received = str(mail.message["Received"])
        assert received.startswith(f"from {EHLO_NAME} (localhost [127.0.0.1])"), received
        assert "with ESMTPSA" in received and "(Authenticated sender: gw@example.com)" in received
        assert sorted(signature_algorithms(mail)) == ["ed25519-sha256", "rsa-sha256"]
        verifier = dkim.DKIM(mail.wire)
        assert verifier.verify(idx=0, dnsfunc=records), mail.stored.decode()
        assert verifier.verify(idx=1, dnsfunc=records), mail.stored.decode()
    valve = next(m for m in mails if m.message["X-Faultmail-Device"] == "valve-2")
    body = valve.message.get_body(("plain",))
    assert body is not None and LONG_UTF8 in " ".join(body.get_content().split("\n"))
    # The check is not vacuous: one changed byte in the body fails it.
    tampered = valve.wire.replace(b"=C3=9Cberdruck", b"=C3=9Cberdrucx", 1)
    assert tampered != valve.wire and not dkim.DKIM(tampered).verify(idx=1, dnsfunc=records)
    log = postfix.log_text()
    assert "sasl_method=" in log and "bare <LF>" not in log


def _submission(postfix: Postfix, pki: TestPKI, ehlo: str = EHLO_NAME) -> smtplib.SMTP:
    """A plain smtplib client connected to postfix, after EHLO and STARTTLS."""
    client = smtplib.SMTP(postfix.host, postfix.port, local_hostname=ehlo, timeout=10)
    client.starttls(context=_context(pki))
    client.ehlo(ehlo)
    return client


def _context(pki: TestPKI) -> ssl.SSLContext:
    context = pki.client_ssl_context()
    context.check_hostname = False  # connected by address; the daemon's test checks names
    return context


def test_postfix_is_as_strict_as_configured(
    postfix: Postfix, pki: TestPKI, relay_credentials: Credentials
) -> None:
    """The instance the daemon passed is strict: no AUTH or mail before STARTTLS, no mail
    without login, the sender must be the login, a "localhost" greeting, bare LF and oversized
    mail are refused."""
    user, password = relay_credentials.username, relay_credentials.password
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname=EHLO_NAME) as clear:
        clear.ehlo()
        assert clear.has_extn("starttls") and not clear.has_extn("auth")
        code, reply = clear.mail(user)
        assert code == 530 and b"STARTTLS" in reply

    with _submission(postfix, pki) as anonymous:
        assert anonymous.has_extn("auth")
        anonymous.mail(user)
        code, _ = anonymous.rcpt("ops@example.com")
        assert code == 554
        anonymous.rset()
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            anonymous.login(user, password + "x")
        assert refused.value.smtp_code == 535

    with _submission(postfix, pki, ehlo="localhost") as client:
        client.login(user, password)
        client.mail(user)
        code, reply = client.rcpt("ops@example.com")
        assert code == 504 and b"need fully-qualified hostname" in reply

    with _submission(postfix, pki) as client:
        client.login(user, password)
        client.mail("someone-else@example.com")
        code, reply = client.rcpt("ops@example.com")
        assert code == 553 and b"not owned by user" in reply
        client.rset()

        code, reply = client.mail(user, [f"SIZE={postfix.message_size_limit + 1}"])
        assert code == 552 and b"size exceeds" in reply

        client.rset()  # Postfix 3.7 keeps the refused SIZE= for this session until RSET
        assert client.mail(user)[0] == 250 and client.rcpt("ops@example.com")[0] == 250
        # smtplib's data() would turn every LF into CRLF: write the bytes ourselves.
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: smuggled\r\n\r\nfirst line\nbare LF\r\n.\r\n")
        code, reply = client.getreply()
        assert code == 550 and b"bare <LF>" in reply

    with _submission(postfix, pki) as client:
        client.login(user, password)
        # Without SIZE= in MAIL FROM, the limit still holds at the end of DATA.
        lines = postfix.message_size_limit // 78 + 100
        assert client.mail(user)[0] == 250 and client.rcpt("ops@example.com")[0] == 250
        code, reply = client.data(b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * lines)
        assert code == 552 and b"5.3.4" in reply and b"too big" in reply
    assert postfix.maildir() == []


def test_mail_over_the_relays_size_limit_is_dead_with_its_reply(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    pki: TestPKI,
    relay_credentials: Credentials,
) -> None:
    """A relay whose message_size_limit the mail exceeds refuses it with 552 5.3.4: the mail
    is dead at once (a permanent reply, no retry), with Postfix's reply as the reason."""
    users = {relay_credentials.username: relay_credentials.password}
    with Postfix(pki, users, message_size_limit=2000, log_copy=tmp_path / "maillog") as small:
        dm = daemon(daemon_config(smtp=smtp_table(small)))
        publish_many(mosquitto, [fault("pump-1", 1)])
        (alert,) = dm.wait_for_alerts(all_settled(1))
        assert alert["state"] == "dead", alert
        assert "552" in alert["reason"] and "5.3.4" in alert["reason"], alert
        assert small.maildir() == []
    attempts = [r for r in dm.log_records() if r.get("event") == "send_attempt"]
    assert len(attempts) == 1, attempts
