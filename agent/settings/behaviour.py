"""What the configuration's sections do besides holding values, without pydantic.

The validated models (connections, sections, maintenance, loading) and the plain copies the
daemon runs on (agent.settings.plain) both take these methods from here, so the two cannot
drift apart. Nothing here imports pydantic: the daemon does not load it (about 14 MB).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING

from agent.policy import Allowlist
from agent.silences import Window, parse_duration, parse_hhmm

if TYPE_CHECKING:
    from agent.settings.connections import MqttSettings, SmtpSettings
    from agent.settings.sections import DkimSettings, GatewaySettings, PolicySettings


class Secret:
    """A secret value that no repr, log line or dump shows."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __getstate__(self) -> str:
        return self._value

    def __setstate__(self, value: str) -> None:
        self._value = value


def permission_problems(files: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of (key, path) secret files, those that other users can read: (problem, fix) each."""
    problems = []
    for key, path in files:
        try:
            mode = Path(path).stat().st_mode
        except OSError:
            continue
        if mode & 0o044:
            who = "everyone" if mode & 0o004 else "its group"
            problems.append((f"{key}: {path} is readable by {who}", f"chmod 600 {path}"))
    return problems


class MqttBehaviour:
    if TYPE_CHECKING:
        _password: Secret | None

    def password(self) -> str | None:
        return self._password.get_secret_value() if self._password else None


class OAuthBehaviour:
    if TYPE_CHECKING:
        token_url: str
        tenant_id: str
        _client_secret: Secret

    @property
    def endpoint(self) -> str:
        """token_url with {tenant_id} filled in."""
        return self.token_url.replace("{tenant_id}", self.tenant_id)

    def client_secret(self) -> str:
        return self._client_secret.get_secret_value()


class SmtpBehaviour:
    if TYPE_CHECKING:
        sender: str
        _password: Secret

    def password(self) -> str:
        return self._password.get_secret_value()

    @property
    def sender_address(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def sender_domain(self) -> str:
        return Address(addr_spec=self.sender_address).domain.lower()


class ClusterBehaviour:
    if TYPE_CHECKING:
        mode: str

    @property
    def grouped(self) -> bool:
        return self.mode != "single"


class MaintenanceBehaviour:
    if TYPE_CHECKING:
        name: str
        devices: Sequence[str]
        codes: Sequence[str]
        days: Sequence[str]
        start: str
        timezone: str
        reason: str
        duration: str | None
        end: str | None

    def window(self) -> Window:
        """The window as agent.silences computes its occurrences."""
        return Window(
            name=self.name,
            devices=tuple(self.devices),
            codes=tuple(self.codes),
            days=tuple(self.days),
            start=parse_hhmm(self.start),
            zone=self.timezone,
            reason=self.reason,
            duration=parse_duration(self.duration) if self.duration is not None else None,
            end=parse_hhmm(self.end) if self.end is not None else None,
        )


class SettingsBehaviour:
    if TYPE_CHECKING:
        gateway: GatewaySettings
        policy: PolicySettings
        smtp: SmtpSettings
        mqtt: MqttSettings
        dkim: DkimSettings | None

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
        return permission_problems(self.secret_files())

    def permission_warnings(self) -> list[str]:
        """permission_problems() as one log line each."""
        return [f"{problem}; {fix}" for problem, fix in self.permission_problems()]

    def secrets(self) -> list[str]:
        """Every secret value, for the log redaction processor."""
        values = [self.smtp.password(), self.mqtt.password() or ""]
        if self.smtp.oauth is not None:
            values.append(self.smtp.oauth.client_secret())
        return [v for v in values if v]
