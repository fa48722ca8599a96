"""Secrets: the files the configuration names, found in systemd's credentials directory.

Read once at load time; the values are kept as Secret so that no dump or repr shows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from agent.settings.behaviour import Secret
from agent.settings.validation import KeyedError

# True while settings are loaded for a command that never authenticates or signs (the outbox
# listings and `status`): see unread_secrets().
_UNREAD: ContextVar[bool] = ContextVar("faultmail_secrets_unread", default=False)


@contextmanager
def unread_secrets() -> Iterator[None]:
    """Within it, read_secret() reads nothing and returns an empty secret: for the settings of
    a command that only reads the outbox, which must work while the SMTP password or the DKIM
    key is still missing (loading.load_settings(secrets=False) also skips their existence
    checks)."""
    token = _UNREAD.set(True)
    try:
        yield
    finally:
        _UNREAD.reset(token)


def resolve_secret_path(value: str, credential_name: str) -> str:
    """A relative secret path, or an empty one, is looked up in systemd's $CREDENTIALS_DIRECTORY.

    With `LoadCredential=smtp-password:/etc/faultmail/smtp-password` in the unit, the daemon
    finds the secret without having read access to /etc/faultmail itself.
    """
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        candidate = Path(cred_dir) / (value or credential_name)
        if not Path(value).is_absolute() and candidate.is_file():
            return str(candidate)
    return value


def read_secret(path: str, key: str) -> Secret:
    if _UNREAD.get():
        return Secret("")
    # Only the first line counts: editors add a trailing newline that is not part of a password.
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        # A password saved as Latin-1 or UTF-16 would only surface as a login failure, or as
        # text that cannot be logged or sent, at the first alert.
        raise KeyedError(
            key,
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save the secret as UTF-8 (plain ASCII is safest)",
        ) from None
    except OSError as exc:
        raise KeyedError(
            key, f"{path} cannot be read ({exc.strerror}); fix its permissions"
        ) from None
    first = text.splitlines()[0] if text else ""
    if not first.strip():
        # An empty secret would only surface as a login failure at the first alert.
        raise KeyedError(key, f"{path} is empty (or its first line is): put the secret on line 1")
    return Secret(first)
