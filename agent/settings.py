"""Configuration: a TOML file, FAULTMAIL_* environment overrides and secret files.

This is the only module that reads configuration. `load_settings` validates everything once at
startup and returns an immutable Settings that the composition root passes down.
"""

from __future__ import annotations

import os
import re
import ssl
import string
import tomllib
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
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
from agent.models import Severity

# Re-exported: the allowlist and its address rule live with the policy that applies them.
from agent.policy import Allowlist as Allowlist
from agent.policy import check_address as check_address
from agent.sanitize import valid_text
from agent.tls import tls_context

DEFAULT_CONFIG_PATH = Path("/etc/faultmail/faultmail.toml")

_DOMAIN_RE = re.compile(r"^(\*\.)?([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$")
_UID_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_readable_file(value: str, key_hint: str) -> str:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"file {value!r} does not exist; create it or fix the path ({key_hint})")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file {value!r} is not readable by this user; fix its permissions")
    return value


def resolve_secret_path(value: str, credential_name: str) -> str:
    """A relative secret path, or an empty one, is looked up in systemd's $CREDENTIALS_DIRECTORY.

    With `LoadCredential=smtp-password:/etc/faultmail/smtp-password` in the unit, the daemon
    finds the secret without having read access to /etc/faultmail itself.
    """
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        candidate = Path(cred_dir) / (value or credential_name)
        if not Path(value).is_absolute() and candidate.is_file():
            return str(candidate)
    return value


def _read_secret(path: str, key: str) -> SecretStr:
    # Only the first line counts: editors add a trailing newline that is not part of a password.
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        # A password saved as Latin-1 or UTF-16 would only surface as a login failure, or as
        # text that cannot be logged or sent, at the first alert.
        raise _KeyedError(
            key,
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save the secret as UTF-8 (plain ASCII is safest)",
        ) from None
    except OSError as exc:
        raise _KeyedError(
            key, f"{path} cannot be read ({exc.strerror}); fix its permissions"
        ) from None
    first = text.splitlines()[0] if text else ""
    if not first.strip():
        # An empty secret would only surface as a login failure at the first alert.
        raise _KeyedError(key, f"{path} is empty (or its first line is): put the secret on line 1")
    return SecretStr(first)


class GatewaySettings(_Section):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    state_dir: Path = Path("/var/lib/faultmail")
    site: str = ""

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not _UID_SAFE.match(value):
            raise ValueError("use only letters, digits, '.', '_' and '-' (e.g. gw-brno-01)")
        return value


