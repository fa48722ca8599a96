"""The validated configuration as plain objects, for the daemon, which never imports pydantic.

`faultmail run` validates the configuration with pydantic (agent.settings.loading), copies
the result into these classes (plain_copy), writes the copy to an anonymous memory file and
replaces itself (exec, same PID) with the daemon, which reads the copy back
(read_handed_over). pydantic and pydantic-settings take about 14 MB that the long-running
daemon would otherwise carry for nothing (issue 18).

Each copy holds its model's fields under the same names, and the private values (the secrets
read at load time); its methods come from the same classes as the model's
(agent.settings.behaviour). The daemon's code is type-checked against the models;
tests/unit/test_settings_plain.py checks that a copy answers every field and method alike.
Nothing here imports pydantic.
"""

from __future__ import annotations

import os
import pickle
from enum import Enum
from typing import Any

from agent.settings.behaviour import (
    ClusterBehaviour,
    MaintenanceBehaviour,
    MqttBehaviour,
    OAuthBehaviour,
    SettingsBehaviour,
    SmtpBehaviour,
)

# The environment variable naming the descriptor the daemon reads its configuration from. Not
# FAULTMAIL_*: those are configuration overrides.
HANDOVER_ENV = "_FAULTMAIL_SETTINGS_FD"


class Plain:
    """A validated section's values as read-only attributes."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only ({name})")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({shown})"


class PlainMqtt(MqttBehaviour, Plain):
    pass


class PlainOAuth(OAuthBehaviour, Plain):
    pass


class PlainSmtp(SmtpBehaviour, Plain):
    pass


class PlainCluster(ClusterBehaviour, Plain):
    pass


class PlainMaintenance(MaintenanceBehaviour, Plain):
    pass


class PlainSettings(SettingsBehaviour, Plain):
    pass


# The copy's class for a model class, by the behaviour they share (anything else: Plain).
KINDS: tuple[tuple[type, type[Plain]], ...] = (
    (SettingsBehaviour, PlainSettings),
    (MqttBehaviour, PlainMqtt),
    (OAuthBehaviour, PlainOAuth),
    (SmtpBehaviour, PlainSmtp),
    (ClusterBehaviour, PlainCluster),
    (MaintenanceBehaviour, PlainMaintenance),
)


def plain_kind(model_class: type) -> type[Plain]:
    return next((plain for shared, plain in KINDS if issubclass(model_class, shared)), Plain)


def hand_over(settings: Plain) -> int:
    """The copy in an anonymous memory file, as an inheritable descriptor at offset 0."""
    fd = os.memfd_create("faultmail-settings", 0)
    with os.fdopen(os.dup(fd), "wb") as out:
        pickle.dump(settings, out, protocol=pickle.HIGHEST_PROTOCOL)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


# What a hand-over may rebuild: the copies, their secrets, and the value types settings hold.
# Anything else (a function to call, another class) is refused before it runs: the descriptor
# is named in the environment, and whoever sets that for a faultmail process must not get
# code run by it.
_COPIES: tuple[type[Plain], ...] = (Plain, *(plain for _, plain in KINDS))
_REBUILDABLE = {(__name__, kind.__name__) for kind in _COPIES} | {
    ("agent.settings.behaviour", "Secret"),
    ("agent.models", "Severity"),
    ("pathlib", "PosixPath"),
    ("datetime", "date"),
}


def _member(enum_class: object, name: str) -> Enum:
    """getattr(class, name), which is how an enum member is pickled: for those members only."""
    if not (
        isinstance(enum_class, type)
        and issubclass(enum_class, Enum)
        and (enum_class.__module__, enum_class.__name__) in _REBUILDABLE
        and name in enum_class.__members__
    ):
        raise pickle.UnpicklingError(f"the hand-over may not rebuild {enum_class!r}.{name}")
    return enum_class[name]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _member
        if (module, name) not in _REBUILDABLE:
            raise pickle.UnpicklingError(f"the hand-over may not rebuild {module}.{name}")
        return super().find_class(module, name)


def read_handed_over(fd: int) -> PlainSettings:
    """The copy that `faultmail run` handed over on fd (closed after reading)."""
    with os.fdopen(fd, "rb") as source:
        settings = _Unpickler(source).load()
    if not isinstance(settings, PlainSettings):
        raise TypeError(f"the handed-over configuration is a {type(settings).__name__}")
    return settings
