"""Fixtures: a real broker, a real relay and the daemon, each private to a test and torn down."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon import Daemon, write_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.group import GROUP, Group, Member
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.postfix import Postfix
from tests.harness.relay import Relay

SMTP_USER = "gw@example.com"
GATEWAY_ID = "gw-test-01"
FAULT_TOPIC = "devices/+/fault"


@dataclass(frozen=True)
class Credentials:
    """A username, its password and the 0600 file that holds the password (the daemon reads it)."""

    username: str
    password: str
    password_file: Path


def write_secret(path: Path, secret: str) -> Path:
    """Write a secret file readable by its owner only (as an operator would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secret + "\n")
    return path


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    """One throw-away CA for the whole run; the daemon trusts it through ca_file."""
    return TestPKI()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """An anonymous Mosquitto with persistence on, private to the test."""
    broker = Mosquitto(tmp_path / "mosquitto", persistence=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.resume()
        broker.stop()


@pytest.fixture
def relay_credentials(tmp_path: Path) -> Credentials:
    password = secrets.token_urlsafe(18)
    return Credentials(SMTP_USER, password, write_secret(tmp_path / "smtp-password", password))


@pytest.fixture
def relay(tmp_path: Path, pki: TestPKI, relay_credentials: Credentials) -> Iterator[Relay]:
    """A STARTTLS submission relay requiring AUTH as gw@example.com."""
    server = Relay(
        tmp_path / "relay",
        pki,
        mode="starttls",
        users={relay_credentials.username: relay_credentials.password},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postfix(tmp_path: Path, pki: TestPKI, relay_credentials: Credentials) -> Iterator[Postfix]:
    """A real Postfix submission service on a loopback port: STARTTLS only, Cyrus SASL login
    as gw@example.com, bare LF refused, a size limit; ops@example.com's mail in a Maildir.
    Its log is kept as postfix/maillog in the test's tmp dir."""
    server = Postfix(
        pki,
        {relay_credentials.username: relay_credentials.password},
        log_copy=tmp_path / "postfix" / "maillog",
    )
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    """A real dnsmasq, authoritative for example.com on a loopback port; not started: the test
    adds its TXT records, then calls start()."""
    server = Dnsmasq(tmp_path / "dnsmasq")
    try:
        yield server
    finally:
        server.close()


DaemonConfigFactory = Callable[..., Path]


@pytest.fixture
def daemon_config(
    tmp_path: Path, mosquitto: Mosquitto, relay: Relay, relay_credentials: Credentials
) -> DaemonConfigFactory:
    """A factory writing the daemon config that points at this test's broker and relay.

    Keyword arguments mqtt=, smtp=, policy=, delivery=, logging=, mail=, flood= update that
    table (a None value removes the key); routes= replaces the routes; gateway_id=, site=,
    state_dir=, extra= and name= (the file name) are passed through.
    """

    def factory(
        *,
        name: str = "faultmail.toml",
        gateway_id: str = GATEWAY_ID,
        state_dir: Path | None = None,
        site: str | None = "Test site",
        mqtt: dict[str, Any] | None = None,
        smtp: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
        delivery: dict[str, Any] | None = None,
        logging: dict[str, Any] | None = None,
        mail: dict[str, Any] | None = None,
        flood: dict[str, Any] | None = None,
        routes: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        mqtt_table: dict[str, Any] = {
            "host": mosquitto.host,
            "port": mosquitto.port,
            "protocol": "5",
            "tls": mosquitto.ca_file is not None,
            "ca_file": str(mosquitto.ca_file or ""),
            "username": "",
            "password_file": "",
            "client_id": f"faultmail-{gateway_id}",
            "topics": [FAULT_TOPIC],
        }
        smtp_table: dict[str, Any] = {
            "host": "localhost",
            "port": relay.port,
            "security": "tls" if relay.mode == "tls" else "starttls",
            "ca_file": str(relay.ca_file or ""),
            "username": relay_credentials.username,
            "password_file": str(relay_credentials.password_file),
            "from": f"Gateway Test <{relay_credentials.username}>",
            "timeout": 10,
        }
        policy_table: dict[str, Any] = {
            "allowed_domains": ["example.com"],
            "allowed_recipients": [],
        }
        delivery_table: dict[str, Any] = {"retry_initial": 0.5, "retry_max": 5.0}
        logging_table: dict[str, Any] = {"format": "json", "level": "info"}
        # Grouping and the per-device mail budget off unless a test turns them on: most tests
        # count one mail per alert.
        mail_table: dict[str, Any] = {"repeat_window": 0, "device_budget": 0}
        # Flood limits far above what the mechanics tests send; flood tests set their own.
        flood_table: dict[str, Any] = {"rate": 10000.0, "burst": 100000, "block_threshold": 1000000}
        for table, update in (
            (mqtt_table, mqtt),
            (smtp_table, smtp),
            (policy_table, policy),
            (delivery_table, delivery),
            (logging_table, logging),
            (mail_table, mail),
            (flood_table, flood),
        ):
            table.update(update or {})
        return write_config(
            tmp_path / name,
            gateway_id=gateway_id,
            state_dir=state_dir or tmp_path / "state",
            site=site,
            mqtt=mqtt_table,
            smtp=smtp_table,
            policy=policy_table,
            delivery=delivery_table,
            logging=logging_table,
            routes=routes
            if routes is not None
            else [{"topics": [FAULT_TOPIC], "min_severity": "info", "to": ["ops@example.com"]}],
            extra={"mail": mail_table, "flood": flood_table, **(extra or {})},
        )

    return factory


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemon(tmp_path: Path, daemon_config: DaemonConfigFactory) -> Iterator[DaemonFactory]:
    """A factory starting the daemon (config from daemon_config() unless given); killed after."""
    started: list[Daemon] = []

    def factory(
        config_path: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        start: bool = True,
        timeout: float = 15.0,
    ) -> Daemon:
        path = config_path if config_path is not None else daemon_config()
        instance = Daemon(path, tmp_path / f"daemon-{len(started)}", env=env)
        started.append(instance)
        if start:
            instance.start(timeout)
        return instance

    try:
        yield factory
    finally:
        for instance in started:
            instance.close()


GroupFactory = Callable[..., Group]


@pytest.fixture
def group(
    tmp_path: Path,
    mosquitto: Mosquitto,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
) -> GroupFactory:
    """A factory for a faultmail group ([cluster], issue 17) on this test's broker and relay.

    group(mode, ["gw-a", "gw-b"], cluster={...}, start=True, **daemon_config keywords): one
    member per instance name, each with gateway id = instance, its own config file, state dir
    and client id, started in the order given (start=False: none started). The [cluster]
    table is mode, group GROUP, the instance, takeover_after 2 s and lease_settle 0.5 s,
    updated by cluster=. Members are killed after the test with the other daemons.
    """

    def factory(
        mode: str,
        instances: list[str],
        *,
        cluster: dict[str, Any] | None = None,
        start: bool = True,
        **config: Any,
    ) -> Group:
        members = []
        for instance in instances:
            table: dict[str, Any] = {
                "mode": mode,
                "group": GROUP,
                "instance": instance,
                "takeover_after": 2.0,
                "lease_settle": 0.5,
                **(cluster or {}),
            }
            state_dir = tmp_path / f"state-{instance}"
            path = daemon_config(
                name=f"{instance}.toml",
                gateway_id=instance,
                state_dir=state_dir,
                **{**config, "extra": {**config.get("extra", {}), "cluster": table}},
            )
            members.append(Member(instance, daemon(path, start=False), state_dir))
        built = Group(mosquitto, GROUP, members)
        if start:
            built.start()
        return built

    return factory
