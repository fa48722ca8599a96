"""Fast checks of the Debian packaging (no root, no build): the systemd unit, the maintainer
scripts, the test helpers and the list of our files that go into the package. The full install
test is `make test-deb` (packaging/test-deb.sh).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from agent import failpoints

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "faultmail.service"
DEBIAN = ROOT / "packaging" / "debian"


def directives(section: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_service_contract() -> None:
    service = directives("Service")
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == ["/usr/bin/faultmail run --config /etc/faultmail/faultmail.toml"]
    assert service["Restart"] == ["on-failure"]
    assert set(service["RestartPreventExitStatus"][0].split()) == {"2", "3"}
    assert service["WatchdogSec"] and service["StateDirectory"] == ["faultmail"]
    assert service["ConfigurationDirectory"] == ["faultmail"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "MemoryMax" in service and "TasksMax" in service
    # A file-descriptor budget stated on purpose, not left to the system default.
    assert service["LimitNOFILE"] == ["1024"]
    assert directives("Install")["WantedBy"] == ["multi-user.target"]


def test_every_credential_is_optional_and_mounted_at_its_path() -> None:
    service = directives("Service")
    binds = {}
    for value in service["BindReadOnlyPaths"]:
        match = re.fullmatch(r"-%d/([a-z0-9.-]+):(/etc/faultmail/\S+)", value)
        assert match, value
        binds[match.group(1)] = match.group(2)
    for value in service["LoadCredential"]:
        name, _, source = value.partition(":")
        # A credential-store name, not a path: a missing file is skipped (no 243/CREDENTIALS).
        assert source == f"faultmail.{name}", value
        assert name in binds, f"{name} has no BindReadOnlyPaths= line"
    # The paths the shipped example configuration names are among them.
    config = tomllib.loads((ROOT / "config" / "faultmail.toml").read_text(encoding="utf-8"))
    for section, key in (("smtp", "password_file"), ("dkim", "private_key_file")):
        path = config.get(section, {}).get(key, "")
        if path.startswith("/"):
            assert path in binds.values(), f"{section}.{key} = {path} is not a credential"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_exposure_at_most_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0


@pytest.mark.parametrize("script", ["preinst", "postinst", "prerm", "postrm"])
def test_maintainer_scripts(script: str) -> None:
    path = DEBIAN / script
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -e\n" in text
    subprocess.run(["sh", "-n", str(path)], check=True)


def test_purge_removes_config_and_state_remove_keeps_them() -> None:
    text = (DEBIAN / "postrm").read_text(encoding="utf-8")
    purge = text.split('if [ "$1" = "purge" ]; then', 1)[1].split("\nfi", 1)[0]
    assert "rm -rf /var/lib/faultmail" in purge and "rm -rf /etc/faultmail" in purge
    assert text.count("rm -rf") == 2


def test_conffile_is_the_shipped_example() -> None:
    assert (DEBIAN / "conffiles").read_text(encoding="utf-8") == "/etc/faultmail/faultmail.toml\n"


def test_conf_edit_changes_only_the_named_key(tmp_path: Path) -> None:
    conf = tmp_path / "faultmail.toml"
    conf.write_text("[a]\nport = 1\n# port = 9\n[b]\nport = 2\n", encoding="utf-8")
    subprocess.run(
        ["python3", str(ROOT / "packaging" / "test" / "conf_edit.py"), str(conf), "b.port=7"],
        check=True,
    )
    assert conf.read_text(encoding="utf-8") == "[a]\nport = 1\n# port = 9\n[b]\nport = 7\n"


def pkgtool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pkgtool", ROOT / "packaging" / "pkgtool.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_sources_leave_out_the_test_hooks() -> None:
    """The package is built from every file of agent/ except caches and the module that arms
    failpoints; the test fakes are not under agent/ at all."""
    tool = pkgtool()
    sources = tool.package_sources()
    in_tree = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "agent").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert set(tool.DEV_ONLY) == {"agent/failpoints_armed.py"}
    assert set(tool.DEV_ONLY) <= in_tree, "DEV_ONLY names a file that is gone"
    assert sources == sorted(in_tree - set(tool.DEV_ONLY))
    assert not [s for s in sources if Path(s).stem in ("testing", "fakes", "conftest")]
    assert "agent/templates/mail.txt.j2" in sources and "agent/failpoints.py" in sources


def test_failpoints_are_armed_in_the_repository() -> None:
    """From the repository the arming module is there, so the fault suite can kill the daemon."""
    assert failpoints.available()
    with pytest.raises(failpoints.FailpointError):
        failpoints.Failpoints(["intake_crash"]).hit("intake_crash")
