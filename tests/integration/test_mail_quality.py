"""Mail as operations read it, end to end: grouping, threading, multipart, escaping, DKIM."""

from __future__ import annotations

import json
from pathlib import Path

import dkim
import pytest

from agent.signing import keygen
from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.dns import dkim_txt_lookup
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, fault

pytestmark = pytest.mark.integration


def test_200_repeats_thread_and_dkim(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """200 repeats of one fault make 2 mails in one thread; a resolve makes a third; all signed."""
    key = keygen("t1", "example.com", tmp_path / "dkim.key")
    dm = daemon(
        daemon_config(
            mail={"repeat_window": 3.0},
            extra={
                "dkim": {
                    "domain": "example.com",
                    "selector": "t1",
                    "private_key_file": str(key.path),
                }
            },
        )
    )
    publish_many(mosquitto, [fault("pump-17", i) for i in range(1, 201)])
    first, followup = relay.wait_for(2, timeout=20)
    publish_many(mosquitto, [fault("pump-17", 201, state="resolved")])
    resolved = relay.wait_for(3, timeout=20)[2]
    alerts = dm.wait_for_alerts(all_settled(201))
    assert len(relay.mails) == 3
    assert followup.message["X-Faultmail-Kind"] == "followup"
    assert followup.message["In-Reply-To"] == first.message_id
    assert resolved.message["References"] == first.message_id
    assert str(resolved.message["Subject"]).startswith("[RESOLVED] pump-17 E042")
    followup_plain = followup.message.get_body(("plain",))
    assert followup_plain is not None
    text = followup_plain.get_content()
    assert "E042 on pump-17 occurred 199 more times since" in text
    carried = {a["message_id"] for a in alerts}
    assert carried == {m.message_id for m in relay.mails}
    records = {key.dns_name: "".join(key.txt_strings)}
    assert all(dkim.verify(m.data, dnsfunc=dkim_txt_lookup(records)) for m in relay.mails)


def test_hostile_device_text_cannot_add_headers_or_markup(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """CRLF, encoded-word and HTML in device text: no extra header, no live markup."""
    daemon()
    payload = {
        "code": "E1\r\nBcc: evil@evil.test",
        "severity": "critical",
        "message": "=?UTF-8?Q?=0A?=Bcc: evil2@evil.test <script>alert(1)</script>",
        "details": {"<b>k</b>": "<img src=x onerror=alert(2)>"},
    }
    publish_many(mosquitto, [("devices/pump-1/fault", json.dumps(payload).encode())])
    (mail,) = relay.wait_for(1)
    msg = mail.message
    assert msg["Bcc"] is None and list(mail.rcpt_tos) == ["ops@example.com"]
    header_block = mail.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in header_block
    assert msg.get_content_type() == "multipart/alternative"
    html_part = msg.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img" not in html and "&lt;b&gt;k&lt;/b&gt;" in html
    plain_part = msg.get_body(("plain",))
    assert plain_part is not None
    assert "<script>alert(1)</script>" in plain_part.get_content()
