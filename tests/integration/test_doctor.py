"""`faultmail doctor` as a whole against real servers (Mosquitto, an aiosmtpd relay, a DNS
server on a loopback port): a healthy gateway is all OK, the running daemon is left alone, and
the output and exit codes. The check families have their own files: test_doctor_relay,
test_doctor_broker, test_doctor_dns, test_doctor_clock, test_doctor_local."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent import doctor
from agent.doctor import Check, Status
from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.dns import DnsServer
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.conftest import SettingsFactory, by_name, run
from tests.integration.support import fault

pytestmark = pytest.mark.integration


def test_healthy_gateway_is_all_ok(
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    dated_relay: Relay,
    mosquitto: Mosquitto,
) -> None:
    """Against a healthy broker, relay and DNS every check is OK, the exit code 0, and the
    relay saw a login but no mail."""
    settings = settings_for(smtp={"port": dated_relay.port, "ehlo_name": "gw-test-01.example.com"})
    checks = run(settings, dns_server)
    text = doctor.format_checks(checks)
    assert [c.status for c in checks] == [Status.OK] * len(checks), text
    assert doctor.exit_code(checks) == 0
    found = by_name(checks)
    assert list(found) == [
        "config",
        "state dir",
        "database",
        "disk",
        "broker",
        "broker TLS",
        "broker login",
        "broker subscribe",
        "group",
        "relay EHLO name",
        "relay",
        "relay STARTTLS",
        "relay TLS",
        "relay EHLO",
        "relay AUTH",
        "provider limits",
        "DKIM rsa",
        "DKIM ed25519",
        "SPF",
        "DMARC",
        "clock",
    ]
    assert "certificate valid for localhost, expires in" in found["relay TLS"].detail
    assert "AUTH" in found["relay EHLO"].detail and "SIZE" in found["relay EHLO"].detail
    assert "allows this gateway (127.0.0.1" in found["SPF"].detail
    assert "p=reject, adkim=strict" in found["DMARC"].detail
    assert "the relay's clock" in found["clock"].detail
    assert [a.success for a in dated_relay.auth_attempts] == [True]
    assert dated_relay.mails == [] and dated_relay.attempts == []
    assert all(q.transport in ("udp", "tcp") for q in dns_server.queries)
    # One line per check, and no fix lines when everything is OK.
    assert len(text.splitlines()) == len(checks) and "fix:" not in text


def test_doctor_leaves_the_running_daemons_session_alone(
    daemon: DaemonFactory,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """Doctor logs in as "<client id>-doctor" on a clean session: the running daemon keeps its
    connection and still mails an alert published right after."""
    settings = settings_for()
    dm = daemon()
    found = by_name(run(settings, dns_server))
    assert found["broker subscribe"].status is Status.OK
    assert "faultmail-gw-test-01-doctor" in found["broker login"].detail
    publish_many(mosquitto, [fault("pump-1", 1)])
    (mail,) = relay.wait_for(1, timeout=15)
    assert mail.message["X-Faultmail-Device"] == "pump-1"
    assert "already connected, closing old connection" not in mosquitto.log_text()
    assert dm.running


def test_main_prints_aligned_lines_and_exit_codes(
    tmp_path: Path,
    daemon_config: DaemonConfigFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """main() prints one aligned line per check with the fix under WARN/FAIL, and returns 1
    when something failed, 2 for an invalid config."""
    relay.stop()
    out = io.StringIO()
    code = doctor.main(daemon_config(), resolver=dns_server.address, timeout=3.0, out=out)
    lines = out.getvalue().splitlines()
    assert code == 1
    relay_line = next(line for line in lines if line.startswith("FAIL  relay"))
    detail_column = relay_line.index("cannot connect")
    fix_line = lines[lines.index(relay_line) + 1]
    assert fix_line.index("fix: ") == detail_column
    assert all(line[:6] in ("OK    ", "WARN  ", "FAIL  ") or line.startswith(" ") for line in lines)

    bad = tmp_path / "bad.toml"
    bad.write_text(daemon_config().read_text().replace("security = ", "security_typo = "))
    out = io.StringIO()
    assert doctor.main(bad, out=out) == 2
    assert "FAIL  config" in out.getvalue() and "smtp.security" in out.getvalue()

    out = io.StringIO()
    assert doctor.main(daemon_config(), resolver="dns.example.com", out=out) == 2
    assert "--resolver dns.example.com" in out.getvalue()


def test_exit_code_and_format() -> None:
    """WARN alone keeps exit code 0; any FAIL makes it 1; fixes sit under the detail column."""
    checks = [
        Check("disk", Status.OK, "9 GiB free"),
        Check("clock", Status.WARN, "could not compare", "enable NTP"),
    ]
    assert doctor.exit_code(checks) == 0
    assert doctor.exit_code([*checks, Check("relay", Status.FAIL, "down", "start it")]) == 1
    assert doctor.format_checks(checks).splitlines() == [
        "OK    disk   9 GiB free",
        "WARN  clock  could not compare",
        "             fix: enable NTP",
    ]
    assert doctor.parse_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert doctor.parse_resolver("[::1]:53") == ("::1", 53)
    assert doctor.parse_resolver("10.0.0.1") == ("10.0.0.1", 53)
