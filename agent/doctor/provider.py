"""The provider checks, from the configuration alone: the sending limits in effect, password
AUTH against Microsoft 365, and the OAuth client secret's expiry where the configuration says.

No network: the relay checks (agent.doctor.relay) log in; these say what the daemon will
enforce and what will stop working on a known date.
"""

from __future__ import annotations

import datetime

from agent.doctor.result import Check, fail, ok, warn
from agent.settings import Settings
from agent.settings.providers import PRESETS, effective_limits, provider_of_host

# Microsoft 365 turns password SMTP AUTH (basic authentication) off by default from then.
M365_BASIC_AUTH_OFF = datetime.date(2026, 12, 31)
# Warn this long before an OAuth client secret expires.
SECRET_WARN_DAYS = 30


def provider_checks(settings: Settings, today: datetime.date | None = None) -> list[Check]:
    """provider limits; provider (when the host gives it away); provider AUTH; OAuth client
    secret (where its expiry is configured)."""
    today = today or datetime.datetime.now(datetime.UTC).date()
    s = settings.smtp
    checks = [_limits_check(settings)]
    detected = provider_of_host(s.host)
    if detected is not None and detected != s.provider:
        preset = PRESETS[detected]
        checks.append(
            warn(
                "provider",
                f"{s.host} is {detected}, but smtp.provider = {s.provider!r}: its limits "
                f"({preset.per_minute or 'no'} mails/minute, {preset.daily_recipients:,} "
                f"recipients/24 h, {preset.connections} connections) are not applied",
                f'set smtp.provider = "{detected}" (keys set by hand still win)',
            )
        )
    microsoft = detected == "microsoft365" or s.provider == "microsoft365"
    if microsoft and s.auth == "password":
        when = "since" if today >= M365_BASIC_AUTH_OFF else "from"
        checks.append(
            warn(
                "provider AUTH",
                f'smtp.auth = "password" against Microsoft 365: password SMTP AUTH is off by '
                f"default {when} {M365_BASIC_AUTH_OFF:%d %B %Y} (the relay answers 535 5.7.139)",
                'use OAuth: smtp.auth = "xoauth2" with an [smtp.oauth] table (token_url, '
                "tenant_id, client_id, client_secret_file); see README, Delivery policy",
            )
        )
    expiry = _secret_check(settings, today)
    if expiry is not None:
        checks.append(expiry)
    return checks


def _limits_check(settings: Settings) -> Check:
    s = settings.smtp
    limits = effective_limits(s, settings.delivery)
    detail = f"{limits.provider}: {limits.describe()}"
    preset = PRESETS[s.provider]
    laxer = [
        f"{key} = {value}"
        for key, value, ceiling in (
            ("delivery.max_mails_per_minute", limits.per_minute, preset.per_minute),
            ("delivery.max_recipients_per_day", limits.daily_recipients, preset.daily_recipients),
            ("smtp.connections", limits.connections, preset.connections),
        )
        if ceiling and (value == 0 or value > ceiling)
    ]
    if laxer:
        return warn(
            "provider limits",
            f"{detail}; {', '.join(laxer)} is above what {s.provider} allows, which locks "
            "the mailbox (for up to a day) when reached",
            "remove those keys to use the preset, or set them at or below it",
        )
    return ok("provider limits", detail)


def _secret_check(settings: Settings, today: datetime.date) -> Check | None:
    oauth = settings.smtp.oauth
    if settings.smtp.auth != "xoauth2" or oauth is None or not oauth.token_url:
        return None
    expires = oauth.client_secret_expires
    if expires is None:
        return None
    left = (expires - today).days
    fix = (
        "create a new client secret for the app registration (Entra ID: Certificates & "
        "secrets), put it in smtp.oauth.client_secret_file and set "
        "smtp.oauth.client_secret_expires to its expiry date"
    )
    if left < 0:
        return fail(
            "OAuth client secret",
            f"expired on {expires:%Y-%m-%d}: no token, no mail",
            fix,
        )
    if left <= SECRET_WARN_DAYS:
        return warn(
            "OAuth client secret",
            f"expires on {expires:%Y-%m-%d}, in {left} day{'s' if left != 1 else ''}: then "
            "no token and no mail",
            fix,
        )
    return ok("OAuth client secret", f"valid until {expires:%Y-%m-%d} ({left} days)")
