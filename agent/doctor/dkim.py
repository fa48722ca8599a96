"""The DKIM checks: each configured key (RSA, and Ed25519 when set) against the TXT record at
selector._domainkey.domain. The fix line is always the exact record to publish.

`key_from_file` and `compare_record` are pure (no DNS), so the comparison is unit-tested with
canned records; `dkim_checks` reads the key files and asks the resolver.
"""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agent.doctor.resolver import LookupFailed, Lookups, lookup_warn, tags
from agent.doctor.result import Check, Group, fail, ok, warn
from agent.settings import Settings
from agent.settings.sections import DKIM_KEY_PATHS, keygen_command
from agent.signing import dkim_public_bytes, dkim_record, zone_line

# RFC 8301 3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048 or more.
RSA_MIN_BITS = 1024
RSA_GOOD_BITS = 2048


@dataclass(frozen=True)
class DkimKey:
    """The public half of one of our signing keys."""

    kind: str  # "rsa" / "ed25519"
    public: bytes  # what p= carries, decoded
    description: str
    bits: int = 0


def key_from_file(data: bytes, kind: str) -> DkimKey:
    """The public half of a key file as `faultmail dkim keygen` writes it (dkimpy's formats).
    Raises ValueError or TypeError when data is not such a key."""
    if kind == "rsa":
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return DkimKey(
            "rsa", dkim_public_bytes(private), f"RSA {private.key_size}", private.key_size
        )
    seed = base64.b64decode(data.strip(), validate=True)
    edkey = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return DkimKey("ed25519", dkim_public_bytes(edkey), "Ed25519")


def same_public_key(published: bytes, ours: DkimKey) -> bool:
    """Does p= (decoded) carry our public key?"""
    if published == ours.public:
        return True
    if ours.kind != "rsa":
        return False
    # Some publish PKCS#1 RSAPublicKey instead of SubjectPublicKeyInfo; dkimpy accepts both.
    try:
        theirs = serialization.load_der_public_key(published)
        mine = serialization.load_der_public_key(ours.public)
    except (ValueError, TypeError):
        return False
    return (
        isinstance(theirs, rsa.RSAPublicKey)
        and isinstance(mine, rsa.RSAPublicKey)
        and theirs.public_numbers() == mine.public_numbers()
    )


@dataclass(frozen=True)
class KeySetting:
    """One configured signing key: the check's name, where it is published and which
    setting names its file."""

    name: str  # "DKIM rsa" / "DKIM ed25519"
    selector: str
    domain: str
    path: str
    kind: str  # "rsa" / "ed25519"
    key: str  # the setting, e.g. "dkim.private_key_file"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def compare_record(setting: KeySetting, ours: DkimKey, records: list[str] | None) -> Check:
    """The verdict on the TXT records published at setting.dns_name for our key."""
    name, dns_name, kind, key = setting.name, setting.dns_name, setting.kind, setting.key
    # In quoted strings of at most 255 bytes, as keygen prints it: zone files and DNS consoles
    # take this form, and a 2048-bit key's record is longer than one string may be.
    publish = f"publish {zone_line(dns_name, dkim_record(kind, ours.public))}"
    candidates = [r for r in records or [] if "p" in tags(r)]
    if not candidates:
        return fail(name, f"no DKIM record at {dns_name}: receivers cannot verify", publish)
    if len(candidates) > 1:
        return fail(
            name,
            f"{len(candidates)} DKIM records at {dns_name}: receivers pick one at random",
            f"keep only one: {publish}",
        )
    found = tags(candidates[0])
    published_kind = found.get("k", "rsa").lower()
    p_value = re.sub(r"\s+", "", found.get("p", ""))
    if not p_value:
        return fail(name, f"the key at {dns_name} is revoked (empty p=)", publish)
    if published_kind != kind:
        return fail(
            name,
            f"{dns_name} publishes a k={published_kind} key, {key} is {kind}",
            f"{publish} (or use another selector for the {kind} key)",
        )
    try:
        published = base64.b64decode(p_value, validate=True)
    except ValueError:
        return fail(name, f"the p= value at {dns_name} is not valid base64", publish)
    if not same_public_key(published, ours):
        return fail(
            name,
            f"the key published at {dns_name} is not the public half of {setting.path}: "
            "signatures will fail",
            f"{publish}, or point {key} at the key that matches the published one",
        )
    testing = "; t=y (testing) is set" if "y" in found.get("t", "").split(":") else ""
    detail = f"{dns_name} publishes the public half of {setting.path} ({ours.description}){testing}"
    regenerate = (
        f"make a 2048-bit key: {keygen_command('NEW', setting.domain, 'rsa', setting.path)}"
        f".new, publish its record, then set the selector to NEW and {key} to that file"
    )
    if ours.kind == "rsa" and ours.bits < RSA_MIN_BITS:
        return fail(name, f"{detail}: receivers ignore RSA keys under 1024 bits", regenerate)
    if ours.kind == "rsa" and ours.bits < RSA_GOOD_BITS:
        return warn(name, f"{detail}: shorter than the 2048 bits receivers expect", regenerate)
    return ok(name, detail)


async def dkim_checks(settings: Settings, resolver: Lookups) -> Group:
    """One line per configured key, or a WARN when mail goes out unsigned."""
    dkim = settings.dkim
    if dkim is None:
        domain = settings.smtp.sender_domain
        return Group(
            [
                warn(
                    "DKIM",
                    "not configured: mail goes out unsigned, so DMARC rests on SPF alone",
                    f"{keygen_command('S', domain, 'rsa', DKIM_KEY_PATHS['rsa'])}, publish the "
                    "record it prints, and add a [dkim] section naming that file",
                )
            ]
        )
    keys = [
        KeySetting(
            "DKIM rsa",
            dkim.selector,
            dkim.domain,
            dkim.private_key_file,
            "rsa",
            "dkim.private_key_file",
        )
    ]
    if dkim.ed25519_key_file:
        keys.append(
            KeySetting(
                "DKIM ed25519",
                dkim.ed25519_selector,
                dkim.domain,
                dkim.ed25519_key_file,
                "ed25519",
                "dkim.ed25519_key_file",
            )
        )
    checks = await asyncio.gather(*(_dkim_check(setting, resolver) for setting in keys))
    return Group(list(checks))


async def _dkim_check(setting: KeySetting, resolver: Lookups) -> Check:
    name, path, kind, key = setting.name, setting.path, setting.kind, setting.key
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        # The service never reads the file itself (systemd passes it as a credential), so it
        # stays root's; doctor, run as root like the documented path does, can read it.
        return fail(
            name,
            f"cannot read {key} {path}: {exc.strerror or exc}",
            f"run `faultmail doctor` as root; the key stays root-only: chown root:root {path} "
            f"&& chmod 600 {path}",
        )
    try:
        ours = key_from_file(data, kind)
    except (ValueError, TypeError) as exc:
        return fail(
            name,
            f"{key} {path} is not a usable {kind} key: {exc}",
            f"move it aside and make one with "
            f"`{keygen_command(setting.selector, setting.domain, kind, path)}`",
        )
    try:
        records = await resolver.txt(setting.dns_name)
    except LookupFailed as exc:
        return lookup_warn(name, resolver, exc)
    return compare_record(setting, ours, records)
