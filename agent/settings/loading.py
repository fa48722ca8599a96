"""Loading: the TOML file, FAULTMAIL_* environment overrides and secret files, merged and
validated into the root Settings model; every problem reported with the key it belongs to.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from agent.errors import ConfigError
from agent.sanitize import valid_text
from agent.settings.behaviour import SettingsBehaviour
from agent.settings.connections import MqttSettings, OAuthSettings, SmtpSettings
from agent.settings.maintenance import MaintenanceWindow
from agent.settings.plain import plain_kind
from agent.settings.secret_files import resolve_secret_path, unread_secrets
from agent.settings.sections import (
    RESERVED_INSTANCES,
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
    SilenceSettings,
    member_name_problem,
)
from agent.settings.validation import (
    KeyedError,
    check_dkim_aligned,
    check_recipients_allowed,
    key_name,
)

DEFAULT_CONFIG_PATH = Path("/etc/faultmail/faultmail.toml")
# The documented example, where it exists: in a source tree, the pristine copy the Debian
# package ships, then the package's conffile (which the technician may have edited).
EXAMPLE_CONFIG_PATHS = (
    Path(__file__).resolve().parents[2] / "config" / "faultmail.toml",
    Path("/usr/share/doc/faultmail/examples/faultmail.toml"),
    DEFAULT_CONFIG_PATH,
)


class Settings(SettingsBehaviour, BaseSettings):
    """The whole validated configuration. Immutable; built once by load_settings()."""

    model_config = SettingsConfigDict(
        env_prefix="FAULTMAIL_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    gateway: GatewaySettings
    mqtt: MqttSettings = MqttSettings()
    smtp: SmtpSettings
    policy: PolicySettings = PolicySettings()
    routes: Annotated[list[Route], Field(min_length=1)]
    delivery: DeliverySettings = DeliverySettings()
    outbox: OutboxSettings = OutboxSettings()
    mail: MailSettings = MailSettings()
    flood: FloodSettings = FloodSettings()
    health: HealthSettings = HealthSettings()
    silence: SilenceSettings = SilenceSettings()
    # Recurring maintenance windows: each occurrence becomes a silence (source "maintenance").
    maintenance: list[MaintenanceWindow] = []
    dkim: DkimSettings | None = None
    logging: LogSettings = LogSettings()
    cluster: ClusterSettings = ClusterSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init values; FAULTMAIL_* variables override it.
        return (ValidTextEnv(settings_cls), init_settings)

    @model_validator(mode="after")
    def _recipients_allowlisted(self) -> Settings:
        routes_to = [route.to for route in self.routes]
        check_recipients_allowed(self.allowlist, routes_to, self.flood.notify)
        return self

    @model_validator(mode="after")
    def _dkim_aligned(self) -> Settings:
        if self.dkim is not None:
            check_dkim_aligned(self.dkim.domain, self.smtp.sender_domain)
        return self

    @model_validator(mode="after")
    def _instance_named(self) -> Settings:
        if self.cluster.instance:
            return self
        instance = self.gateway.id
        if self.cluster.grouped:
            problem = member_name_problem(instance)
            if problem is None and instance in RESERVED_INSTANCES:
                problem = f"{instance!r} is a level of the group's own topics"
            if problem:
                raise KeyedError(
                    "cluster.instance",
                    f"not set, and gateway.id stands in for it, but {problem}; set "
                    "cluster.instance to a name unique in the group, e.g. gw-a",
                )
        # Settings is frozen; this is still validation, before anyone holds the object.
        object.__setattr__(self, "cluster", self.cluster.model_copy(update={"instance": instance}))
        return self


def example_config(config: Path | None = None) -> str:
    """The example configuration that exists on this machine (not `config` itself, which is
    what a problem was found in), for messages that point to it."""
    for candidate in EXAMPLE_CONFIG_PATHS:
        if not candidate.is_file():
            continue
        try:
            if config is not None and candidate.samefile(config):
                continue
        except OSError:  # config does not exist (or cannot be looked at): not the same file
            pass
        return str(candidate)
    return "the faultmail.toml shipped with faultmail (every key is documented there)"


def load_settings(path: Path, *, secrets: bool = True) -> Settings:
    """Read, merge and validate the configuration, or raise ConfigError naming each bad key.

    secrets=False is for the commands that only read the outbox (status and the listings):
    secret files (SMTP password, OAuth client secret, MQTT password and client key, DKIM keys)
    need not exist and are not read, so these commands work before the secrets are in place
    and for a user who may not read them; everything else is checked as for the daemon.
    """
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            [(str(path), f"no such file; copy {example_config(path)} there or pass --config")]
        ) from None
    except PermissionError:
        raise ConfigError(
            [(str(path), "not readable by this user; check its permissions")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), f"not valid TOML: {exc}")]) from None
    except UnicodeDecodeError as exc:
        # TOML is UTF-8 (TOML 1.0 "Spec"); tomllib lets the decode error through as it is.
        raise ConfigError(
            [
                (
                    str(path),
                    f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                    "save the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
                )
            ]
        ) from None
    try:
        with nullcontext() if secrets else unread_secrets():
            return (Settings if secrets else _ListingSettings)(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, example_config(path))) from None


def _problems(exc: ValidationError, example: str) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        key = key_name(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, KeyedError):
            problems.append((ctx_error.key, str(ctx_error)))
            continue
        if err["type"] == "extra_forbidden":
            text = f"unknown key; check its spelling against {example}"
        elif err["type"] == "missing":
            text = f"required key is missing; add it (see {example})"
        else:
            text = err["msg"].removeprefix("Value error, ")
        problems.append((key or "(top level)", text))
    return problems


class ValidTextEnv(EnvSettingsSource):
    """FAULTMAIL_* overrides, refused when they hold text that cannot be encoded.

    tomllib refuses lone surrogates in the file, but os.environ decodes bytes that are not
    UTF-8 with surrogateescape, and a JSON value's "\\ud800" escape decodes to one: such a str
    raises UnicodeEncodeError far away, in a log line, an SQLite row or a mail. Refused rather
    than repaired, since a silently altered path, command or address is worse than a clear stop.
    """

    def __call__(self) -> dict[str, Any]:
        try:
            values = super().__call__()
        except SettingsError as exc:
            # e.g. FAULTMAIL_MAIL__RUNBOOKS that is not JSON: pydantic-settings names the field.
            field = re.search(r'field "([^"]+)"', str(exc))
            key = field.group(1) if field else "environment"
            pattern = f"FAULTMAIL_{key.upper()}__*" if field else "FAULTMAIL_*"
            text = (
                f"a {pattern} environment variable cannot be read (structured values are JSON, "
                """e.g. '{"E1": "https://..."}'); fix or unset it"""
            )
            raise ConfigError([(key, text)]) from None
        problems = [
            (
                valid_text(key_name(path)),
                f"the environment variable {_env_name(path)} is not UTF-8 text (it holds bytes "
                "that are not UTF-8, or a JSON escape like \\ud800 that is no character); "
                "set it to UTF-8 text or unset it",
            )
            for path in _invalid_strings(values, ())
        ]
        if problems:
            raise ConfigError(problems)
        return values


def _invalid_strings(value: Any, path: tuple[int | str, ...]) -> list[tuple[int | str, ...]]:
    """Paths of the strings (keys too) inside `value` that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        return [] if _encodable(value) else [path]
    found: list[tuple[int | str, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            sub = (*path, key)
            if isinstance(key, str) and not _encodable(key):
                found.append(sub)
            else:
                found += _invalid_strings(item, sub)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += _invalid_strings(item, (*path, index))
    return found


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _env_name(path: tuple[int | str, ...]) -> str:
    """The FAULTMAIL_* variable a value at `path` came from (a JSON value may sit deeper)."""
    names = {name.upper() for name in os.environ}
    parts = [str(p) for p in path if isinstance(p, str)]
    for end in range(len(parts), 0, -1):
        name = "FAULTMAIL_" + "__".join(parts[:end]).upper()
        if name in names:
            return name
    return "FAULTMAIL_" + "__".join(parts).upper()


# The settings of the outbox-reading commands (load_settings(secrets=False)): each validator
# that requires a secret file to exist is replaced, by its name, with one that only resolves
# the path (a systemd credential name included); read_secret() reads nothing meanwhile
# (secret_files.unread_secrets). Every other check is inherited.


class _ListingMqtt(MqttSettings):
    @field_validator("ca_file", "client_cert")
    @classmethod
    def _readable(cls, value: str) -> str:
        return MqttSettings._readable(value)

    @field_validator("password_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        return resolve_secret_path(value, "mqtt-password")


class _ListingOAuth(OAuthSettings):
    @field_validator("client_secret_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        return resolve_secret_path(value, "oauth-client-secret")


class _ListingSmtp(SmtpSettings):
    oauth: _ListingOAuth | None = None

    @field_validator("password_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        return resolve_secret_path(value, "smtp-password")


class _ListingDkim(DkimSettings):
    @field_validator("private_key_file", "ed25519_key_file")
    @classmethod
    def _key(cls, value: str, info: ValidationInfo) -> str:
        return resolve_secret_path(value, "dkim-key") if value else value


class _ListingSettings(Settings):
    mqtt: _ListingMqtt = _ListingMqtt()
    smtp: _ListingSmtp
    dkim: _ListingDkim | None = None


def plain_copy(value: Any) -> Any:
    """The validated settings, or any value within them, as agent.settings.plain objects: the
    same fields and private values (secrets), no pydantic."""
    if isinstance(value, BaseModel):
        values = {name: plain_copy(getattr(value, name)) for name in type(value).model_fields}
        values.update(value.__pydantic_private__ or {})
        return plain_kind(type(value))(values)
    if isinstance(value, list):
        return [plain_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_copy(item) for item in value)
    if isinstance(value, dict):
        return {key: plain_copy(item) for key, item in value.items()}
    return value
