"""DKIM: keys from `dkim keygen` sign mails that dkimpy verifies against the published record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest

from agent.compose import ComposeContext, compose
from agent.errors import ConfigError
from agent.models import Severity
from agent.settings import DkimSettings, load_settings
from agent.signing import DkimSigner, keygen
from tests.harness.dns import dkim_txt_lookup
from tests.unit.conftest import base_config, one_alert_mail


def _mail_bytes() -> bytes:
    mail = one_alert_mail(
        "Low flow",
        uid="p1",
        code="E1",
        severity=Severity.ERROR,
        details={},
        device_ts=None,
        received_at=1_800_000_000.0,
    )
    ctx = ComposeContext(sender="GW <gw@example.com>", gateway_id="gw-1", site="")
    return compose(mail, ctx, 1_800_000_000.0).as_bytes()


def test_rsa_and_ed25519_signatures_verify(tmp_path: Path) -> None:
    """Both signatures verify with the TXT records keygen printed; a changed subject does not."""
    rsa = keygen("s2026", "example.com", tmp_path / "rsa.key", "rsa")
    ed = keygen("e2026", "example.com", tmp_path / "ed.key", "ed25519")
    assert (tmp_path / "rsa.key").stat().st_mode & 0o777 == 0o600
    records = {rsa.dns_name: "".join(rsa.txt_strings), ed.dns_name: "".join(ed.txt_strings)}
    assert all(len(part) <= 255 for part in rsa.txt_strings) and len(rsa.txt_strings) >= 2
    signer = DkimSigner(
        DkimSettings(
            domain="example.com",
            selector="s2026",
            private_key_file=str(rsa.path),
            ed25519_selector="e2026",
            ed25519_key_file=str(ed.path),
        )
    )
    signed = signer.sign(_mail_bytes())
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed
    verifier = dkim.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=dkim_txt_lookup(records))
    assert verifier.verify(idx=1, dnsfunc=dkim_txt_lookup(records))
    tampered = signed.replace(b"Subject: [ERROR]", b"Subject: [INFO]")
    assert not dkim.DKIM(tampered).verify(idx=0, dnsfunc=dkim_txt_lookup(records))


def test_signature_covers_the_headers_that_matter(tmp_path: Path) -> None:
    """h= lists From, To, Subject, Date, Message-ID and MIME headers, relaxed/relaxed."""
    rsa = keygen("s", "example.com", tmp_path / "k", "rsa")
    signer = DkimSigner(
        DkimSettings(domain="example.com", selector="s", private_key_file=str(rsa.path))
    )
    header = signer.sign(_mail_bytes()).split(b"\r\n\r\n", 1)[0].decode()
    unfolded = "".join(header.split("\r\n"))
    tags = unfolded[unfolded.index("h=") :].split(";")[0].replace(" ", "").replace("\t", "")
    for name in ("from", "to", "subject", "date", "message-id", "content-type", "mime-version"):
        assert name in tags.split("=", 1)[1].split(":")
    assert "c=relaxed/relaxed" in unfolded.replace(" ", "")


def test_openssl_rsa_signature_is_byte_identical_to_dkimpys_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signing through OpenSSL gives exactly the bytes dkimpy's pure-Python RSA gives, and it
    verifies; dkimpy keeps its own path for keys it parses itself."""
    monkeypatch.setattr("time.time", lambda: 1_800_000_000.0)  # t= must not tick between
    rsa = keygen("s", "example.com", tmp_path / "k", "rsa")
    settings = DkimSettings(domain="example.com", selector="s", private_key_file=str(rsa.path))
    fast, slow = DkimSigner(settings), DkimSigner(settings, openssl=False)
    assert fast.openssl and not slow.openssl
    message = _mail_bytes()
    signed = fast.sign(message)
    assert signed == slow.sign(message)
    records = {rsa.dns_name: "".join(rsa.txt_strings)}
    assert dkim.DKIM(signed).verify(dnsfunc=dkim_txt_lookup(records))


def test_unusable_key_is_a_config_error(tmp_path: Path) -> None:
    """A key file that is not a private key stops startup naming the key and the fix."""
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="dkim keygen"):
        DkimSigner(DkimSettings(domain="example.com", selector="s", private_key_file=str(bad)))


def test_dkim_domain_must_align_with_from(
    tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """DMARC alignment: a d= domain other than the From domain is refused at startup."""
    key = keygen("s", "other.test", tmp_path / "k", "rsa")
    doc = base_config(tmp_path)
    doc["dkim"] = {"domain": "other.test", "selector": "s", "private_key_file": str(key.path)}
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(doc))
    assert "DMARC" in dict(info.value.problems)["dkim.domain"]
