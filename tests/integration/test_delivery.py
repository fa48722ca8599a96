"""Submission guarantees against a real relay: TLS required, certificates verified, AUTH always,
retry until the relay's 250, and no recipient outside the allowlist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.errors import PermanentDeliveryError, TransientDeliveryError
from agent.settings import load_settings
from agent.submit import SmtpSubmitter, SubmitResult
from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, audit, eventually, fault

pytestmark = pytest.mark.integration


def _attempts(dm: object, outcome_prefix: str) -> list[dict[str, object]]:
    from tests.harness.daemon import Daemon

    assert isinstance(dm, Daemon)
    return [r for r in audit(dm) if str(r["outcome"]).startswith(outcome_prefix)]


def test_relay_down_then_back(daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay) -> None:
    """With the relay down alerts stay pending (attempts audited); when it is back they go out."""
    dm = daemon()
    relay.stop()
    publish_many(mosquitto, [fault("p1", 1), fault("p2", 1), fault("p3", 1)])
    eventually(lambda: _attempts(dm, "retry:connect"), what="a failed connect attempt")
    alerts = dm.alerts()
    assert [a["state"] for a in alerts] == ["pending"] * 3
    assert relay.mails == []
    relay.start()
    mails = relay.wait_for(3, timeout=20)
    alerts = dm.wait_for_alerts(all_settled(3))
    assert {a["message_id"] for a in alerts} == {m.message_id for m in mails}
    assert len(mails) == 3


def test_temporary_failure_then_success(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """451 twice, then 250: one mail arrives and it is marked sent only after the 250."""
    dm = daemon()
    relay.fail_data(2, code=451)
    publish_many(mosquitto, [fault("p1", 1)])
    (mail,) = relay.wait_for(1, timeout=20)
    (alert,) = dm.wait_for_alerts(all_settled(1))
    assert alert["state"] == "sent" and alert["message_id"] == mail.message_id
    outcomes = [(r["outcome"], r["smtp_code"]) for r in audit(dm) if r["event"] == "send_attempt"]
    assert outcomes == [("retry:smtp", 451), ("retry:smtp", 451), ("sent", 250)]
    # The rejected attempts carried the same Message-ID as the accepted one.
    assert {a.message_id for a in relay.attempts} == {mail.message_id}


def test_relay_without_starttls_gets_no_credentials_and_no_mail(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """A relay that offers AUTH but not STARTTLS sees no AUTH and no mail; it is a TLS failure."""
    with Relay(tmp_path / "plain", None, mode="plain-auth", users=relay.users) as bad:
        dm = daemon(daemon_config(smtp={"port": bad.port}))
        publish_many(mosquitto, [fault("p1", 1)])
        rows = eventually(lambda: _attempts(dm, "retry:tls"), what="a TLS failure in the audit")
        assert "STARTTLS" in str(rows[0]["detail"])
        assert bad.auth_attempts == [] and bad.mails == [] and bad.connections >= 1
        # Not even an AUTH line went out in the clear (it would carry the password).
        assert bad.cleartext and bad.cleartext_auth_commands == []
        assert all(b"MAIL FROM" not in data.upper() for data in bad.cleartext)
        assert dm.alerts()[0]["state"] == "pending"
        logged = [r for r in dm.log_records() if r.get("event") == "send_attempt"]
        assert logged and logged[0]["kind"] == "tls"


def test_untrusted_certificate_means_no_send(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """A relay certificate from a CA we do not trust: no AUTH, no mail, a TLS failure audited."""
    stranger = TestPKI.unrelated()
    with Relay(tmp_path / "wrongca", stranger, mode="starttls", users=relay.users) as wrong:
        # The daemon trusts the test CA (relay.ca_file), not the stranger's.
        dm = daemon(daemon_config(smtp={"port": wrong.port, "ca_file": str(relay.ca_file)}))
        publish_many(mosquitto, [fault("p1", 1)])
        rows = eventually(lambda: _attempts(dm, "retry:tls"), what="a TLS failure in the audit")
        assert "CERTIFICATE_VERIFY_FAILED" in str(rows[0]["detail"])
        assert wrong.auth_attempts == [] and wrong.mails == []


def test_certificate_for_another_host_name_means_no_send(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    pki: TestPKI,
) -> None:
    """A trusted certificate that names another host is refused: no AUTH, no mail."""
    with Relay(
        tmp_path / "othername",
        pki,
        mode="starttls",
        users=relay.users,
        cert_identities=("mail.example.com",),
    ) as other:
        dm = daemon(daemon_config(smtp={"host": "localhost", "port": other.port}))
        publish_many(mosquitto, [fault("p1", 1)])
        rows = eventually(lambda: _attempts(dm, "retry:tls"), what="a TLS failure in the audit")
        assert "match" in str(rows[0]["detail"]) or "mismatch" in str(rows[0]["detail"])
        assert other.auth_attempts == [] and other.mails == []


def test_wrong_password_keeps_alert_and_never_logs_password(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """Rejected credentials: the alert stays pending, the audit says auth, the log has no secret."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-right-password-123\n")
    dm = daemon(daemon_config(smtp={"password_file": str(wrong)}))
    publish_many(mosquitto, [fault("p1", 1)])
    rows = eventually(lambda: _attempts(dm, "retry:auth"), what="an auth failure in the audit")
    assert rows[0]["smtp_code"] == 535
    assert [a.success for a in relay.auth_attempts][:1] == [False]
    assert relay.mails == [] and dm.alerts()[0]["state"] == "pending"
    assert "not-the-right-password-123" not in dm.log_text()


