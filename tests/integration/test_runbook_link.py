"""A device's fault code reaches the runbook link only as one percent-encoded path segment."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay

pytestmark = pytest.mark.integration

HOSTILE_CODE = "../../admin/users/delete?all=1#"


def test_hostile_fault_code_cannot_steer_the_runbook_link(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """A device sending code ../../admin/users/delete?all=1# gets a mail whose HTML href stays
    under the runbook path: the code is one percent-encoded segment, no query, no fragment."""
    daemon(daemon_config(mail={"runbook_default": "https://wiki.example.com/runbooks/{code}"}))
    payload = {"code": HOSTILE_CODE, "severity": "critical", "message": "Overpressure", "seq": 1}
    publish_many(mosquitto, [("devices/pump-17/fault", json.dumps(payload).encode())])
    (mail,) = relay.wait_for(1, timeout=15)
    html = mail.message.get_body(("html",))
    assert html is not None
    hrefs = re.findall(r'href="([^"]*)"', html.get_content())
    assert hrefs == [
        "https://wiki.example.com/runbooks/..%2F..%2Fadmin%2Fusers%2Fdelete%3Fall%3D1%23"
    ], hrefs