class MqttSettings(_Section):
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
    topics: Annotated[list[str], Field(min_length=1)] = ["devices/+/fault"]
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    # How long the broker keeps our session (and queues QoS 1 messages) while we are offline.
    session_expiry: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    max_payload_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = 16 * 1024
    # MQTT 5 Receive Maximum: unacknowledged messages the broker may have in flight to us.
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 1000

    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("ca_file", "client_cert", "client_key")
    @classmethod
    def _readable(cls, value: str) -> str:
        return _check_readable_file(value, "or leave it empty") if value else value

    @field_validator("password_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        value = resolve_secret_path(value, "mqtt-password")
        return _check_readable_file(value, "or leave it empty for no password") if value else value

    @field_validator("topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for topic in value:
            _check_topic_filter(topic)
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
            self._password = _read_secret(self.password_file, "mqtt.password_file")
        return self

    def password(self) -> str | None:
        return self._password.get_secret_value() if self._password else None


def _check_topic_filter(topic: str) -> None:
    levels = topic.split("/")
    if not topic or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels):
        raise ValueError(f"{topic!r} is not a valid MQTT topic filter")
    if "#" in levels[:-1]:
        raise ValueError(f"{topic!r}: '#' may only be the last level")


class OAuthSettings(_Section):
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
    token_command: list[str] = []

    _client_secret: SecretStr = PrivateAttr(default=SecretStr(""))

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
        return _check_readable_file(value, "it must hold the client secret") if value else value

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
            self._client_secret = _read_secret(
                self.client_secret_file, "smtp.oauth.client_secret_file"
            )
        return self

    @property
    def endpoint(self) -> str:
        """token_url with {tenant_id} filled in."""
        return self.token_url.replace("{tenant_id}", self.tenant_id)

    def client_secret(self) -> str:
        return self._client_secret.get_secret_value()


class SmtpSettings(_Section):
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

    _password: SecretStr = PrivateAttr(default=SecretStr(""))

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
        _check_readable_file(value, "or leave it empty for the system trust store")
        try:
            tls_context(value)  # exactly what the daemon and the doctor will load
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{value!r} is not a usable PEM CA bundle ({exc})") from None
        return value

    @field_validator("password_file")
    @classmethod
    def _secret(cls, value: str) -> str:
        value = resolve_secret_path(value, "smtp-password")
        return _check_readable_file(value, "it must hold the SMTP password") if value else value

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
            self._password = _read_secret(self.password_file, "smtp.password_file")
        return self

    def password(self) -> str:
        return self._password.get_secret_value()

    @property
    def sender_address(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def sender_domain(self) -> str:
        return Address(addr_spec=self.sender_address).domain.lower()


class PolicySettings(_Section):
    # Domains match exactly; "*.example.com" matches its subdomains (not example.com itself).
    allowed_domains: list[str] = []
    allowed_recipients: list[str] = []

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            if not _DOMAIN_RE.match(domain):
                raise ValueError(f"{domain!r} is not a domain name like example.com")
        return [d.lower() for d in value]

    @field_validator("allowed_recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [check_address(v) for v in value]


class Route(_Section):
    topics: Annotated[list[str], Field(min_length=1)]
    min_severity: Severity = Severity.WARNING
    to: Annotated[list[str], Field(min_length=1)]

    @field_validator("topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for topic in value:
            _check_topic_filter(topic)
        return value

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [check_address(v) for v in value]


class DeliverySettings(_Section):
    retry_initial: Annotated[float, Field(gt=0, le=3600)] = 5.0
    retry_max: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # Mails handed to one connection before the dispatcher looks at the queue again.
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 50
    # A global cap protecting the relay account from its own abuse detection (Microsoft 365
    # allows 30 a minute). 0: no cap. Over it, mails wait in the outbox, critical first.
    max_mails_per_minute: Annotated[int, Field(ge=0)] = 0
    # While the relay is unreachable, a TCP connection attempt this often finds it back
    # within seconds instead of at the next (long) retry.
    probe_interval: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Alerts older than this are "stale": sent marked as late, or dead if expire = true.
    max_age: Annotated[float, Field(gt=0)] = 3 * 24 * 3600.0
    expire: bool = False
    # The longest the queue sleeps without looking at the database (picks up
    # `faultmail queue retry` from the command line).
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @model_validator(mode="after")
    def _order(self) -> DeliverySettings:
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be at least retry_initial")
        return self


class OutboxSettings(_Section):
    # Pending alerts the outbox holds before the least severe, oldest ones give way (never a
    # critical one: then faultmail stops acknowledging and the broker keeps the messages).
    max_pending: Annotated[int, Field(ge=100)] = 100_000
    # Size of the database; finished history goes first, then ingest pauses.
    max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 256 * 1024 * 1024
    # Sent, suppressed, rejected and dead alerts, their mails and the audit log are kept this
    # long for `faultmail alerts` and `faultmail audit`.
    keep_days: Annotated[float, Field(gt=0)] = 30.0


# The names compose.py formats each user format string with (subject_for, _template_vars).
_SUBJECT_FIELDS = ("severity", "device", "code", "message", "gateway", "site")
_RUNBOOK_FIELDS = ("code",)
# A padded or cut field wider than this is a typo or an attack, not a subject: with
# "{message:>99999999999}" str.format asks for gigabytes and raises MemoryError at send time.
FORMAT_MAX_WIDTH = 200
# Standard format spec for a str (Python "Format Specification Mini-Language"):
# [[fill]align][sign][z][#][0][width][grouping][.precision][type]; only width and precision
# allocate, so only they are bounded here. What does not apply to a str (a sign, type "d")
# is caught by the trial format below.
_FORMAT_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d*))?[A-Za-z%]?",
    re.DOTALL,
)


def check_format(value: str, fields: tuple[str, ...]) -> str:
    """A str.format template that can only ever use `fields` and cannot fail at send time.

    Device text is what gets formatted, so the template must not reach into it (attribute or
    index access), nest placeholders inside a spec, or ask for unbounded padding.
    """
    allowed = ", ".join(f"{{{name}}}" for name in fields)
    fix = f"use only {allowed} (write {{{{ and }}}} for literal braces)"
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"not a valid format string ({exc}); {fix}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(f"positional placeholder {{{name}}} is not filled in; {fix}")
        if "." in name or "[" in name:
            raise ValueError(f"{{{name}}}: attribute or index access is not allowed; {fix}")
        if name not in fields:
            raise ValueError(f"unknown placeholder {{{name}}}; {fix}")
        if conversion not in (None, "s", "r", "a"):
            raise ValueError(
                f"{{{name}!{conversion}}}: unknown conversion (use !s, !r or none); {fix}"
            )
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"{{{name}:{spec}}}: a placeholder inside a format spec; {fix}")
        match = _FORMAT_SPEC.fullmatch(spec or "")
        if match is None:
            raise ValueError(f"{{{name}:{spec}}}: not a format spec for text; {fix}")
        for what in ("width", "precision"):
            number = match.group(what)
            if number and int(number) > FORMAT_MAX_WIDTH:
                raise ValueError(
                    f"{{{name}:{spec}}}: {what} {number} is too large (at most "
                    f"{FORMAT_MAX_WIDTH}); {fix}"
                )
    # Whatever the checks above do not know about shows up here, not at the first alert.
    try:
        value.format(**{name: "x" for name in fields})
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"cannot be formatted ({exc}); {fix}") from None
    return value


