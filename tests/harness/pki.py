"""A throw-away certificate authority for the broker, the relay and the daemon (trustme).

Every `TestPKI` is its own CA; `TestPKI.unrelated()` (or simply a second instance) gives a CA
that nothing else trusts, for "wrong CA" tests.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_IDENTITIES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class ServerCertFiles:
    """PEM files for a TLS server: certificate chain, private key and the CA that signed them."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class ClientCertFiles:
    """PEM files for a TLS client certificate (mutual TLS), and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def _write_leaf(leaf: trustme.LeafCert, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write ``{stem}.pem`` (leaf + chain) and ``{stem}.key`` (mode 0600) into directory."""
    cert = directory / f"{stem}.pem"
    key = directory / f"{stem}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return cert, key


class TestPKI:
    """One CA; issues server certificates for localhost/127.0.0.1 and client certificates."""

    __test__ = False  # a harness class, not a pytest test class

    def __init__(self, name: str = "faultmail test CA") -> None:
        self.name = name
        self.ca = trustme.CA(organization_name=name)
        self._server_certs: dict[tuple[str, ...], trustme.LeafCert] = {}

    @classmethod
    def unrelated(cls) -> TestPKI:
        """A second, independent CA: certificates from it must be refused by our clients."""
        return cls(name="unrelated test CA")

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def ca_file(self, directory: Path) -> Path:
        """Write this CA's certificate as ``ca.pem`` in directory and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def _server_leaf(self, identities: tuple[str, ...]) -> trustme.LeafCert:
        leaf = self._server_certs.get(identities)
        if leaf is None:
            leaf = self.ca.issue_cert(*identities)
            self._server_certs[identities] = leaf
        return leaf

    def server_cert_files(
        self,
        directory: Path,
        *,
        identities: tuple[str, ...] = SERVER_IDENTITIES,
        not_after: datetime.datetime | None = None,
        stem: str = "server",
    ) -> ServerCertFiles:
        """Write ``{stem}.pem`` (leaf + chain), ``{stem}.key`` and ``ca.pem`` into directory.

        The default certificate names "localhost" and "127.0.0.1"; pass other identities for
        host-name mismatch tests, or a past ``not_after`` for an expired certificate.
        """
        directory.mkdir(parents=True, exist_ok=True)
        if not_after is None:
            leaf = self._server_leaf(identities)
        else:
            leaf = self.ca.issue_cert(
                *identities,
                not_before=not_after - datetime.timedelta(days=30),
                not_after=not_after,
            )
        cert, key = _write_leaf(leaf, directory, stem)
        return ServerCertFiles(cert=cert, key=key, ca=self.ca_file(directory))

    def client_cert_files(self, directory: Path, name: str) -> ClientCertFiles:
        """Write ``{name}.pem`` and ``{name}.key`` (a client certificate with CN=name)."""
        directory.mkdir(parents=True, exist_ok=True)
        leaf = self.ca.issue_cert(name, common_name=name)
        cert, key = _write_leaf(leaf, directory, name)
        return ClientCertFiles(cert=cert, key=key, ca=self.ca_file(directory))

    def server_ssl_context(self, identities: tuple[str, ...] = SERVER_IDENTITIES) -> ssl.SSLContext:
        """A server-side context presenting the certificate for identities (TLS 1.2 or later)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server_leaf(identities).configure_cert(context)
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA, with host-name checks on."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        return context
