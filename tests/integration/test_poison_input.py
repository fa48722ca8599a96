"""Hostile payloads against the real daemon: each is accounted for, and the next critical alert
from another device is still mailed (issue #12, item 1)."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import fault
from tests.unit.test_properties import json_document

pytestmark = pytest.mark.integration

_HEAD = b'{"code": "E1", "severity": "info", "message": "x"'
# Each poison on its own device, so `alerts --json` tells them apart. The \ud800 escapes are
# ASCII text in the payload, exactly what a device (or an attacker) can publish.
POISONS = {
    "evil-message": b'{"code": "E1", "severity": "info", "message": "x\\ud800"}',
    "evil-code": b'{"code": "E\\ud800", "severity": "info", "message": "x"}',
    "evil-detail-key": _HEAD + b', "details": {"k\\ud800": "v"}}',
    "evil-detail-value": _HEAD + b', "details": {"k": "v\\udfff\\uffff"}}',
    "evil-unknown-key": _HEAD + b', "k\\ud800": 1}',
    "evil-ts": _HEAD + b', "ts": ' + b"9" * 400 + b"}",
    "evil-bom": b"\xef\xbb\xbf" + _HEAD + b"}",
}


def _stored_texts(state_dir: Path, uid: str) -> str:
    """The stored text fields of one device's alerts (not all are in `alerts --json`)."""
    with sqlite3.connect(f"file:{state_dir / 'outbox.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT code, message, details FROM alerts WHERE uid = ?", (uid,)
        ).fetchall()
    return " ".join(str(v) for row in rows for v in row)


def _accounted(alerts: list[dict[str, Any]], uids: set[str]) -> dict[str, dict[str, Any]]:
    """uid → its one alert; every poison stored or rejected with a reason, none lost."""
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts:
        by_uid.setdefault(alert["uid"], []).append(alert)
    assert set(by_uid) >= uids, f"missing: {uids - set(by_uid)}"
    out = {}
    for uid in uids:
        (alert,) = by_uid[uid]
        assert alert["state"] in ("pending", "sent", "rejected", "suppressed"), alert
        if alert["state"] == "rejected":
            assert alert["reason"] and not alert["reason"].startswith("internal_error"), alert
        out[uid] = alert
    return out


def test_poison_payloads_do_not_stop_alerting(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay, tmp_path: Path
) -> None:
    """Lone surrogates in message, code, a details key or value, an unknown key, a 400-digit ts
    and a BOM: each is stored (U+FFFD) or rejected with a reason, and a later critical alert
    from another device is mailed."""
    dm = daemon()
    publish_many(mosquitto, [(f"devices/{uid}/fault", body) for uid, body in POISONS.items()])
    publish_many(mosquitto, [fault("pump-ok", 1)])
    mails = relay.wait_for(len(POISONS) - 1, timeout=30)
    assert any(m.subject.startswith("[CRITICAL] pump-ok E042") for m in mails)
    alerts = dm.wait_for_alerts(
        lambda rows: {r["uid"] for r in rows} >= {*POISONS, "pump-ok"}, timeout=30
    )
    by_uid = _accounted(alerts, set(POISONS))
    assert by_uid["evil-unknown-key"]["state"] == "rejected"
    assert by_uid["evil-unknown-key"]["reason"].startswith("unknown_field")
    assert by_uid["evil-ts"]["state"] == "rejected"
    assert by_uid["evil-ts"]["reason"].startswith("bad_field")
    assert by_uid["evil-bom"]["state"] in ("pending", "sent")
    for uid in ("evil-message", "evil-code", "evil-detail-key", "evil-detail-value"):
        assert by_uid[uid]["state"] in ("pending", "sent")
        assert "\ufffd" in _stored_texts(tmp_path / "state", uid)
    assert dm.running


@pytest.fixture
def hostile_daemon(daemon: DaemonFactory) -> Daemon:
    return daemon()


_example = itertools.count()


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payloads=st.lists(json_document, min_size=1, max_size=8))
def test_generated_hostile_payloads_do_not_stop_alerting(
    hostile_daemon: Daemon, mosquitto: Mosquitto, relay: Relay, payloads: list[str]
) -> None:
    """Whatever JSON text devices publish, each message is accounted for and the next critical
    alert from another device is mailed (one daemon across the examples)."""
    n = next(_example)
    uids = {f"h{n}-{i}": doc.encode("utf-8") for i, doc in enumerate(payloads)}
    before = len(relay.mails)
    publish_many(mosquitto, [(f"devices/{uid}/fault", body) for uid, body in uids.items()])
    canary = f"canary-{n}"
    publish_many(mosquitto, [fault(canary, 1)])
    deadline_mails = relay.wait_for(before + 1, timeout=30)
    while not any(canary in m.subject for m in deadline_mails):
        deadline_mails = relay.wait_for(len(deadline_mails) + 1, timeout=30)
    alerts = hostile_daemon.wait_for_alerts(
        lambda rows: {r["uid"] for r in rows} >= {*uids, canary}, timeout=30
    )
    _accounted(alerts, set(uids))
    assert hostile_daemon.running
