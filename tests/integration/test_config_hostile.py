"""A configuration that would fail at send time, or hold text that cannot be encoded, is
refused by `faultmail config check` and by the daemon at start-up (exit 2), naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import DaemonError

pytestmark = pytest.mark.integration

EXIT_CONFIG = 2

FORMAT_CASES = [
    pytest.param({"subject_format": "{message:>99999999999}"}, "mail.subject_format", id="width"),
    pytest.param(
        {"runbook_default": "https://wiki.example.com/{device}/{code}"},
        "mail.runbook_default",
        id="runbook-placeholder",
    ),
]


@pytest.mark.parametrize(("mail", "key"), FORMAT_CASES)
def test_config_check_refuses_format_strings_that_fail_at_send_time(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mail: dict[str, str], key: str
) -> None:
    """`config check` exits 2 naming the format string's key and the allowed placeholders."""
    result = daemon(daemon_config(mail=mail), start=False).cli("config", "check")
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert key in result.stderr and "{code}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("mail", "key"), FORMAT_CASES)
def test_daemon_refuses_to_start_with_a_format_string_that_fails_at_send_time(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mail: dict[str, str], key: str
) -> None:
    """The daemon exits 2 before READY=1 with the key in its output, instead of failing later."""
    dm = daemon(daemon_config(mail=mail), start=False)
    with pytest.raises(DaemonError, match="exited with 2"):
        dm.start()
    assert dm.returncode == EXIT_CONFIG
    assert key in dm.log_text() and "Traceback" not in dm.log_text()


def test_environment_override_that_is_not_utf8_is_refused(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """A FAULTMAIL_* variable holding Latin-1 bytes stops `config check` and the daemon with
    exit 2 naming the key and the variable, instead of breaking a log line or a mail later."""
    env = {"FAULTMAIL_GATEWAY__SITE": "Halle S\udcfcd"}  # the bytes b"Halle S\xfcd"
    dm = daemon(daemon_config(), env=env, start=False)
    result = dm.cli("config", "check")
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert "gateway.site" in result.stderr and "FAULTMAIL_GATEWAY__SITE" in result.stderr
    with pytest.raises(DaemonError, match="exited with 2"):
        dm.start()
    assert "FAULTMAIL_GATEWAY__SITE" in dm.log_text()


def test_secret_file_that_is_not_utf8_is_refused(
    tmp_path: Path, daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """A password file in Latin-1 stops `config check` with exit 2 naming the key and the file."""
    secret = tmp_path / "latin1-password"
    secret.write_bytes(b"Gr\xfcn-und-geheim\n")
    secret.chmod(0o600)
    dm = daemon(daemon_config(smtp={"password_file": str(secret)}), start=False)
    result = dm.cli("config", "check")
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert "smtp.password_file" in result.stderr and str(secret) in result.stderr
    assert "Traceback" not in result.stderr


SHARED_FILTER_CASES = [
    pytest.param(
        {"mqtt": {"topics": ["$share/faultmail/devices/+/fault"]}},
        "mqtt.topics",
        "devices/+/fault",
        id="mqtt-share",
    ),
    pytest.param(
        {"mqtt": {"topics": ["devices/+/fault", "$queue/devices/+/fault"]}},
        "mqtt.topics",
        "devices/+/fault",
        id="mqtt-emqx-queue",
    ),
    pytest.param(
        {
            "routes": [
                {
                    "topics": ["$share/gw/devices/+/fault"],
                    "min_severity": "info",
                    "to": ["ops@example.com"],
                }
            ]
        },
        "routes[0].topics",
        "devices/+/fault",
        id="route-share",
    ),
]


@pytest.mark.parametrize(("tables", "key", "plain"), SHARED_FILTER_CASES)
def test_config_check_refuses_a_shared_subscription_written_by_hand(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    tables: dict[str, object],
    key: str,
    plain: str,
) -> None:
    """A hand-written $share/ (or EMQX's $queue/) filter, which would reach the UID check and
    the routes with its prefix on and match nothing, stops `config check` with exit 2 naming
    the key, the plain filter to write and [cluster] mode = "shared" as the fix."""
    result = daemon(daemon_config(**tables), start=False).cli("config", "check")
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert f"{key}:" in result.stderr, result.stderr
    assert repr(plain) in result.stderr and 'mode = "shared"' in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_refuses_a_group_mode_without_a_group(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """[cluster] mode = "standby" without a group stops `config check` and the daemon with
    exit 2 naming cluster.group, before any group topic or client id is built from nothing."""
    dm = daemon(daemon_config(extra={"cluster": {"mode": "standby"}}), start=False)
    result = dm.cli("config", "check")
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert "cluster.group:" in result.stderr and "same name on every member" in result.stderr
    with pytest.raises(DaemonError, match="exited with 2"):
        dm.start()
    assert "cluster.group" in dm.log_text() and "Traceback" not in dm.log_text()