def test_one_refused_recipient_does_not_stop_the_others(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """550 for one recipient: the other still gets the mail, and the refusal is audited."""
    config = daemon_config(
        routes=[
            {
                "topics": ["devices/+/fault"],
                "min_severity": "info",
                "to": ["ops@example.com", "gone@example.com"],
            }
        ]
    )
    relay.reject_rcpt("gone@example.com", code=550)
    dm = daemon(config)
    publish_many(mosquitto, [fault("p1", 1)])
    (mail,) = relay.wait_for(1)
    assert list(mail.rcpt_tos) == ["ops@example.com"]
    dm.wait_for_alerts(all_settled(1))
    sent = _attempts(dm, "sent")
    assert "gone@example.com 550" in str(sent[0]["detail"])


def test_whole_mail_refused_is_dead_with_reply(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """554 to DATA: the mail is dead (not retried), with the relay's reply recorded."""
    dm = daemon()
    relay.fail_data(1, code=554, text="5.7.1 Message rejected as spam")
    publish_many(mosquitto, [fault("p1", 1), fault("p1", 2)])
    relay.wait_for(1)
    alerts = dm.wait_for_alerts(all_settled(2))
    dead = [a for a in alerts if a["state"] == "dead"]
    assert len(dead) == 1 and "554" in dead[0]["reason"] and "spam" in dead[0]["reason"]
    assert [a["state"] for a in alerts].count("sent") == 1


def test_recipient_outside_allowlist_is_refused_at_startup(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """A route to a non-allowlisted address stops startup with the key and the fix."""
    config = daemon_config(
        routes=[
            {"topics": ["devices/+/fault"], "min_severity": "info", "to": ["someone@gmail.com"]}
        ]
    )
    dm = daemon(config, start=False)
    result = dm.cli("run")
    assert result.returncode == 2
    assert "routes[0].to" in result.stderr and "allowed_domains" in result.stderr


def test_queued_mail_to_a_no_longer_allowlisted_address_is_never_sent(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """Mail queued under an older config is checked again before RCPT TO and refused."""
    old = daemon_config(
        name="old.toml",
        policy={"allowed_domains": ["example.com", "partner.test"]},
        routes=[
            {"topics": ["devices/+/fault"], "min_severity": "info", "to": ["ops@partner.test"]}
        ],
    )
    relay.stop()  # keep the mail queued
    first = daemon(old)
    publish_many(mosquitto, [fault("p1", 1)])
    first.wait_for_alerts(lambda a: len(a) == 1)
    first.kill()
    relay.start()
    second = daemon(daemon_config(name="new.toml"))
    (alert,) = second.wait_for_alerts(all_settled(1))
    assert alert["state"] == "dead" and "outside" in alert["reason"]
    assert relay.mails == [] and relay.connections == 0
    refused = _attempts(second, "refused")
    assert refused and "ops@partner.test" in str(refused[0]["detail"])


def test_refusals_of_mail_from_and_rcpt_to_are_told_apart(
    daemon_config: DaemonConfigFactory, relay: Relay
) -> None:
    """The submitter's own MAIL FROM and RCPT TO (without aiosmtplib's address parse per mail)
    against the real relay: a 5xx to MAIL makes the mail dead, a 4xx to it keeps it for a
    retry, a refused recipient is reported alone, and the next mail on the same submitter
    goes out to the other recipient with the envelope sender as given."""
    settings = load_settings(daemon_config())
    sender = settings.smtp.sender_address
    message = b"Subject: t\r\nMessage-ID: <t@example.com>\r\n\r\nbody\r\n"

    async def submit_all() -> SubmitResult:
        submitter = SmtpSubmitter.from_settings(settings)
        try:
            relay.reply_at("mail", b"550 5.7.1 Sender not allowed")
            with pytest.raises(PermanentDeliveryError) as dead:
                await submitter.submit(sender, ["ops@example.com"], message)
            assert (dead.value.step, dead.value.code) == ("mail", 550)
            relay.reply_at("mail", b"451 4.3.0 Try again later")
            with pytest.raises(TransientDeliveryError) as later:
                await submitter.submit(sender, ["ops@example.com"], message)
            assert (later.value.step, later.value.code) == ("mail", 451)
            relay.reject_rcpt("nobody@example.com")
            return await submitter.submit(
                sender, ["nobody@example.com", "ops@example.com"], message
            )
        finally:
            await submitter.close()
            # A closed transport lets go of its socket in a callback of the loop: run it
            # before asyncio.run closes the loop, or the socket is left for the GC to warn.
            await asyncio.sleep(0.2)

    result = asyncio.run(submit_all())
    assert result.code == 250 and list(result.refused) == ["nobody@example.com"]
    assert result.refused["nobody@example.com"][0] == 550
    (mail,) = relay.mails
    assert mail.mail_from == sender and list(mail.rcpt_tos) == ["ops@example.com"]
