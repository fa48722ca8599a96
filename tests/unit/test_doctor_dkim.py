"""doctor.dkim: our key against the TXT records published for it, without DNS."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agent.doctor.dkim import DkimKey, KeySetting, compare_record, dkim_checks, key_from_file
from agent.doctor.result import Status
from agent.settings import Settings, load_settings
from agent.signing import dkim_public_bytes, dkim_record, zone_line
from tests.harness.dns import CannedLookups
from tests.unit.conftest import base_config

RSA_SETTING = KeySetting(
    "DKIM rsa", "gw2026", "example.com", "/etc/faultmail/dkim.key", "rsa", "dkim.private_key_file"
)
ED_SETTING = KeySetting(
    "DKIM ed25519",
    "gw2026e",
    "example.com",
    "/etc/faultmail/ed.key",
    "ed25519",
    "dkim.ed25519_key_file",
)


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private: rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def ours(rsa_private: rsa.RSAPrivateKey) -> DkimKey:
    return key_from_file(pem(rsa_private), "rsa")


def test_the_published_public_half_is_ok(ours: DkimKey) -> None:
    """The record keygen prints, published as is, is OK naming the key size."""
    check = compare_record(RSA_SETTING, ours, [dkim_record("rsa", ours.public)])
    assert check.status is Status.OK
    assert check.detail == (
        "gw2026._domainkey.example.com publishes the public half of "
        "/etc/faultmail/dkim.key (RSA 2048)"
    )


def test_pkcs1_form_of_the_same_key_is_ok(rsa_private: rsa.RSAPrivateKey, ours: DkimKey) -> None:
    """A record carrying the key as PKCS#1 RSAPublicKey (as some publish it) still matches."""
    pkcs1 = rsa_private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(pkcs1).decode()}"
    assert compare_record(RSA_SETTING, ours, [record]).status is Status.OK


def test_another_key_fails_and_the_fix_is_our_record(ours: DkimKey) -> None:
    """Another key at the selector is a FAIL; the fix is the exact record to publish, in quoted
    strings of at most 255 bytes (a 2048-bit key's record is about 410), as keygen prints it."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    check = compare_record(RSA_SETTING, ours, [dkim_record("rsa", dkim_public_bytes(other))])
    assert check.status is Status.FAIL and "is not the public half of" in check.detail
    record = dkim_record("rsa", ours.public)
    assert len(record) > 255
    assert check.fix.startswith(f"publish {zone_line('gw2026._domainkey.example.com', record)}")
    strings = re.findall(r'"([^"]*)"', check.fix)
    assert len(strings) == 2 and all(len(s.encode()) <= 255 for s in strings)
    assert "".join(strings) == record


def test_missing_duplicate_revoked_and_malformed_records_fail(ours: DkimKey) -> None:
    """No record, two records, an empty p=, another k= and bad base64 are each a FAIL."""
    good = dkim_record("rsa", ours.public)
    cases = {
        "no DKIM record at": None,
        "2 DKIM records at": [good, good],
        "is revoked (empty p=)": ["v=DKIM1; k=rsa; p="],
        "publishes a k=ed25519 key, dkim.private_key_file is rsa": ["v=DKIM1; k=ed25519; p=AAAA"],
        "is not valid base64": ["v=DKIM1; k=rsa; p=not*base64"],
    }
    for expected, records in cases.items():
        check = compare_record(RSA_SETTING, ours, records)
        assert check.status is Status.FAIL and expected in check.detail, check


def test_testing_flag_is_mentioned(ours: DkimKey) -> None:
    """t=y on a matching record keeps the check OK but says the key is in testing mode."""
    record = dkim_record("rsa", ours.public) + "; t=y"
    check = compare_record(RSA_SETTING, ours, [record])
    assert check.status is Status.OK and check.detail.endswith("; t=y (testing) is set")


def test_short_rsa_keys_warn_or_fail(rsa_private: rsa.RSAPrivateKey) -> None:
    """A 1024-bit RSA key is a WARN (under 2048), one under 1024 bits a FAIL."""
    short = key_from_file(
        pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "rsa"
    )
    check = compare_record(RSA_SETTING, short, [dkim_record("rsa", short.public)])
    assert check.status is Status.WARN and "shorter than the 2048 bits" in check.detail
    # cryptography will not make keys under 1024 bits: the verdict only reads the size.
    tiny = DkimKey("rsa", short.public, "RSA 768", 768)
    check = compare_record(RSA_SETTING, tiny, [dkim_record("rsa", tiny.public)])
    assert check.status is Status.FAIL and "under 1024 bits" in check.detail
    assert "faultmail dkim keygen" in check.fix


def test_ed25519_seed_file_matches_its_record() -> None:
    """An Ed25519 key file (base64 seed, as keygen writes it) matches the raw-key record."""
    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    key = key_from_file(base64.b64encode(seed) + b"\n", "ed25519")
    assert key.public == dkim_public_bytes(private) and key.description == "Ed25519"
    assert compare_record(ED_SETTING, key, [dkim_record("ed25519", key.public)]).status is (
        Status.OK
    )


def test_dkim_checks_read_the_key_and_ask_the_selector(
    settings: Settings,
    tmp_path: Path,
    write_config: Callable[[dict[str, Any]], Path],
    rsa_private: rsa.RSAPrivateKey,
    ours: DkimKey,
) -> None:
    """Without [dkim] the line is a WARN that mail goes out unsigned; with it, the key file is
    read and compared with its selector's TXT record."""
    unsigned = asyncio.run(dkim_checks(settings, CannedLookups())).checks
    assert [c.status for c in unsigned] == [Status.WARN] and "unsigned" in unsigned[0].detail
    key_file = tmp_path / "dkim.key"
    key_file.write_bytes(pem(rsa_private))
    dkim = {"domain": "example.com", "selector": "gw2026", "private_key_file": str(key_file)}
    signed = load_settings(write_config(base_config(tmp_path) | {"dkim": dkim}))
    lookups = CannedLookups(
        txt={"gw2026._domainkey.example.com": [dkim_record("rsa", ours.public)]}
    )
    (check,) = asyncio.run(dkim_checks(signed, lookups)).checks
    assert check.name == "DKIM rsa" and check.status is Status.OK, check
    assert lookups.asked == [("gw2026._domainkey.example.com", "TXT")]
