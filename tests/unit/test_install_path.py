"""The technician's install path (issue 15): where `dkim keygen` writes, what the messages about
a missing key or a misspelt key point to, the DNS strings doctor prints, the EHLO name check."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli.parser import build_parser
from agent.doctor import main as doctor_main
from agent.doctor.relay import ehlo_name_check, relay_checks
from agent.doctor.result import Status
from agent.errors import ConfigError
from agent.settings import load_settings
from agent.settings import loading as settings_loading
from agent.settings.sections import DKIM_KEY_PATHS
from agent.signing import keygen, txt_strings, zone_line
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]
REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "faultmail.toml"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most permissive umask, so a mode that comes out 0600 was set on purpose."""
    old = os.umask(0)
    yield
    os.umask(old)


def _keygen(*argv: str) -> int:
    return main(["dkim", "keygen", "--selector", "gw2026", "--domain", "example.com", *argv])


def test_keygen_writes_to_the_configured_key_file_by_default(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str], umask_zero: None
) -> None:
    """Without --out, keygen writes dkim.private_key_file of --config, 0600 and owned by the
    user who ran it, and prints the record in quoted strings of at most 255 bytes."""
    doc = base_config(tmp_path)
    key = tmp_path / "keys" / "dkim.key"
    key.parent.mkdir()
    doc["dkim"] = {"domain": "example.com", "selector": "gw2026", "private_key_file": str(key)}
    config = write_config(doc)
    assert _keygen("--config", str(config)) == 0
    out, err = capsys.readouterr()
    info = key.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    assert f"private key written to {key} (mode 0600" in err
    assert out.startswith("gw2026._domainkey.example.com. IN TXT ( ")
    strings = re.findall(r'"([^"]*)"', out)
    assert len(strings) == 2 and all(len(s.encode()) <= 255 for s in strings)
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=")
    assert list(tmp_path.glob("*.key")) == []  # nothing in the current directory's place


def test_keygen_without_a_readable_config_writes_the_packaged_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a readable config the default is the file the package's unit binds
    (/etc/faultmail/dkim.key, here redirected), never a name in the current directory."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "etc-faultmail-dkim.key"
    monkeypatch.setitem(DKIM_KEY_PATHS, "rsa", str(target))
    assert _keygen("--config", str(tmp_path / "missing.toml")) == 0
    assert target.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    capsys.readouterr()


def test_keygen_help_names_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`dkim keygen --help` says where the key goes without --out."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dkim", "keygen", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "dkim.private_key_file" in text and "/etc/faultmail/dkim.key" in text


def test_keygen_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing key file (its record may be published) is left byte for byte as it was."""
    key = tmp_path / "dkim.key"
    key.write_bytes(b"the published key\n")
    assert _keygen("--out", str(key)) == 1
    assert key.read_bytes() == b"the published key\n"
    assert "never overwritten" in capsys.readouterr().err


def test_txt_strings_are_at_most_255_bytes_and_join_to_the_value() -> None:
    """A TXT value is cut into strings of at most 255 bytes that join back to it, never
    inside a UTF-8 sequence; the zone line quotes each."""
    for value in ("a" * 255, "a" * 256, "v=DKIM1; " + "x" * 600, "é" * 200):
        parts = txt_strings(value)
        assert "".join(parts) == value and all(len(p.encode()) <= 255 for p in parts)
    assert len(txt_strings("a" * 256)) == 2
    assert (
        zone_line("s._domainkey.example.com", "ab") == 's._domainkey.example.com. IN TXT ( "ab" )'
    )


def test_missing_key_file_error_names_the_path_and_the_command(
    tmp_path: Path, write_config: Writer
) -> None:
    """A missing DKIM key is a config error with the expected path and the exact keygen
    command, for the RSA key and the Ed25519 one."""
    doc = base_config(tmp_path)
    rsa_key, ed_key = tmp_path / "dkim.key", tmp_path / "dkim-ed25519.key"
    doc["dkim"] = {
        "domain": "example.com",
        "selector": "gw2026",
        "private_key_file": str(rsa_key),
        "ed25519_selector": "ed2026",
        "ed25519_key_file": str(ed_key),
    }
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(doc))
    problems = dict(info.value.problems)
    assert (
        f"create it with `faultmail dkim keygen --selector gw2026 --domain example.com "
        f"--out {rsa_key}`" in problems["dkim.private_key_file"]
    )
    assert (
        f"create it with `faultmail dkim keygen --selector ed2026 --domain example.com "
        f"--type ed25519 --out {ed_key}`" in problems["dkim.ed25519_key_file"]
    )


def test_config_errors_point_to_an_example_that_exists(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key's message names an example file that exists on this machine (here the
    repository's), and doctor's fix line names the same file."""
    doc = base_config(tmp_path)
    doc["smtp"]["hots"] = "typo"
    config = write_config(doc)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    text = dict(info.value.problems)["smtp.hots"]
    assert text == f"unknown key; check its spelling against {REPO_EXAMPLE}"
    assert REPO_EXAMPLE.is_file()
    assert doctor_main(config) == 2
    assert f"every key is documented in {REPO_EXAMPLE})" in capsys.readouterr().out


def test_example_is_never_the_file_being_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a gateway the pristine copy in /usr/share/doc is named, the conffile only when that
    is gone, and never the file the problem is in."""
    shipped = tmp_path / "usr-share-doc-examples.toml"
    conffile = tmp_path / "etc-faultmail.toml"
    conffile.write_text("")
    candidates = (tmp_path / "no-repository.toml", shipped, conffile)
    monkeypatch.setattr(settings_loading, "EXAMPLE_CONFIG_PATHS", candidates)
    assert settings_loading.example_config(tmp_path / "other.toml") == str(conffile)
    assert "shipped with faultmail" in settings_loading.example_config(conffile)
    shipped.write_text("")
    assert settings_loading.example_config(conffile) == str(shipped)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("localhost", Status.WARN),
        ("localhost.localdomain", Status.WARN),
        ("gw1", Status.WARN),
        ("gw1.example.com", Status.OK),
        ("gw1.example.com.", Status.OK),
    ],
)
def test_ehlo_name_must_be_fully_qualified(name: str, status: Status) -> None:
    """A name without a dot or starting with localhost is flagged, with the setting to add."""
    check = ehlo_name_check(name, configured=False)
    assert check.status is status
    if status is Status.WARN:
        assert 'smtp.ehlo_name = "gw1.example.com"' in check.fix


def test_doctor_flags_a_bare_ehlo_name_even_when_the_relay_is_down(
    tmp_path: Path, write_config: Writer
) -> None:
    """relay_checks opens with the EHLO name verdict, before any network step."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    doc = base_config(tmp_path)
    doc["smtp"].update(host="127.0.0.1", port=port, ehlo_name="localhost")
    settings = load_settings(write_config(doc))
    checks = asyncio.run(relay_checks(settings, timeout=2.0)).checks
    assert (checks[0].name, checks[0].status) == ("relay EHLO name", Status.WARN)
    assert "'localhost' (smtp.ehlo_name)" in checks[0].detail
    assert checks[1].status is Status.FAIL  # cannot connect


def test_keygen_output_is_what_doctor_asks_to_publish(tmp_path: Path) -> None:
    """keygen's zone line and doctor's fix line come from one function: the same strings."""
    key = keygen("gw2026", "example.com", tmp_path / "k", "rsa")
    assert key.zone_line() == zone_line(key.dns_name, key.record)
    assert all(len(s) <= 255 for s in key.txt_strings) and len(key.txt_strings) == 2