class MailSettings(_Section):
    # Fields: {severity} (upper case), {device}, {code}, {message}, {gateway}, {site}; a format
    # spec may pad or cut to at most FORMAT_MAX_WIDTH characters ({message:.60}).
    subject_format: str = "[{severity}] {device} {code}: {message}"
    # Repeats of one device + code within this window make one follow-up mail at its end.
    repeat_window: Annotated[float, Field(ge=0, le=86400)] = 600.0
    # This many alerts waiting at once (after an outage) go out as one digest per recipient set.
    digest_threshold: Annotated[int, Field(ge=2)] = 20
    # Local time zone shown next to UTC in mails (IANA name).
    timezone: str = "UTC"
    # Runbook link per fault code; runbook_default applies to other codes ({code} is filled in,
    # the only field it may use).
    runbooks: dict[str, str] = {}
    runbook_default: str = ""
    # A directory with mail.txt.j2 / mail.html.j2 replacing the shipped templates.
    templates_dir: str = ""

    @field_validator("subject_format")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_format(value, _SUBJECT_FIELDS)

    @field_validator("runbook_default")
    @classmethod
    def _runbook(cls, value: str) -> str:
        return check_format(value, _RUNBOOK_FIELDS)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known time zone (e.g. Europe/Prague)") from None
        return value

    @field_validator("templates_dir")
    @classmethod
    def _templates(cls, value: str) -> str:
        if value and not Path(value).is_dir():
            raise ValueError(f"{value!r} is not a directory; fix the path or leave it empty")
        return value


class DkimSettings(_Section):
    # The d= domain: it must be the From domain so that DMARC aligns.
    domain: Annotated[str, Field(min_length=1)]
    selector: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")]
    # PEM RSA private key (2048 bits or more), as written by `faultmail dkim keygen`.
    private_key_file: str
    # Optional second signature, ed25519-sha256 (RFC 8463), with its own selector.
    ed25519_key_file: str = ""
    ed25519_selector: str = ""

    @field_validator("private_key_file", "ed25519_key_file")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value:
            return value
        value = resolve_secret_path(value, "dkim-key")
        return _check_readable_file(value, "create it with `faultmail dkim keygen`")

    @model_validator(mode="after")
    def _pairs(self) -> DkimSettings:
        if bool(self.ed25519_key_file) != bool(self.ed25519_selector):
            raise ValueError("ed25519_key_file and ed25519_selector go together")
        return self


class FloodSettings(_Section):
    # Per device: a token bucket of `burst` alerts refilled at `rate` alerts per second.
    # Above it alerts are suppressed (counted, not mailed).
    rate: Annotated[float, Field(gt=0)] = 1.0
    burst: Annotated[int, Field(ge=1)] = 30
    # More than block_threshold messages within block_window seconds blocks the device.
    block_threshold: Annotated[int, Field(ge=2)] = 300
    block_window: Annotated[float, Field(gt=0)] = 60.0
    # The security team: one notice per block (allowlisted like every recipient).
    notify: list[str] = []
    # Payload samples quoted in the notice (escaped, truncated).
    samples: Annotated[int, Field(ge=0, le=10)] = 3

    @field_validator("notify")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [check_address(v) for v in value]


class HealthSettings(_Section):
    # Seconds between reports (metrics file, STATUS=, MQTT heartbeat, status heartbeat row).
    interval: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # A stage (MQTT client, intake, delivery, outbox worker) silent this long counts as stalled:
    # the systemd watchdog is no longer pinged and `faultmail status` exits 1. Each stage says
    # it is alive at least every 5 s; one unit of work must fit inside (an SMTP transaction is
    # bounded by smtp.timeout and smtp.data_timeout, 30 + 120 s by default).
    stall_after: Annotated[float, Field(ge=10, le=3600)] = 300.0
    # node_exporter textfile collector file, written atomically; "" for none.
    metrics_textfile: str = ""
    # Serve the same metrics on http://127.0.0.1:PORT/ (0: off). Loopback only.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    # Retained `faultmail/<gateway id>/status`: "offline" as Last Will, else a JSON heartbeat.
    status_topic: bool = True

    @field_validator("metrics_textfile")
    @classmethod
    def _textfile_dir(cls, value: str) -> str:
        if value and not Path(value).parent.is_dir():
            raise ValueError(f"the directory of {value!r} does not exist; create it or fix it")
        return value


