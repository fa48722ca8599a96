"""The other configuration sections: gateway, policy and routes, delivery, outbox, mail, DKIM,
flood defence, health, logging and the group a gateway runs in. Declarations with their field
checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.models import Severity
from agent.policy import check_address, check_allowed_domain
from agent.settings.behaviour import ClusterBehaviour
from agent.settings.secret_files import resolve_secret_path
from agent.settings.validation import (
    RUNBOOK_FIELDS,
    SUBJECT_FIELDS,
    KeyedError,
    Section,
    check_format,
    check_readable_file,
    check_runbook_url,
    check_topic_filter,
)

_UID_SAFE = re.compile(r"[A-Za-z0-9._-]+")


class GatewaySettings(Section):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    state_dir: Path = Path("/var/lib/faultmail")
    site: str = ""

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not _UID_SAFE.fullmatch(value):
            raise ValueError("use only letters, digits, '.', '_' and '-' (e.g. gw-brno-01)")
        return value


class PolicySettings(Section):
    # Domains match exactly; "*.example.com" matches its subdomains (not example.com itself).
    # Entries at or above a public suffix (com, *.com, co.uk) are refused, see
    # agent.policy.check_allowed_domain.
    allowed_domains: list[str] = []  # noqa: RUF012 (see Section)
    allowed_recipients: list[str] = []  # noqa: RUF012 (see Section)

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [check_allowed_domain(d) for d in value]

    @field_validator("allowed_recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [check_address(v) for v in value]


class Route(Section):
    topics: Annotated[list[str], Field(min_length=1)]
    min_severity: Severity = Severity.WARNING
    to: Annotated[list[str], Field(min_length=1)]

    @field_validator("topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for topic in value:
            check_topic_filter(topic)
        return value

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [check_address(v) for v in value]


class DeliverySettings(Section):
    retry_initial: Annotated[float, Field(gt=0, le=3600)] = 5.0
    retry_max: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # Mails handed to one connection before the dispatcher looks at the queue again.
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 50
    # A global cap protecting the relay account from its own abuse detection (Microsoft 365
    # allows 30 a minute). 0: no cap. Over it, mails wait in the outbox, critical first.
    # Unset: smtp.provider's preset (agent.settings.providers; "generic": no cap).
    max_mails_per_minute: Annotated[int, Field(ge=0, le=10_000)] | None = None
    # Recipients of sent mail per rolling 24 hours (Microsoft 365 and Google Workspace: 10,000),
    # counted from the outbox so a restart does not reset it. 0: no budget. Over it, every
    # mail waits in the outbox: a provider locks a mailbox over its limit for up to a day.
    # Unset: smtp.provider's preset.
    max_recipients_per_day: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    # While the relay refuses our login (wrong or expired credentials, basic auth disabled),
    # one attempt this often instead of a retry per mail: an alarm until a login works.
    auth_retry_interval: Annotated[float, Field(ge=1, le=86400)] = 300.0
    # While the relay is unreachable, a TCP connection attempt this often finds it back
    # within seconds instead of at the next (long) retry.
    probe_interval: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Alerts older than this are "stale": sent marked as late, or dead if expire = true.
    max_age: Annotated[float, Field(gt=0, le=365 * 24 * 3600.0)] = 3 * 24 * 3600.0
    expire: bool = False
    # The longest the queue sleeps without looking at the database (picks up
    # `faultmail queue retry` from the command line).
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @model_validator(mode="after")
    def _order(self) -> DeliverySettings:
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be at least retry_initial")
        return self


class OutboxSettings(Section):
    # Pending alerts the outbox holds before the least severe, oldest ones give way (never a
    # critical one: then faultmail stops acknowledging and the broker keeps the messages).
    max_pending: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    # Size of the database; finished history goes first, then ingest pauses. At most 1 TiB
    # (SQLite's own limit is far above; no gateway has that much disk).
    max_bytes: Annotated[int, Field(ge=1024 * 1024, le=2**40)] = 256 * 1024 * 1024
    # Sent, suppressed, rejected and dead alerts, their mails and the audit log are kept this
    # long for `faultmail alerts` and `faultmail audit`.
    keep_days: Annotated[float, Field(gt=0, le=3650)] = 30.0


class MailSettings(Section):
    # Fields: {severity} (upper case), {device}, {code}, {message}, {gateway}, {site}; a format
    # spec may pad or cut to at most FORMAT_MAX_WIDTH characters ({message:.60}).
    subject_format: str = "[{severity}] {device} {code}: {message}"
    # Repeats of one device + code within this window make one follow-up mail at its end.
    repeat_window: Annotated[float, Field(ge=0, le=86400)] = 600.0
    # This many alerts waiting at once (after an outage) go out as one digest per recipient set.
    # At most outbox.max_pending's own maximum: a higher threshold could never be reached.
    digest_threshold: Annotated[int, Field(ge=2, le=10_000_000)] = 20
    # Mails one device may cause within device_window seconds, across all its fault codes
    # (0: no budget). Once spent, its alerts wait until the window has passed and then go
    # out as one digest: a device rotating fault codes cannot mail once per message.
    device_budget: Annotated[int, Field(ge=0, le=10_000)] = 10
    device_window: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # This many distinct fault codes from one device within device_window is code rotation:
    # one security notice to flood.notify (at most one an hour per device) and the device's
    # `suspicious` counter (0: not checked).
    rotation_codes: Annotated[int, Field(ge=0, le=10_000)] = 20
    # Local time zone shown next to UTC in mails (IANA name).
    timezone: str = "UTC"
    # Runbook link per fault code; runbook_default applies to other codes ({code} is filled in,
    # the only field it may use).
    runbooks: dict[str, str] = {}  # noqa: RUF012 (see Section)
    runbook_default: str = ""
    # A directory with mail.txt.j2 / mail.html.j2 replacing the shipped templates; a
    # subdirectory named after mail.language (templates_dir/cs/mail.txt.j2) comes first.
    templates_dir: str = ""
    # The language of every mail's fixed text, dates and numbers (agent/i18n/).
    language: Literal["en", "cs", "de"] = "en"
    # Subjects transliterated to ASCII ("Přetlak" → "Pretlak") for ticketing systems that
    # parse them; otherwise non-ASCII subjects are RFC 2047 encoded.
    ascii_subject: bool = False

    @field_validator("subject_format")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_format(value, SUBJECT_FIELDS)

    @field_validator("runbook_default")
    @classmethod
    def _runbook(cls, value: str) -> str:
        return check_runbook_url(check_format(value, RUNBOOK_FIELDS)) if value else value

    @field_validator("runbooks")
    @classmethod
    def _runbooks(cls, value: dict[str, str]) -> dict[str, str]:
        for code, url in value.items():
            check_runbook_url(url, code=code)
        return value

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


# Where `faultmail dkim keygen` writes a key when neither --out nor the configuration names a
# path: the files the unit's BindReadOnlyPaths= lines and the shipped example name.
DKIM_KEY_PATHS = {"rsa": "/etc/faultmail/dkim.key", "ed25519": "/etc/faultmail/dkim-ed25519.key"}


def keygen_command(selector: str, domain: str, kind: str, path: str) -> str:
    """The exact command that creates the key a configuration names (a credential name, which
    is not a path, stands for the file in /etc/faultmail that the credential store links)."""
    out = path if Path(path).is_absolute() else DKIM_KEY_PATHS[kind]
    kind_option = " --type ed25519" if kind == "ed25519" else ""
    return f"faultmail dkim keygen --selector {selector} --domain {domain}{kind_option} --out {out}"


class DkimSettings(Section):
    # The d= domain: it must be the From domain so that DMARC aligns.
    domain: Annotated[str, Field(min_length=1)]
    selector: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")]
    # PEM RSA private key (2048 bits or more), as written by `faultmail dkim keygen`.
    private_key_file: str
    # Optional second signature, ed25519-sha256 (RFC 8463), with its own selector. The
    # selector comes first so that a missing key file's message can name it.
    ed25519_selector: str = ""
    ed25519_key_file: str = ""

    @field_validator("private_key_file", "ed25519_key_file")
    @classmethod
    def _key(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        value = resolve_secret_path(value, "dkim-key")
        if not Path(value).is_file():
            ed25519 = info.field_name == "ed25519_key_file"
            selector = info.data.get("ed25519_selector" if ed25519 else "selector") or "S"
            domain = info.data.get("domain") or "D"
            command = keygen_command(selector, domain, "ed25519" if ed25519 else "rsa", value)
            raise ValueError(
                f"file {value!r} does not exist; create it with `{command}` (or fix the path)"
            )
        return check_readable_file(value, "create it with `faultmail dkim keygen`")

    @model_validator(mode="after")
    def _pairs(self) -> DkimSettings:
        if bool(self.ed25519_key_file) != bool(self.ed25519_selector):
            raise ValueError("ed25519_key_file and ed25519_selector go together")
        return self


class FloodSettings(Section):
    # Per device: a token bucket of `burst` alerts refilled at `rate` alerts per second.
    # Above it alerts are suppressed (counted, not mailed).
    # Bounded far above any device, but finite: inf would turn the limit off unnoticed.
    rate: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    burst: Annotated[int, Field(ge=1, le=1_000_000)] = 30
    # More than block_threshold messages within block_window seconds blocks the device. The
    # guard keeps up to block_threshold arrival times per device, hence its bound; a window
    # longer than a day is no flood defence.
    block_threshold: Annotated[int, Field(ge=2, le=1_000_000)] = 300
    block_window: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    # The security team: one notice per block (allowlisted like every recipient).
    notify: list[str] = []  # noqa: RUF012 (see Section)
    # Payload samples quoted in the notice (escaped, truncated).
    samples: Annotated[int, Field(ge=0, le=10)] = 3
    # UIDs whose rate the guard tracks at once (a few KiB each at most); beyond it the one
    # quiet the longest is forgotten, so a sweep over many UIDs cannot exhaust memory.
    max_devices: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000

    @field_validator("notify")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [check_address(v) for v in value]


class SilenceSettings(Section):
    # The longest a silence may run (`faultmail silence add --for/--until`), seconds: a
    # forgotten silence must not hide faults for ever. Default 7 days.
    max_duration: Annotated[float, Field(gt=0, le=90 * 86400.0)] = 7 * 86400.0


class HealthSettings(Section):
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


# Group and instance names end up in MQTT topic levels and client ids (faultmail-<group>-
# <instance>-ctl), a $share/<group>/ prefix and Message-IDs (<faultmail.<group>.<kind>...>):
# no '/', '+', '#', '$' or '.' there. 32 each keeps the longest client id at 79 characters.
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
MEMBER_NAME_RULE = "1 to 32 letters, digits, '_' and '-'"
# Levels beside the instances' own under faultmail/<group>/: an instance named like one would
# have its status topic read as a lease, a block, a route or a held record.
RESERVED_INSTANCES = ("lease", "blocked", "route", "held")


def member_name_problem(value: str) -> str | None:
    """Why `value` cannot be a group or instance name, or None when it can."""
    if not _MEMBER_NAME.fullmatch(value):
        return f"{value!r} is not {MEMBER_NAME_RULE}"
    return None


class ClusterSettings(ClusterBehaviour, Section):
    """How this gateway runs beside others (README "Running more than one gateway")."""

    # "single": alone (the default). "shared": every member ingests through a shared
    # subscription, each device's messages handled by one owner. "standby": the lease holder
    # ingests, the others only deliver their own outbox and wait for the lease.
    mode: Literal["single", "shared", "standby"] = "single"
    # The same on every member: the shared subscription, the group topics, Message-IDs.
    group: str = ""
    # Unique per member; empty: gateway.id (filled in by Settings).
    instance: str = ""
    # Seconds a member must be gone (its status "offline") before a survivor adopts what it
    # held. At most an hour: alerts a dead member holds wait this long.
    takeover_after: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # Seconds a standby waits after claiming the lease before trusting it (another claim
    # that crossed ours shows up within this).
    lease_settle: Annotated[float, Field(ge=0.1, le=30)] = 1.0

    @model_validator(mode="before")
    @classmethod
    def _single_has_no_group(cls, data: Any) -> Any:
        # Alone, a gateway's identities and topics carry no group, so a member taken out of
        # its group (FAULTMAIL_CLUSTER__MODE=single) keeps the group key without it counting.
        if isinstance(data, dict) and data.get("mode", "single") == "single":
            return {**data, "group": ""}
        return data

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        problem = member_name_problem(value) if value else None
        if problem:
            raise ValueError(f"{problem}; use the same name on every member, e.g. brno-gw")
        return value

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        problem = member_name_problem(value) if value else None
        if problem:
            raise ValueError(f"{problem}; name this member uniquely, e.g. gw-a")
        if value in RESERVED_INSTANCES:
            raise ValueError(
                f"{value!r} is a level of the group's own topics "
                f"({', '.join(RESERVED_INSTANCES)}); name this member otherwise, e.g. gw-a"
            )
        return value

    @model_validator(mode="after")
    def _group_required(self) -> ClusterSettings:
        if self.grouped and not self.group:
            raise KeyedError(
                "cluster.group",
                f'mode = "{self.mode}" needs a group: set cluster.group to the same name on '
                f'every member ({MEMBER_NAME_RULE}, e.g. "brno-gw"), or mode = "single"',
            )
        return self


class LogSettings(Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
