"""DKIM signatures with dkimpy: rsa-sha256, and optionally ed25519-sha256 as well (RFC 8463).

Named signing.py, not dkim.py, so that it does not shadow dkimpy's own `dkim` module.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import canonical
from agent.errors import ConfigError
from agent.imports import without_dnspython

if TYPE_CHECKING:
    from agent.settings import DkimSettings

# dkimpy never needs dnspython here: faultmail signs, it does not verify.
dkim: Any = without_dnspython("dkim")

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


class _Libcrypto:
    """RSA PKCS #1 v1.5 signing through the OpenSSL that Python's own ssl module links.

    dkimpy computes RSA in pure Python: about 6 ms a signature, most of the cost of a mail.
    The cryptography package would do it in 0.3 ms but adds about 8 MB resident (its own
    OpenSSL build), a sixth of the daemon; libcrypto is already mapped for TLS, so six of its
    functions are called directly instead. OpenSSL 3 only (Debian 12 and later); anything
    else keeps dkimpy's pure-Python path.
    """

    _RSA = 6  # EVP_PKEY_RSA
    _PKCS1_PADDING = 1  # RSA_PKCS1_PADDING

    def __init__(self) -> None:
        import _ssl
        import ctypes

        self._ct = ctypes
        lib = ctypes.CDLL(_ssl.__file__)  # dlsym searches _ssl's dependencies: its libcrypto
        vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "BIO_new_mem_buf": (vp, [ctypes.c_char_p, i]),
            "BIO_free": (i, [vp]),
            "PEM_read_bio_PrivateKey": (vp, [vp, vp, vp, vp]),
            "EVP_PKEY_get_base_id": (i, [vp]),
            "EVP_PKEY_get_size": (i, [vp]),
            "EVP_PKEY_free": (None, [vp]),
            "EVP_PKEY_CTX_new": (vp, [vp, vp]),
            "EVP_PKEY_CTX_free": (None, [vp]),
            "EVP_PKEY_sign_init": (i, [vp]),
            "EVP_PKEY_CTX_set_rsa_padding": (i, [vp, i]),
            "EVP_PKEY_CTX_set_signature_md": (i, [vp, vp]),
            "EVP_PKEY_sign": (i, [vp, ctypes.c_char_p, ctypes.POINTER(sz), ctypes.c_char_p, sz]),
            "EVP_sha256": (vp, []),
            "EVP_sha1": (vp, []),
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)  # AttributeError: not OpenSSL 3
            fn.restype, fn.argtypes = restype, argtypes
        self._lib = lib

    def load(self, pem: bytes) -> _RsaKey:
        lib = self._lib
        bio = lib.BIO_new_mem_buf(pem, len(pem))
        if not bio:
            raise MemoryError("OpenSSL could not allocate a buffer")
        try:
            pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, None)
        finally:
            lib.BIO_free(bio)
        if not pkey:
            raise dkim.KeyFormatError("OpenSSL cannot read this PEM private key")
        if lib.EVP_PKEY_get_base_id(pkey) != self._RSA:
            lib.EVP_PKEY_free(pkey)
            raise dkim.KeyFormatError("not an RSA key (rsa-sha256 needs one)")
        return _RsaKey(self, pkey, lib.EVP_PKEY_get_size(pkey))

    def sign(self, key: _RsaKey, digest_name: str, digest: bytes) -> bytes:
        lib, ct = self._lib, self._ct
        md = lib.EVP_sha256() if digest_name == "sha256" else lib.EVP_sha1()
        ctx = lib.EVP_PKEY_CTX_new(key.pkey, None)
        if not ctx:
            raise MemoryError("OpenSSL could not allocate a signing context")
        try:
            out = ct.create_string_buffer(key.size)
            length = ct.c_size_t(key.size)
            ok = (
                lib.EVP_PKEY_sign_init(ctx) > 0
                and lib.EVP_PKEY_CTX_set_rsa_padding(ctx, self._PKCS1_PADDING) > 0
                and lib.EVP_PKEY_CTX_set_signature_md(ctx, md) > 0
                and lib.EVP_PKEY_sign(ctx, out, ct.byref(length), digest, len(digest)) > 0
            )
        finally:
            lib.EVP_PKEY_CTX_free(ctx)
        if not ok:
            raise dkim.DKIMException("OpenSSL refused to sign with the RSA key")
        signature: bytes = out.raw[: length.value]
        return signature

    def free(self, key: _RsaKey) -> None:
        self._lib.EVP_PKEY_free(key.pkey)


class _RsaKey:
    """An RSA private key held by OpenSSL; freed with the signer."""

    def __init__(self, lib: _Libcrypto, pkey: int, size: int) -> None:
        self.lib, self.pkey, self.size = lib, pkey, size

    def __del__(self) -> None:
        self.lib.free(self)


class _OpenSslPem(bytes):
    """A PEM key that also carries the same key loaded into OpenSSL (see _Libcrypto)."""

    openssl: _RsaKey


def _load_rsa(material: bytes, lib: _Libcrypto) -> _OpenSslPem:
    pem = _OpenSslPem(material)
    pem.openssl = lib.load(material)
    return pem


def install_openssl_rsa() -> _Libcrypto | None:
    """Let dkimpy sign with OpenSSL for _OpenSslPem keys; every other key takes dkimpy's own
    path, and the signature is byte-for-byte the same (PKCS #1 v1.5 is deterministic).

    dkimpy has no pluggable RSA backend, so its two RSA entry points are wrapped. Idempotent;
    None (pure Python stays in use) if this dkimpy or OpenSSL lacks what is wrapped.
    """
    parse: Callable[[bytes], Any] | None = getattr(dkim, "parse_pem_private_key", None)
    sign: Callable[[Any, Any], bytes] | None = getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)
    if parse is None or sign is None:
        return None
    installed: _Libcrypto | None = getattr(sign, "faultmail_openssl", None)
    if installed is not None:
        return installed
    try:
        lib = _Libcrypto()
    except (OSError, AttributeError, ImportError):
        return None

    def parse_pem(data: bytes) -> Any:
        return data.openssl if isinstance(data, _OpenSslPem) else parse(data)

    def rsa_sign(hash_obj: Any, key: Any) -> bytes:
        if isinstance(key, _RsaKey):
            return lib.sign(key, hash_obj.name, hash_obj.digest())
        return sign(hash_obj, key)

    rsa_sign.faultmail_openssl = lib  # type: ignore[attr-defined]
    dkim.parse_pem_private_key = parse_pem
    dkim.RSASSA_PKCS1_v1_5_sign = rsa_sign
    return lib


@dataclass(frozen=True, slots=True)
class _Key:
    selector: bytes
    algorithm: bytes
    material: bytes


class DkimSigner:
    """Signs composed mails. Keys are read and test-signed once at startup."""

    def __init__(self, settings: DkimSettings, *, openssl: bool = True) -> None:
        self.domain = settings.domain.encode()
        lib = install_openssl_rsa() if openssl else None
        self.openssl = lib is not None
        # Same signatures with fewer passes over each mail (see agent.canonical).
        self.canonical = canonical.install()
        selector = settings.selector.encode()
        material = Path(settings.private_key_file).read_bytes()
        # dkimpy's own parser first: it accepts only what receivers' dkimpy accepts.
        rsa = self._checked("private_key_file", lambda: _Key(selector, b"rsa-sha256", material))
        if lib is not None:
            rsa = self._checked(
                "private_key_file",
                lambda: _Key(selector, b"rsa-sha256", _load_rsa(material, lib)),
            )
        self._keys = [rsa]
        if settings.ed25519_key_file:
            ed_selector = settings.ed25519_selector.encode()
            ed_material = Path(settings.ed25519_key_file).read_bytes().strip()
            self._keys.append(
                self._checked(
                    "ed25519_key_file", lambda: _Key(ed_selector, b"ed25519-sha256", ed_material)
                )
            )

    def _checked(self, name: str, make: Callable[[], _Key]) -> _Key:
        """The key `make` builds, once it has signed a probe; one that cannot stops startup
        naming the setting."""
        probe = b"From: a@" + self.domain + b"\r\nSubject: probe\r\n\r\nprobe\r\n"
        try:
            key = make()
            self._sign_one(probe, key)
        except dkim.DKIMException as exc:
            raise ConfigError(
                [
                    (
                        f"dkim.{name}",
                        f"cannot sign with this key: {exc}; make one with `faultmail dkim keygen`",
                    )
                ]
            ) from None
        return key

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


# RFC 1035 3.3.14 / RFC 7208 3.3: one TXT character-string holds at most 255 octets; a longer
# value (a 2048-bit RSA key's record is about 410) is published as several strings, which
# receivers join without a separator (RFC 6376 3.6.2.2).
TXT_STRING_MAX = 255


def txt_strings(value: str) -> list[str]:
    """A TXT value cut into character-strings of at most 255 bytes (never inside a UTF-8
    sequence; a DKIM record is ASCII anyway)."""
    data = value.encode()
    parts: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + TXT_STRING_MAX, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte
            end -= 1
        parts.append(data[start:end].decode())
        start = end
    return parts


def zone_line(dns_name: str, value: str) -> str:
    """The TXT record as a zone-file line, its value in quoted strings of at most 255 bytes:
    the form zone files take, and the quoted part the form DNS consoles take."""
    quoted = " ".join(f'"{part}"' for part in txt_strings(value))
    return f"{dns_name}. IN TXT ( {quoted} )"


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    path: Path
    dns_name: str
    record: str

    @property
    def txt_strings(self) -> list[str]:
        return txt_strings(self.record)

    def zone_line(self) -> str:
        return zone_line(self.dns_name, self.record)


def dkim_public_bytes(private: Any) -> bytes:
    """What p= carries for a cryptography private key: DER SubjectPublicKeyInfo for RSA
    (RFC 6376 3.6.1), the raw 32 bytes for Ed25519 (RFC 8463 4.2)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(private, rsa.RSAPrivateKey):
        return private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raw: bytes = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return raw


def dkim_record(kind: str, public: bytes) -> str:
    """The DNS TXT value that publishes a DKIM public key."""
    return f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode()}"


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
        record = dkim_record("rsa", dkim_public_bytes(private))
    else:
        edkey = ed25519.Ed25519PrivateKey.generate()
        seed = edkey.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        material = base64.b64encode(seed) + b"\n"
        record = dkim_record("ed25519", dkim_public_bytes(edkey))
    # O_EXCL: never overwrite a key (the published record would stop matching); O_NOFOLLOW:
    # never write through a link someone planted. fchmod: 0600 whatever the umask, as the
    # unit's LoadCredential= expects of a root-only secret (README.Debian step 3).
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(material)
        fh.flush()
        os.fsync(fh.fileno())
    return GeneratedKey(out, f"{selector}._domainkey.{domain}", record)
