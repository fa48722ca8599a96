"""Provider presets and the limits in effect, the gate's daily budget and login alarm, which
replies count as refused credentials, the outbox's recipient count, and the doctor's
provider lines."""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.dispatch.gate import RelayGate, is_auth_refusal
from agent.doctor.provider import provider_checks
from agent.doctor.result import Status
from agent.errors import PermanentDeliveryError, TransientDeliveryError
from agent.outbox import AuditEntry, Outbox
from agent.outbox.limits import auth_alarm, recipients_sent_since, set_auth_alarm
from agent.planner import plan_mails
from agent.settings import DeliverySettings, Settings, load_settings
from agent.settings.providers import BUDGET_WINDOW_S, effective_limits, provider_of_host
from tests.fakes import FakeClock
from tests.unit.conftest import base_config, pending_decision

Writer = Callable[[dict[str, Any]], Path]


def _settings(tmp_path: Path, write_config: Writer, **smtp: Any) -> Settings:
    doc = base_config(tmp_path)
    delivery = smtp.pop("delivery", None)
    doc["smtp"].update(smtp)
    if delivery:
        doc["delivery"] = delivery
    return load_settings(write_config(doc))


def test_microsoft365_preset_fills_in_every_limit(tmp_path: Path, write_config: Writer) -> None:
    """provider = "microsoft365": 30 mails a minute, 10,000 recipients a day, 3 connections."""
    s = _settings(tmp_path, write_config, provider="microsoft365")
    limits = effective_limits(s.smtp, s.delivery)
    assert (limits.per_minute, limits.daily_recipients, limits.connections) == (30, 10_000, 3)
    assert s.smtp.connections == 3  # what the submitter's connection slots read
    assert set(limits.sources.values()) == {"microsoft365 preset"}


def test_keys_set_by_hand_win_over_the_preset(tmp_path: Path, write_config: Writer) -> None:
    """Explicit smtp.connections and delivery limits override the preset, and say so."""
    s = _settings(
        tmp_path,
        write_config,
        provider="microsoft365",
        connections=1,
        delivery={"max_mails_per_minute": 10, "max_recipients_per_day": 500},
    )
    limits = effective_limits(s.smtp, s.delivery)
    assert (limits.per_minute, limits.daily_recipients, limits.connections) == (10, 500, 1)
    assert limits.sources["per_minute"] == "delivery.max_mails_per_minute"
    assert limits.sources["connections"] == "smtp.connections"


def test_generic_and_google_presets(tmp_path: Path, write_config: Writer) -> None:
    """generic sets no limit of its own (2 connections); google a 10,000-recipient day."""
    generic = _settings(tmp_path, write_config)
    limits = effective_limits(generic.smtp, generic.delivery)
    assert (limits.per_minute, limits.daily_recipients, limits.connections) == (0, 0, 2)
    google = _settings(tmp_path, write_config, provider="google")
    assert effective_limits(google.smtp, google.delivery).daily_recipients == 10_000


def test_relay_host_names_give_the_provider_away() -> None:
    """smtp.office365.com is Microsoft 365, smtp.gmail.com Google; others are unknown."""
    assert provider_of_host("smtp.office365.com") == "microsoft365"
    assert provider_of_host("smtp-relay.gmail.com.") == "google"
    assert provider_of_host("mail.example.com") is None


def test_refused_credentials_are_recognised_wherever_they_come() -> None:
    """535 at AUTH, 530 5.7.57 at MAIL FROM and 5.7.139 are refused logins; a 550 for a
    mailbox and a token endpoint's trouble are not."""
    assert is_auth_refusal(TransientDeliveryError("auth", "535 5.7.8 bad", code=535, kind="auth"))
    assert is_auth_refusal(
        PermanentDeliveryError("mail", "5.7.57 Client not authenticated", code=530)
    )
    assert is_auth_refusal(PermanentDeliveryError("mail", "5.7.139 basic auth off", code=550))
    assert not is_auth_refusal(PermanentDeliveryError("rcpt", "5.1.1 no such user", code=550))
    assert not is_auth_refusal(TransientDeliveryError("oauth", "endpoint down", kind="auth"))


def test_login_alarm_pauses_for_the_interval_and_starts_once() -> None:
    """The first refusal starts the alarm, a second does not; no probe; a success ends it."""
    clock = FakeClock()
    gate = RelayGate(DeliverySettings(), clock, random.Random(1))
    assert gate.auth_failed(300.0)
    assert gate.paused and not gate.probing and gate.pause_left(clock()) == 300.0
    assert not gate.auth_failed(300.0)
    assert gate.auth_ok() and not gate.auth_failing
    assert not gate.auth_ok()


