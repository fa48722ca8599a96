"""The [mqtt] and [smtp] sections (with [smtp.oauth]): how to reach the broker and the relay.

The two network peers and their credentials; secret files are read here, once, at load time.
"""

from __future__ import annotations

import datetime
import ssl
from email.utils import parseaddr
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from agent.policy import check_address
from agent.settings.behaviour import MqttBehaviour, OAuthBehaviour, Secret, SmtpBehaviour
from agent.settings.providers import PRESETS, Provider
from agent.settings.secret_files import read_secret, resolve_secret_path
from agent.settings.validation import Section, check_readable_file, check_topic_filter
from agent.tls import tls_context


class MqttSettings(MqttBehaviour, Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = False
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    username: str = ""
    password_file: str = ""
    client_id: Annotated[str, Field(min_length=1, max_length=128)] = ""
    topics: Annotated[list[str], Field(min_length=1)] = ["devices/+/fault"]  # noqa: RUF012 (see Section)
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    # How long the broker keeps our session (and queues QoS 1 messages) while we are offline.
    session_expiry: Annotated[int, Field(ge=60, le=2**32 - 1)] = 7 * 24 * 3600  # MQTT 5 3.1.2.11.2
    max_payload_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = 16 * 1024
    # MQTT 5 Receive Maximum: unacknowledged messages the broker may have in flight to us.
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 1000

    _password: Secret | None = PrivateAttr(default=None)

    @field_validator("ca_file", "client_cert", "client_key")
    @classmethod
    def _readable(cls, value: str) -> str:
        return check_readable_file(value, "or leave it empty") if value else value

    @field_validator("password_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        value = resolve_secret_path(value, "mqtt-password")
        return check_readable_file(value, "or leave it empty for no password") if value else value

    @field_validator("topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for topic in value:
            check_topic_filter(topic)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("client_cert and client_key go together; set both or neither")
        if (self.client_cert or self.ca_file) and not self.tls:
            raise ValueError("ca_file/client_cert are set but tls = false; set tls = true")
        if self.password_file and not self.username:
            raise ValueError("password_file is set but username is empty; set mqtt.username")
        if self.password_file:
            self._password = read_secret(self.password_file, "mqtt.password_file")
        return self


class OAuthSettings(OAuthBehaviour, Section):
    """Where XOAUTH2 access tokens come from: exactly one of the three ways."""

    # Client-credentials flow, e.g. Microsoft 365:
    # https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token
    token_url: str = ""
    tenant_id: str = ""
    client_id: str = ""
    client_secret_file: str = ""
    scope: str = "https://outlook.office365.com/.default"
    # CA bundle for the token endpoint (empty: the system store).
    ca_file: str = ""
    # Or: a file another tool keeps fresh, or a command that prints a token.
    token_file: str = ""
    token_command: list[str] = []  # noqa: RUF012 (see Section)
    # When the client secret expires (Entra ID shows it under Certificates & secrets):
    # `faultmail doctor` warns 30 days ahead, since an expired secret stops all mail.
    client_secret_expires: datetime.date | None = None

    _client_secret: Secret = PrivateAttr(default=Secret(""))

    @field_validator("token_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if value and not value.startswith("https://"):
            raise ValueError("the token endpoint must be https:// (the client secret goes there)")
        return value

    @field_validator("client_secret_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        value = resolve_secret_path(value, "oauth-client-secret")
        return check_readable_file(value, "it must hold the client secret") if value else value

    @model_validator(mode="after")
    def _one_way(self) -> OAuthSettings:
        ways = [bool(self.token_url), bool(self.token_file), bool(self.token_command)]
        if sum(ways) != 1:
            raise ValueError(
                "set exactly one of token_url (with client_id and client_secret_file), "
                "token_file or token_command"
            )
        if self.token_url:
            if not (self.client_id and self.client_secret_file):
                raise ValueError("token_url needs client_id and client_secret_file")
            self._client_secret = read_secret(
                self.client_secret_file, "smtp.oauth.client_secret_file"
            )
        return self


class SmtpSettings(SmtpBehaviour, Section):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    # Required on purpose: there is no plaintext mode, and no default that could turn into one.
    security: Literal["starttls", "tls"]
    ca_file: str = ""
    username: Annotated[str, Field(min_length=1)]
    password_file: str = ""
    sender: str = Field(alias="from")
    # "password" (PLAIN/LOGIN over TLS) or "xoauth2" (an OAuth access token, see [smtp.oauth]).
    auth: Literal["password", "xoauth2"] = "password"
    oauth: OAuthSettings | None = None
    ehlo_name: str = ""
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    # The reply to the final dot can take long on a relay that scans content; giving up too
    # early turns a delivered mail into a retry and a duplicate (RFC 5321 4.5.3.2.6: 10 minutes).
    data_timeout: Annotated[float, Field(gt=0, le=600)] = 120.0
    # Keep one authenticated connection open this long after the last mail.
    idle_close: Annotated[float, Field(ge=0, le=600)] = 30.0
    # Mails in flight at once, one connection each: a second one overlaps our composing and
    # signing with the relay's work. Hosted relays limit concurrent connections per account
    # (Microsoft 365: 3), so stay at or below what yours allows.
    connections: Annotated[int, Field(ge=1, le=8)] = 2
    # The mail provider's limits as a preset (agent.settings.providers): per-minute cap,
    # daily recipient budget, connections. Keys set by hand win over the preset.
    provider: Provider = "generic"

    _password: Secret = PrivateAttr(default=Secret(""))

    @model_validator(mode="before")
    @classmethod
    def _provider_connections(cls, data: Any) -> Any:
        """smtp.connections from the provider's preset unless it is set by hand."""
        if isinstance(data, dict) and "connections" not in data:
            preset = PRESETS.get(str(data.get("provider", "generic")))
            if preset is not None:
                return {**data, "connections": preset.connections}
        return data

    @field_validator("security", mode="before")
    @classmethod
    def _no_plaintext(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("none", "plain", "plaintext", "off", ""):
            raise ValueError(
                'plaintext submission is not supported; use "starttls" (port 587) '
                'or "tls" (implicit TLS, port 465)'
            )
        return value

    @field_validator("port")
    @classmethod
    def _not_25(cls, value: int) -> int:
        if value == 25:
            raise ValueError(
                "port 25 is relay-to-relay SMTP without authentication; use the submission "
                'port 587 with security = "starttls" or 465 with security = "tls"'
            )
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, value: str) -> str:
        if not value:
            return value
        check_readable_file(value, "or leave it empty for the system trust store")
        try:
            tls_context(value)  # exactly what the daemon and the doctor will load
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{value!r} is not a usable PEM CA bundle ({exc})") from None
        return value

    @field_validator("password_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        value = resolve_secret_path(value, "smtp-password")
        return check_readable_file(value, "it must hold the SMTP password") if value else value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        _, addr = parseaddr(value)
        if not addr or "\n" in value or "\r" in value:
            raise ValueError(f"{value!r} is not an address like 'Gateway <gw@example.com>'")
        check_address(addr)
        return value

    @model_validator(mode="after")
    def _port_matches_security(self) -> SmtpSettings:
        if self.port == 465 and self.security == "starttls":
            raise ValueError('port 465 is implicit TLS; set security = "tls"')
        if self.port == 587 and self.security == "tls":
            raise ValueError('port 587 expects STARTTLS; set security = "starttls"')
        if self.auth == "xoauth2":
            if self.oauth is None:
                raise ValueError('auth = "xoauth2" needs an [smtp.oauth] table')
        elif not self.password_file:
            raise ValueError(
                "AUTH is always used: set smtp.password_file to a 0600 file holding the "
                'password (or the systemd credential smtp-password), or use auth = "xoauth2"'
            )
        else:
            self._password = read_secret(self.password_file, "smtp.password_file")
        return self
