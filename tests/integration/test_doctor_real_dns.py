"""`faultmail doctor --resolver` against a real DNS server: dnsmasq on a loopback port serving
the DKIM records as `faultmail dkim keygen` splits them (several ≤ 255-octet strings), the SPF
record beside an unrelated TXT record, and DMARC. The in-process server of test_doctor_dns.py
is ours; this one is not, so the lookups meet another implementation's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.signing import GeneratedKey, keygen
from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.dnsmasq import Dnsmasq
from tests.integration.conftest import DMARC, DOMAIN, ED_SELECTOR, SELECTOR, SPF

pytestmark = pytest.mark.integration


def lines_by_check(output: str) -> dict[str, str]:
    """doctor's output as check name → its line (``STATUS  name  detail``), fix lines left out."""
    found = {}
    names = ("DKIM rsa", "DKIM ed25519", "SPF", "DMARC")
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        name = next((n for n in names if rest.lstrip().startswith(n + " ")), None)
        if status in ("OK", "WARN", "FAIL") and name is not None:
            found[name] = line
    return found


def publish(server: Dnsmasq, rsa_key: GeneratedKey, ed_key: GeneratedKey) -> None:
    """The records keygen printed for both keys, with SPF and DMARC for example.com."""
    server.txt(rsa_key.dns_name, *rsa_key.txt_strings)
    server.txt(ed_key.dns_name, *ed_key.txt_strings)
    server.txt(DOMAIN, SPF)
    server.txt(DOMAIN, "google-site-verification=abc")
    server.txt(f"_dmarc.{DOMAIN}", DMARC)


def test_doctor_against_dnsmasq_reports_dkim_spf_and_dmarc(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    dnsmasq: Dnsmasq,
    dkim_keys: tuple[GeneratedKey, GeneratedKey],
) -> None:
    """Healthy records: both DKIM keys match DNS, SPF allows this gateway, DMARC is present
    (exit 0); then a record for another key is a FAIL with exit 1, a missing DMARC a WARN."""
    rsa_key, ed_key = dkim_keys
    assert len(rsa_key.txt_strings) >= 2  # the RSA record really is served split
    publish(dnsmasq, rsa_key, ed_key)
    dnsmasq.start()
    dkim = {
        "domain": DOMAIN,
        "selector": SELECTOR,
        "private_key_file": str(rsa_key.path),
        "ed25519_selector": ED_SELECTOR,
        "ed25519_key_file": str(ed_key.path),
    }
    dm = daemon(daemon_config(extra={"dkim": dkim}), start=False)

    result = dm.cli("doctor", "--resolver", dnsmasq.address, "--timeout", "5")
    found = lines_by_check(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert found["DKIM rsa"].startswith("OK"), result.stdout
    assert f"{rsa_key.dns_name} publishes the public half of {rsa_key.path}" in found["DKIM rsa"]
    assert found["DKIM ed25519"].startswith("OK"), result.stdout
    assert found["SPF"].startswith("OK") and "allows this gateway (127.0.0.1" in found["SPF"]
    assert found["DMARC"].startswith("OK") and "p=reject, adkim=strict" in found["DMARC"]
    asked = set(dnsmasq.queried())
    assert {
        ("TXT", rsa_key.dns_name),
        ("TXT", ed_key.dns_name),
        ("TXT", DOMAIN),
        ("TXT", f"_dmarc.{DOMAIN}"),
    } <= asked, asked

    other = keygen(SELECTOR, DOMAIN, tmp_path / "other.key")
    replacement = Dnsmasq(tmp_path / "dnsmasq-2")
    replacement.txt(rsa_key.dns_name, *other.txt_strings)
    replacement.txt(ed_key.dns_name, *ed_key.txt_strings)
    replacement.txt(DOMAIN, SPF)
    with replacement:
        result = dm.cli("doctor", "--resolver", replacement.address, "--timeout", "5")
    found = lines_by_check(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert found["DKIM rsa"].startswith("FAIL") and "is not the public half of" in found["DKIM rsa"]
    assert found["DKIM ed25519"].startswith("OK"), result.stdout
    assert found["DMARC"].startswith("WARN"), result.stdout
