"""The one TLS client policy shared by the MQTT and SMTP sides."""

from __future__ import annotations

import ssl


def tls_context(ca_file: str, client_cert: str = "", client_key: str = "") -> ssl.SSLContext:
    """Verified TLS 1.2+ with host name checks; the system store unless a CA file is given."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    # Debian's default leaves the floor to OpenSSL's security level; state ours explicitly.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key or None)
    return ctx
