"""oauth: what token sources say (lifetimes, bytes, JSON) is read defensively: an unusable
token is an auth retry with a message a technician can act on, never an exception elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.errors import TransientDeliveryError
from agent.oauth import (
    ClientCredentials,
    CommandToken,
    FileToken,
    TokenSource,
    _error_text,
    _lifetime,
)


def test_token_lifetime_from_number_string_or_garbage() -> None:
    """expires_in as a number or numeric string is used; anything else means an hour, never
    an exception that would escape the delivery error mapping."""
    assert _lifetime(120) == 120.0
    assert _lifetime("3599") == 3599.0
    assert _lifetime("soon") == 3600.0
    assert _lifetime(None) == 3600.0
    assert _lifetime([1]) == 3600.0


def _auth_error(source: TokenSource) -> TransientDeliveryError:
    with pytest.raises(TransientDeliveryError) as info:
        asyncio.run(source.token())
    assert info.value.kind == "auth"
    assert str(info.value).encode("utf-8")  # storable in the audit log, loggable
    return info.value


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "token.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)
    return [str(path)]


def test_token_command_printing_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """token_command output that is not UTF-8 is an auth retry saying so, not a crash."""
    error = _auth_error(CommandToken(_script(tmp_path, r"printf 'eyJ0\377\376x\n'")))
    assert "token_command printed bytes that are not UTF-8" in str(error)
    assert "\\xff" in str(error)  # where, shown escaped for the technician


def test_token_command_stderr_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    """A failing token_command's non-UTF-8 stderr ends up escaped in the error, not raised."""
    error = _auth_error(
        CommandToken(_script(tmp_path, r"printf 'Anmeldung gest\366rt' >&2; exit 3"))
    )
    assert "exited 3" in str(error) and "gest\\xf6rt" in str(error)


def test_token_command_printing_control_characters(tmp_path: Path) -> None:
    """A token with characters an OAuth token cannot have (RFC 6749 A.12) is refused."""
    error = _auth_error(CommandToken(_script(tmp_path, r"printf 'tok\033[31men\n'")))
    assert "not an OAuth access token" in str(error)


def test_token_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A token file that is not UTF-8 is an auth retry naming the file, not a crash."""
    path = tmp_path / "token"
    path.write_bytes(b"eyJ0\xe4\n")
    error = _auth_error(FileToken(str(path)))
    assert str(path) in str(error) and "not UTF-8" in str(error)


def test_token_file_with_a_valid_token(tmp_path: Path) -> None:
    """A token file with an ordinary token yields it, trimmed."""
    path = tmp_path / "token"
    path.write_text("eyJ0eXAi.abc-_~+/=\n")
    assert asyncio.run(FileToken(str(path)).token()) == "eyJ0eXAi.abc-_~+/="


class _Endpoint(ClientCredentials):
    """The client-credentials source with the HTTP exchange replaced by a canned JSON body."""

    def __init__(self, body: bytes) -> None:
        super().__init__("https://login.example.invalid/token", "id", "secret", "scope")
        self._body = body

    def _fetch(self) -> tuple[str, float]:
        return self._parse(self._body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token": "eyJ\\ud800x", "expires_in": 3600}',
        b'{"access_token": "eyJ\\u0000x", "expires_in": 3600}',
        b'{"access_token": "eyJ\xffx"}',
        b'{"access_token": 12}',
        b"[1]",
    ],
)
def test_token_endpoint_answer_that_is_no_token(body: bytes) -> None:
    """A JSON answer whose token is a lone surrogate, control, bad byte or no string: auth retry."""
    error = _auth_error(_Endpoint(body))
    assert str(error).startswith("oauth: token endpoint")


def test_token_endpoint_error_text_with_surrogate_escape_is_made_valid() -> None:
    """The endpoint's error_description with a \\ud800 escape becomes valid text in the error."""
    text = _error_text('{"error_description": "AADSTS7000215 \\ud800 bad secret"}')
    assert text.encode("utf-8") and "AADSTS7000215" in text
