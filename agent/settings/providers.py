"""Mail provider presets (smtp.provider) and the sending limits in effect.

Hosted relays limit what one mailbox may send; going over locks the account (Microsoft 365
blocks a mailbox over its recipient rate limit for up to 24 hours), which would stop critical
alerts too. A preset fills in the provider's published limits; every value can still be set by
hand (smtp.connections, delivery.max_mails_per_minute, delivery.max_recipients_per_day), and
a key set by hand wins over the preset.

Figures (0: no limit of ours):
- Microsoft 365 (Exchange Online sending limits): 30 messages a minute per mailbox, 10,000
  recipients a day, 3 concurrent SMTP connections per mailbox.
- Google Workspace (Gmail sending limits): 10,000 recipients per rolling 24 hours; no
  published per-minute or connection figure, so ours stay as for "generic".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent.settings.connections import SmtpSettings
    from agent.settings.sections import DeliverySettings

Provider = Literal["generic", "microsoft365", "google"]

# The daily recipient budget counts over this rolling window (the providers count 24 hours).
BUDGET_WINDOW_S = 24 * 3600.0
# smtp.connections when neither a preset nor the configuration says otherwise.
DEFAULT_CONNECTIONS = 2


@dataclass(frozen=True, slots=True)
class Preset:
    per_minute: int
    daily_recipients: int
    connections: int


PRESETS: dict[str, Preset] = {
    "generic": Preset(per_minute=0, daily_recipients=0, connections=DEFAULT_CONNECTIONS),
    "microsoft365": Preset(per_minute=30, daily_recipients=10_000, connections=3),
    "google": Preset(per_minute=0, daily_recipients=10_000, connections=DEFAULT_CONNECTIONS),
}

# Relay host names that give a provider away (doctor: "provider = generic" against them).
HOST_SUFFIXES: dict[str, tuple[str, ...]] = {
    "microsoft365": ("office365.com", "outlook.com", "protection.outlook.com"),
    "google": ("gmail.com", "google.com", "googlemail.com"),
}


def provider_of_host(host: str) -> str | None:
    """The provider a relay host name belongs to, if it tells."""
    name = host.lower().rstrip(".")
    for provider, suffixes in HOST_SUFFIXES.items():
        if any(name == s or name.endswith("." + s) for s in suffixes):
            return provider
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    """The sending limits in effect, each with where it came from (for `doctor`)."""

    provider: str
    per_minute: int  # mails a minute; 0: no cap
    daily_recipients: int  # recipients per rolling 24 h; 0: no budget
    connections: int
    sources: dict[str, str]

    def describe(self) -> str:
        def show(name: str, value: int, unit: str) -> str:
            text = f"{value:,} {unit}" if value else f"no {unit} limit"
            return f"{text} ({self.sources[name]})"

        return ", ".join(
            [
                show("per_minute", self.per_minute, "mails/minute"),
                show("daily_recipients", self.daily_recipients, "recipients/24 h"),
                show("connections", self.connections, "connections"),
            ]
        )


def effective_limits(smtp: SmtpSettings, delivery: DeliverySettings) -> Limits:
    """What dispatch enforces: explicit keys, else the preset of smtp.provider."""
    preset = PRESETS[smtp.provider]
    label = f"{smtp.provider} preset"
    sources: dict[str, str] = {}

    def pick(name: str, key: str, value: int | None, default: int) -> int:
        if value is None:
            sources[name] = label
            return default
        sources[name] = key
        return value

    per_minute = pick(
        "per_minute",
        "delivery.max_mails_per_minute",
        delivery.max_mails_per_minute,
        preset.per_minute,
    )
    daily = pick(
        "daily_recipients",
        "delivery.max_recipients_per_day",
        delivery.max_recipients_per_day,
        preset.daily_recipients,
    )
    # smtp.connections is filled in from the preset at validation time (the submitter reads
    # it); the same figure as the preset's is reported as the preset's.
    sources["connections"] = label if smtp.connections == preset.connections else "smtp.connections"
    return Limits(smtp.provider, per_minute, daily, smtp.connections, sources)
