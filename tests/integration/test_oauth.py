"""XOAUTH2 submission with tokens from a real HTTPS token endpoint on loopback (the OAuth 2.0
client-credentials flow Microsoft 365 uses), cached and refreshed when the relay refuses one."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory, write_secret
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, audit, eventually, fault

pytestmark = pytest.mark.integration
CLIENT_SECRET = "entra-client-secret-42"


class TokenEndpoint:
    """An HTTPS token endpoint: checks the client-credentials form and hands out `current`."""

    def __init__(self, pki: TestPKI) -> None:
        self.current = "token-1"
        self.requests: list[dict[str, list[str]]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                endpoint.requests.append(form)
                ok = form.get("grant_type") == ["client_credentials"] and form.get(
                    "client_secret"
                ) == [CLIENT_SECRET]
                body = (
                    {"access_token": endpoint.current, "expires_in": 3600, "token_type": "Bearer"}
                    if ok
                    else {"error": "invalid_client"}
                )
                data = json.dumps(body).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = pki.server_ssl_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def endpoint(pki: TestPKI) -> Iterator[TokenEndpoint]:
    server = TokenEndpoint(pki)
    yield server
    server.close()


def test_xoauth2_with_client_credentials_cached_and_refreshed(
    tmp_path: Path,
    pki: TestPKI,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    endpoint: TokenEndpoint,
) -> None:
    """One token serves many mails; when the relay refuses it, a fresh one is fetched."""
    with Relay(tmp_path / "oauth-relay", pki, mode="starttls", oauth_tokens={"token-1"}) as relay:
        secret = write_secret(tmp_path / "client-secret", CLIENT_SECRET)
        dm = daemon(
            daemon_config(
                smtp={
                    "port": relay.port,
                    "password_file": None,
                    "auth": "xoauth2",
                    "connections": 1,  # one session: its logins show the token's life
                    "oauth": {
                        "token_url": f"https://localhost:{endpoint.port}/{{tenant_id}}/oauth2/v2.0/token",
                        "tenant_id": "contoso",
                        "client_id": "faultmail-gw",
                        "client_secret_file": str(secret),
                        "ca_file": str(relay.ca_file),
                    },
                }
            )
        )
        publish_many(mosquitto, [fault(f"p{i}", 1) for i in range(3)])
        relay.wait_for(3, timeout=15)
        assert len(endpoint.requests) == 1  # cached: one token for all three mails
        assert endpoint.requests[0]["client_id"] == ["faultmail-gw"]
        assert [(a.mechanism, a.success, a.tls) for a in relay.auth_attempts] == [
            ("XOAUTH2", True, True)
        ]
        # The tenant revokes the token: the relay refuses it, faultmail fetches a new one.
        relay.oauth_tokens = {"token-2"}
        endpoint.current = "token-2"
        relay.stop()
        relay.start()  # drops the authenticated connection
        publish_many(mosquitto, [fault("p9", 1)])
        relay.wait_for(4, timeout=30)
        assert len(endpoint.requests) == 2
        dm.wait_for_alerts(all_settled(4))
        assert CLIENT_SECRET not in dm.log_text() and "token-1" not in dm.log_text()


def test_xoauth2_token_from_a_command(
    tmp_path: Path,
    pki: TestPKI,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
) -> None:
    """token_command: the token another tool prints is used for XOAUTH2."""
    with Relay(tmp_path / "cmd-relay", pki, mode="starttls", oauth_tokens={"cmd-token"}) as relay:
        daemon(
            daemon_config(
                smtp={
                    "port": relay.port,
                    "password_file": None,
                    "auth": "xoauth2",
                    "oauth": {"token_command": ["/bin/echo", "cmd-token"]},
                }
            )
        )
        publish_many(mosquitto, [fault("p1", 1)])
        relay.wait_for(1, timeout=15)
        assert relay.auth_attempts[0].mechanism == "XOAUTH2"


def test_token_command_printing_bytes_that_are_not_utf8_is_an_auth_retry(
    tmp_path: Path,
    pki: TestPKI,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
) -> None:
    """A token_command printing bytes that are not UTF-8 keeps the mail pending with an auth
    retry in the audit and the daemon running; once the command is fixed the mail goes out."""
    fixed = tmp_path / "token-fixed"
    command = tmp_path / "print-token"
    command.write_text(
        f"#!/bin/sh\nif [ -e {fixed} ]; then echo cmd-token; else printf 'eyJ0\\377\\376\\n'; fi\n"
    )
    command.chmod(0o700)
    with Relay(tmp_path / "cmd-relay", pki, mode="starttls", oauth_tokens={"cmd-token"}) as relay:
        dm = daemon(
            daemon_config(
                smtp={
                    "port": relay.port,
                    "password_file": None,
                    "auth": "xoauth2",
                    "oauth": {"token_command": [str(command)]},
                }
            )
        )
        publish_many(mosquitto, [fault("p1", 1)])
        retries = eventually(
            lambda: [r for r in audit(dm) if r["outcome"] == "retry:auth"],
            what="an auth retry in the audit",
        )
        assert "not UTF-8" in retries[0]["detail"], retries
        assert [a["state"] for a in dm.alerts()] == ["pending"]
        assert relay.mails == [] and dm.running
        fixed.touch()
        relay.wait_for(1, timeout=30)
        dm.wait_for_alerts(all_settled(1))
        assert [a["state"] for a in dm.alerts()] == ["sent"]
        assert dm.running
