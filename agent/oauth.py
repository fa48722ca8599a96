"""OAuth 2.0 access tokens for SMTP XOAUTH2.

Microsoft 365 turns SMTP AUTH with passwords off by default from the end of December 2026;
new tenants get only OAuth. Three sources: the client-credentials flow against a token
endpoint (cached, refreshed before expiry), a file another tool keeps fresh, or a command
that prints a token.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.errors import TransientDeliveryError
from agent.sanitize import clean_text, escaped_sample, valid_text
from agent.tls import tls_context

# Refresh this long before the token expires, so a long DATA phase never runs on a dead token.
_REFRESH_MARGIN_S = 300.0
# RFC 6749 A.12: access-token = 1*VSCHAR, VSCHAR = %x20-7E. Anything else (a lone surrogate from
# a "\ud800" JSON escape, a control character, a stray byte) could not be logged, stored or
# sent in AUTH XOAUTH2, so it is refused here as an unusable token.
_TOKEN_CHARS = re.compile(r"[\x20-\x7e]+")
# What a token source may print or hold; a real token is a few kilobytes at most.
_MAX_TOKEN_BYTES = 65536


def _auth_error(detail: str) -> TransientDeliveryError:
    """An unusable token: the mail stays pending, the relay login is tried again later."""
    return TransientDeliveryError("oauth", clean_text(detail, 400), kind="auth")


def _decoded(raw: bytes, source: str) -> str:
    """`raw` as UTF-8 text, or an auth error saying where the first bad byte is."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _auth_error(
            f"{source} bytes that are not UTF-8 at offset {exc.start} "
            f"({escaped_sample(raw[max(0, exc.start - 8) : exc.start + 8], 64)}); "
            "it must give the access token as ASCII text"
        ) from None


def _checked(token: str, source: str) -> str:
    if not _TOKEN_CHARS.fullmatch(token):
        bad = next((ch for ch in token if not _TOKEN_CHARS.fullmatch(ch)), "")
        shown = escaped_sample(bad.encode("utf-8", "surrogatepass"), 16) if bad else "nothing"
        raise _auth_error(
            f"{source} gave something that is not an OAuth access token (character {shown}; "
            "a token is printable ASCII, RFC 6749 A.12)"
        )
    return token


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
                body = response.read(_MAX_TOKEN_BYTES)
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", "replace")
            raise _auth_error(
                f"token endpoint answered {exc.code}: {_error_text(detail)}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _auth_error(f"token endpoint: {exc}") from None
        return self._parse(body)

    def _parse(self, body: bytes) -> tuple[str, float]:
        """The token and its lifetime from the endpoint's JSON answer (RFC 6749 5.1)."""
        try:
            doc = json.loads(body)
        except ValueError as exc:  # not JSON, or not UTF-8 (UnicodeDecodeError)
            raise _auth_error(f"token endpoint sent no JSON ({exc})") from None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise _auth_error("token endpoint sent no access_token")
        return _checked(token, "token endpoint"), _lifetime(doc.get("expires_in"))


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
        # json.loads turns a "\ud800" escape into a lone surrogate: made valid before it is
        # stored in the audit log or logged.
        return valid_text(str(doc.get("error_description") or doc.get("error") or detail)[:200])
    return detail[:200]


class FileToken:
    """A token another tool keeps fresh in a file (re-read at every login)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    async def token(self) -> str:
        try:
            with self._path.open("rb") as fh:
                raw = fh.read(_MAX_TOKEN_BYTES)
        except OSError as exc:
            raise _auth_error(f"token file: {exc}") from None
        text = _decoded(raw, f"token file {self._path} holds").strip()
        if not text:
            raise _auth_error(f"token file {self._path} is empty")
        return _checked(text.splitlines()[0], f"token file {self._path}")

    def invalidate(self) -> None:
        """Nothing cached."""


class CommandToken:
    """A command that prints a token on stdout (run without a shell, at every login)."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv

    async def token(self) -> str:
        def run() -> str:
            # Bytes, decoded here: text=True would raise UnicodeDecodeError (a ValueError that
            # no delivery error mapping expects) on the first byte that is not UTF-8.
            done = subprocess.run(
                self._argv,
                capture_output=True,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0 or not done.stdout.strip():
                stderr = done.stderr.strip()[:400].decode("utf-8", "backslashreplace")
                raise _auth_error(f"token_command exited {done.returncode}: {stderr}")
            text = _decoded(done.stdout[:_MAX_TOKEN_BYTES], "token_command printed")
            return _checked(text.strip().splitlines()[0], "token_command")

        try:
            return await asyncio.to_thread(run)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _auth_error(f"token_command: {exc}") from None

    def invalidate(self) -> None:
        """Nothing cached."""