class LogSettings(_Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
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
    dkim: DkimSettings | None = None
    logging: LogSettings = LogSettings()

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
        return (_ValidTextEnv(settings_cls), init_settings)

    @model_validator(mode="after")
    def _recipients_allowlisted(self) -> Settings:
        allow = self.allowlist
        for index, route in enumerate(self.routes):
            for addr in route.to:
                if not allow.allows(addr):
                    raise _KeyedError(
                        f"routes[{index}].to",
                        f"{addr} is outside the allowlist; add its domain to "
                        "policy.allowed_domains or the address to policy.allowed_recipients",
                    )
        for addr in self.flood.notify:
            if not allow.allows(addr):
                raise _KeyedError(
                    "flood.notify",
                    f"{addr} is outside the allowlist; add it to policy.allowed_recipients",
                )
        return self

    @model_validator(mode="after")
    def _dkim_aligned(self) -> Settings:
        if self.dkim is not None and self.dkim.domain.lower() != self.smtp.sender_domain:
            raise _KeyedError(
                "dkim.domain",
                f"{self.dkim.domain} differs from the From domain {self.smtp.sender_domain}; "
                "DMARC needs them aligned: sign with the From domain",
            )
        return self

    @property
    def outbox_path(self) -> Path:
        return self.gateway.state_dir / "outbox.db"

    @property
    def allowlist(self) -> Allowlist:
        return Allowlist(self.policy.allowed_domains, self.policy.allowed_recipients)

    def secret_files(self) -> list[tuple[str, str]]:
        """(key, path) of every file holding a secret."""
        oauth_secret = self.smtp.oauth.client_secret_file if self.smtp.oauth else ""
        files = [
            ("smtp.password_file", self.smtp.password_file),
            ("smtp.oauth.client_secret_file", oauth_secret),
            ("mqtt.password_file", self.mqtt.password_file),
            ("mqtt.client_key", self.mqtt.client_key),
        ]
        if self.dkim is not None:
            files += [
                ("dkim.private_key_file", self.dkim.private_key_file),
                ("dkim.ed25519_key_file", self.dkim.ed25519_key_file),
            ]
        return [(key, path) for key, path in files if path]

    def permission_problems(self) -> list[tuple[str, str]]:
        """Secret files that other users can read: (problem, fix) each."""
        problems = []
        for key, path in self.secret_files():
            try:
                mode = Path(path).stat().st_mode
            except OSError:
                continue
            if mode & 0o044:
                who = "everyone" if mode & 0o004 else "its group"
                problems.append((f"{key}: {path} is readable by {who}", f"chmod 600 {path}"))
        return problems

    def permission_warnings(self) -> list[str]:
        """permission_problems() as one log line each."""
        return [f"{problem}; {fix}" for problem, fix in self.permission_problems()]

    def secrets(self) -> list[str]:
        """Every secret value, for the log redaction processor."""
        values = [self.smtp.password(), self.mqtt.password() or ""]
        if self.smtp.oauth is not None:
            values.append(self.smtp.oauth.client_secret())
        return [v for v in values if v]


class _KeyedError(ValueError):
    """A cross-field problem that belongs to a specific key rather than to the model."""

    def __init__(self, key: str, text: str) -> None:
        self.key = key
        super().__init__(text)


class _ValidTextEnv(EnvSettingsSource):
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
                valid_text(_key_name(path)),
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


def load_settings(path: Path) -> Settings:
    """Read, merge and validate the configuration, or raise ConfigError naming each bad key."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            [(str(path), "no such file; copy config/faultmail.toml there or pass --config")]
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
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        key = _key_name(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _KeyedError):
            problems.append((ctx_error.key, str(ctx_error)))
            continue
        if err["type"] == "extra_forbidden":
            text = "unknown key; check its spelling against config/faultmail.toml"
        elif err["type"] == "missing":
            text = "required key is missing; add it (see config/faultmail.toml)"
        else:
            text = err["msg"].removeprefix("Value error, ")
        problems.append((key or "(top level)", text))
    return problems


def _key_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part == "sender":
            name += ".from"
        else:
            name += f".{part}" if name else str(part)
    return name
