"""DKIM signatures with dkimpy: rsa-sha256, and optionally ed25519-sha256 as well (RFC 8463).

Named signing.py, not dkim.py, so that it does not shadow dkimpy's own `dkim` module.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import dkim

from agent.errors import ConfigError
from agent.settings import DkimSettings

# What a receiver checks and what an attacker would like to change. From, To and Subject are
# listed once more than they occur ("over-signing", RFC 6376 8.15): adding a second one later
# breaks the signature. Absent headers are signed as absent.
SIGNED_HEADERS = [
    b"from",
    b"from",
    b"to",
    b"to",
    b"subject",
    b"subject",
    b"date",
    b"message-id",
    b"references",
    b"in-reply-to",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"auto-submitted",
]
_CANON = (b"relaxed", b"relaxed")


@dataclass(frozen=True, slots=True)
class _Key:
    selector: bytes
    algorithm: bytes
    material: bytes


class DkimSigner:
    """Signs composed mails. Keys are read and test-signed once at startup."""

    def __init__(self, settings: DkimSettings) -> None:
        self.domain = settings.domain.encode()
        self._keys = [
            _Key(
                settings.selector.encode(),
                b"rsa-sha256",
                Path(settings.private_key_file).read_bytes(),
            )
        ]
        if settings.ed25519_key_file:
            self._keys.append(
                _Key(
                    settings.ed25519_selector.encode(),
                    b"ed25519-sha256",
                    Path(settings.ed25519_key_file).read_bytes().strip(),
                )
            )
        probe = b"From: a@" + self.domain + b"\r\nSubject: probe\r\n\r\nprobe\r\n"
        for key, name in zip(self._keys, ("private_key_file", "ed25519_key_file"), strict=False):
            try:
                self._sign_one(probe, key)
            except dkim.DKIMException as exc:
                raise ConfigError(
                    [
                        (
                            f"dkim.{name}",
                            f"cannot sign with this key: {exc}; "
                            "make one with `faultmail dkim keygen`",
                        )
                    ]
                ) from None

    def _sign_one(self, message: bytes, key: _Key) -> bytes:
        header: bytes = dkim.sign(
            message,
            key.selector,
            self.domain,
            key.material,
            canonicalize=_CANON,
            signature_algorithm=key.algorithm,
            include_headers=SIGNED_HEADERS,
        )
        return header

    def sign(self, message: bytes) -> bytes:
        """The message with one DKIM-Signature header per configured key prepended."""
        headers = b"".join(self._sign_one(message, key) for key in self._keys)
        return headers + message


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    path: Path
    dns_name: str
    txt_strings: list[str]

    def zone_line(self) -> str:
        quoted = " ".join(f'"{part}"' for part in self.txt_strings)
        return f"{self.dns_name}. IN TXT ( {quoted} )"


def keygen(selector: str, domain: str, out: Path, kind: str = "rsa") -> GeneratedKey:
    """Write a new private key (mode 0600) and return the DNS TXT record to publish."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        material = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    else:
        edkey = ed25519.Ed25519PrivateKey.generate()
        seed = edkey.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        material = base64.b64encode(seed) + b"\n"
        raw_public = edkey.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw_public).decode()}"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(material)
    # RFC 7208 3.3 / RFC 1035: one TXT character-string holds at most 255 octets.
    parts = [record[i : i + 255] for i in range(0, len(record), 255)]
    return GeneratedKey(out, f"{selector}._domainkey.{domain}", parts)
