"""Configuration: a TOML file, FAULTMAIL_* environment overrides and secret files.

This is the only package that reads configuration. `load_settings` validates everything once
at startup and returns an immutable Settings that the composition root passes down; the daemon
runs on its plain copy (`plain`), without pydantic.

    validation      the base every section derives from (extra="forbid"), shared field checks,
                    format strings, cross-section rules
    secret_files    secret paths (systemd credentials directory), reading them, permissions
    behaviour       what sections do besides holding values (passwords, sender, allowlist),
                    shared by the models and their plain copies; Secret
    connections     [mqtt], [smtp], [smtp.oauth]
    sections        every other section, [cluster] (running beside other gateways) included
    loading         the root Settings model, FAULTMAIL_* overrides, load_settings(), plain_copy()
    plain           the plain copies the daemon runs on, handed over across exec

Names are imported on first use (PEP 562), so that the daemon can import the pydantic-free
modules of this package (plain, behaviour, providers) without loading the models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each name of the package lives; imported on first use (see above).
_HOMES = {
    "agent.policy": ("Allowlist", "check_address"),
    "agent.settings.connections": ("MqttSettings", "OAuthSettings", "SmtpSettings"),
    "agent.settings.loading": ("DEFAULT_CONFIG_PATH", "Settings", "load_settings"),
    "agent.settings.secret_files": ("resolve_secret_path",),
    "agent.settings.sections": (
        "ClusterSettings",
        "DeliverySettings",
        "DkimSettings",
        "FloodSettings",
        "GatewaySettings",
        "HealthSettings",
        "LogSettings",
        "MailSettings",
        "OutboxSettings",
        "PolicySettings",
        "Route",
    ),
    "agent.settings.validation": ("FORMAT_MAX_WIDTH", "check_format"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:
    from agent.policy import Allowlist as Allowlist
    from agent.policy import check_address as check_address
    from agent.settings.connections import MqttSettings as MqttSettings
    from agent.settings.connections import OAuthSettings as OAuthSettings
    from agent.settings.connections import SmtpSettings as SmtpSettings
    from agent.settings.loading import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
    from agent.settings.loading import Settings as Settings
    from agent.settings.loading import load_settings as load_settings
    from agent.settings.secret_files import resolve_secret_path as resolve_secret_path
    from agent.settings.sections import ClusterSettings as ClusterSettings
    from agent.settings.sections import DeliverySettings as DeliverySettings
    from agent.settings.sections import DkimSettings as DkimSettings
    from agent.settings.sections import FloodSettings as FloodSettings
    from agent.settings.sections import GatewaySettings as GatewaySettings
    from agent.settings.sections import HealthSettings as HealthSettings
    from agent.settings.sections import LogSettings as LogSettings
    from agent.settings.sections import MailSettings as MailSettings
    from agent.settings.sections import OutboxSettings as OutboxSettings
    from agent.settings.sections import PolicySettings as PolicySettings
    from agent.settings.sections import Route as Route
    from agent.settings.validation import FORMAT_MAX_WIDTH as FORMAT_MAX_WIDTH
    from agent.settings.validation import check_format as check_format


def __getattr__(name: str) -> Any:
    home = _HOME_OF.get(name)
    if home is None:
        raise AttributeError(f"module 'agent.settings' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