def test_daily_budget_counts_recipients_and_frees_with_the_oldest_send() -> None:
    """Budget 5 with 3 used: a 2-recipient mail goes, the next waits until the oldest send
    leaves the 24 h window; a new count after that lets mail go again."""
    gate = RelayGate(DeliverySettings(), FakeClock(), random.Random(1), daily_recipients=5)
    gate.count_budget(3, oldest=1000.0)
    assert gate.take_slot(2)
    assert gate.budget_wait(2000.0) is None
    assert not gate.take_slot(1)
    assert gate.budget_wait(2000.0) == 1000.0 + BUDGET_WINDOW_S - 2000.0
    gate.count_budget(0, oldest=None)
    assert gate.take_slot(1) and gate.budget_wait(2000.0) is None


def test_per_minute_cap_from_the_preset_overrides_delivery() -> None:
    """The gate enforces the effective per-minute figure it is given."""
    gate = RelayGate(DeliverySettings(), FakeClock(), random.Random(1), per_minute=2)
    assert gate.take_slot() and gate.take_slot() and not gate.take_slot()


def test_outbox_counts_accepted_recipients_since_and_keeps_the_alarm(outbox: Outbox) -> None:
    """Recipients of mails sent in the window are counted from the outbox (so a restart keeps
    them); the login alarm row is written, read and cleared."""
    assert recipients_sent_since(outbox, 0.0) == (0, None)
    outbox.ingest([pending_decision(1, uid="a", at=10.0), pending_decision(1, uid="b", at=10.0)])
    assert plan_mails(outbox, 10.0, "example.com", "gw") == 2
    first, second = outbox.claim_due(11.0, 10)
    outbox.mark_sent(first, 100.0, AuditEntry(event="send_attempt", outcome="sent"))
    outbox.mark_sent(second, 200.0, AuditEntry(event="send_attempt", outcome="sent"))
    assert recipients_sent_since(outbox, 50.0) == (2, 100.0)
    assert recipients_sent_since(outbox, 150.0) == (1, 200.0)
    set_auth_alarm(outbox, {"since": 5.0, "relay": "r:587", "reply": "535 no"})
    assert auth_alarm(outbox) == {"since": 5.0, "relay": "r:587", "reply": "535 no"}
    set_auth_alarm(outbox, None)
    assert auth_alarm(outbox) is None


def _by_name(settings: Settings, today: datetime.date) -> dict[str, Any]:
    return {c.name: c for c in provider_checks(settings, today)}


def test_doctor_prints_the_limits_and_warns_on_password_auth_at_microsoft(
    tmp_path: Path, write_config: Writer
) -> None:
    """doctor shows the effective limits; password AUTH at smtp.office365.com is a WARN, as
    is a generic provider there and a cap set above the preset."""
    s = _settings(tmp_path, write_config, host="smtp.office365.com")
    checks = _by_name(s, datetime.date(2026, 12, 1))
    assert checks["provider limits"].status is Status.OK
    assert "generic preset" in checks["provider limits"].detail
    assert checks["provider"].status is Status.WARN
    auth = checks["provider AUTH"]
    assert auth.status is Status.WARN and "xoauth2" in auth.fix
    m365 = _settings(
        tmp_path,
        write_config,
        host="smtp.office365.com",
        provider="microsoft365",
        delivery={"max_mails_per_minute": 0},
    )
    checks = _by_name(m365, datetime.date(2026, 12, 1))
    assert "provider" not in checks
    limits = checks["provider limits"]
    assert limits.status is Status.WARN and "delivery.max_mails_per_minute = 0" in limits.detail


def test_doctor_warns_before_the_oauth_client_secret_expires(
    tmp_path: Path, write_config: Writer
) -> None:
    """smtp.oauth.client_secret_expires: OK far ahead, WARN within 30 days, FAIL after."""
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    doc = base_config(tmp_path)
    doc["smtp"]["auth"] = "xoauth2"
    doc["smtp"]["oauth"] = {
        "token_url": "https://login.example.com/token",
        "client_id": "app",
        "client_secret_file": str(secret),
        "client_secret_expires": "2027-01-15",
    }
    s = load_settings(write_config(doc))
    name = "OAuth client secret"
    assert _by_name(s, datetime.date(2026, 11, 1))[name].status is Status.OK
    soon = _by_name(s, datetime.date(2027, 1, 1))[name]
    assert soon.status is Status.WARN and "in 14 days" in soon.detail
    assert _by_name(s, datetime.date(2027, 2, 1))[name].status is Status.FAIL
