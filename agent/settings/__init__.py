"""Configuration: a TOML file, FAULTMAIL_* environment overrides and secret files.

This is the only package that reads configuration. `load_settings` validates everything once
at startup and returns an immutable Settings that the composition root passes down.

    validation      the base every section derives from (extra="forbid"), shared field checks,
                    format strings, cross-section rules
    secret_files    secret paths (systemd credentials directory), reading them, permissions
    connections     [mqtt], [smtp], [smtp.oauth]
    sections        every other section, [cluster] (running beside other gateways) included
    loading         the root Settings model, FAULTMAIL_* overrides, load_settings()
"""

from agent.policy import Allowlist, check_address
from agent.settings.connections import MqttSettings, OAuthSettings, SmtpSettings
from agent.settings.loading import DEFAULT_CONFIG_PATH, Settings, load_settings
from agent.settings.secret_files import resolve_secret_path
from agent.settings.sections import (
    ClusterSettings,
    DeliverySettings,
    DkimSettings,
    FloodSettings,
    GatewaySettings,
    HealthSettings,
    LogSettings,
    MailSettings,
    OutboxSettings,
    PolicySettings,
    Route,
)
from agent.settings.validation import FORMAT_MAX_WIDTH, check_format

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "FORMAT_MAX_WIDTH",
    "Allowlist",
    "ClusterSettings",
    "DeliverySettings",
    "DkimSettings",
    "FloodSettings",
    "GatewaySettings",
    "HealthSettings",
    "LogSettings",
    "MailSettings",
    "MqttSettings",
    "OAuthSettings",
    "OutboxSettings",
    "PolicySettings",
    "Route",
    "Settings",
    "SmtpSettings",
    "check_address",
    "check_format",
    "load_settings",
    "resolve_secret_path",
]
