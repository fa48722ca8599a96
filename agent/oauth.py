"""OAuth 2.0 access tokens for SMTP XOAUTH2.

Microsoft 365 turns SMTP AUTH with passwords off by default from the end of December 2026;
new tenants get only OAuth. Three sources: the client-credentials flow against a token
endpoint (cached, refreshed before expiry), a file another tool keeps fresh, or a command
that prints a token.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.errors import TransientDeliveryError
from agent.tls import tls_context

# Refresh this long before the token expires, so a long DATA phase never runs on a dead token.
_REFRESH_MARGIN_S = 300.0


class TokenSource(Protocol):
    async def token(self) -> str: ...

    def invalidate(self) -> None: ...


class ClientCredentials:
    """The OAuth 2.0 client-credentials grant (RFC 6749 4.4), as Microsoft Entra ID serves it."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        ca_file: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = token_url
        self._form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
                "scope": scope,
            }
        ).encode()
        self._tls = tls_context(ca_file)
        self._clock = clock
        self._cached: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            now = self._clock()
            if self._cached is not None and now < self._cached[1] - _REFRESH_MARGIN_S:
                return self._cached[0]
            token, lifetime = await asyncio.to_thread(self._fetch)
            self._cached = (token, now + lifetime)
            return token

    def invalidate(self) -> None:
        self._cached = None

    def _fetch(self) -> tuple[str, float]:
        request = urllib.request.Request(
            self._url,
            data=self._form,
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=15, context=self._tls) as response:
                body = json.loads(response.read(65536))
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", "replace")
            raise TransientDeliveryError(
                "oauth",
                f"token endpoint answered {exc.code}: {_error_text(detail)}",
                kind="auth",
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TransientDeliveryError("oauth", f"token endpoint: {exc}", kind="auth") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientDeliveryError(
                "oauth", "token endpoint sent no access_token", kind="auth"
            )
        return token, _lifetime(body.get("expires_in"))


def _lifetime(value: object) -> float:
    """expires_in in seconds (RFC 6749 5.1: a number, some endpoints send it as a string);
    an hour when it is missing or unreadable: the relay refusing the token then fetches anew."""
    if isinstance(value, int | float | str):
        try:
            return float(value)
        except ValueError:
            pass
    return 3600.0


def _error_text(detail: str) -> str:
    try:
        doc = json.loads(detail)
    except ValueError:
        return detail[:200]
    if isinstance(doc, dict):
        return str(doc.get("error_description") or doc.get("error") or detail)[:200]
    return detail[:200]


class FileToken:
    """A token another tool keeps fresh in a file (re-read at every login)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    async def token(self) -> str:
        try:
            text = self._path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TransientDeliveryError("oauth", f"token file: {exc}", kind="auth") from None
        if not text:
            raise TransientDeliveryError("oauth", f"token file {self._path} is empty", kind="auth")
        return text

    def invalidate(self) -> None:
        """Nothing cached."""


class CommandToken:
    """A command that prints a token on stdout (run without a shell, at every login)."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv

    async def token(self) -> str:
        def run() -> str:
            done = subprocess.run(
                self._argv,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0 or not done.stdout.strip():
                raise TransientDeliveryError(
                    "oauth",
                    f"token command exited {done.returncode}: {done.stderr.strip()[:200]}",
                    kind="auth",
                )
            return done.stdout.strip().splitlines()[0]

        try:
            return await asyncio.to_thread(run)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransientDeliveryError("oauth", f"token command: {exc}", kind="auth") from None

    def invalidate(self) -> None:
        """Nothing cached."""
