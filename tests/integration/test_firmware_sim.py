"""firmware-sim drives the real daemon from a scenario file, as field staff use it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import DaemonFactory
from tests.harness.firmware import FIRMWARE_SIM
from tests.harness.mosquitto import Mosquitto
from tests.harness.relay import Relay
from tests.integration.support import all_settled, states

pytestmark = pytest.mark.integration


def test_field_check_scenario_file_is_fully_accounted_for(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """The shipped field-check scenario: 11 messages, 10 mails, 1 rejected, nothing pending."""
    dm = daemon()
    scenario = FIRMWARE_SIM.parent / "scenarios" / "field-check.toml"
    done = subprocess.run(
        [
            sys.executable,
            str(FIRMWARE_SIM),
            "--host",
            mosquitto.host,
            "--port",
            str(mosquitto.port),
            "--scenario-file",
            str(scenario),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 11
    relay.wait_for(10, timeout=20)
    alerts = dm.wait_for_alerts(all_settled(11))
    assert states(alerts) == {"sent": 10, "rejected": 1}
