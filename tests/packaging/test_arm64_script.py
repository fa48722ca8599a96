"""Fast checks of the arm64 install test (packaging/test-arm64.sh) without root or qemu: that
make runs it (CI's order is tests/packaging/test_ci_run.py's), that it fails rather than skips,
and that what it changes in the unit for qemu-user is only what qemu-user cannot emulate.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging" / "test-arm64.sh"
UNIT = ROOT / "systemd" / "faultmail.service"

# systemd 252 sets these up in a child cloned with namespace flags, which qemu-user's clone()
# refuses (EINVAL): credentials (243/CREDENTIALS, with the bind mounts of the credentials), the
# IPC namespace (226/NAMESPACE) and the user namespace (217/USER). Nothing else may be loosened.
QEMU_USER_GAPS = {"LoadCredential", "BindReadOnlyPaths", "PrivateIPC", "PrivateUsers"}


def unit_service_keys() -> set[str]:
    keys, section = set(), ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and line and not line.startswith("#"):
            keys.add(line.partition("=")[0])
    return keys


def qemu_dropin() -> dict[str, str]:
    text = SCRIPT.read_text(encoding="utf-8")
    body = re.search(r'cat >"\$ROOT\$QEMU_DROPIN" <<\'EOF\'\n(.*?)\nEOF\n', text, re.S)
    assert body, "the drop-in heredoc is not where the test expects it"
    settings = {}
    for line in body.group(1).splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_qemu_dropin_changes_only_what_qemu_user_cannot_emulate() -> None:
    """The arm64 test's drop-in resets only the namespace directives qemu-user refuses."""
    settings = qemu_dropin()
    assert set(settings) == QEMU_USER_GAPS
    assert settings == {
        "LoadCredential": "",
        "BindReadOnlyPaths": "",
        "PrivateIPC": "no",
        "PrivateUsers": "no",
    }


def test_qemu_dropin_names_directives_the_unit_sets() -> None:
    """Every directive the drop-in resets is one the shipped unit sets (no stale workaround)."""
    assert set(qemu_dropin()) <= unit_service_keys()


def test_script_fails_instead_of_skipping() -> None:
    """A check that cannot run is recorded as FAIL; the script has no SKIP outcome."""
    text = SCRIPT.read_text(encoding="utf-8")
    assert "SKIP" not in text
    assert "set -uo pipefail" in text
    assert re.search(r"^finish\(\) \{ summary; exit \$\(\(FAILED > 0\)\); \}$", text, re.M)
    assert text.rstrip().endswith("finish")


def test_script_parses() -> None:
    """bash -n accepts packaging/test-arm64.sh."""
    bash = shutil.which("bash")
    assert bash
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)


def test_make_runs_the_arm64_install_test() -> None:
    """make test-arm64 builds the arm64 package then runs the script."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"^test-arm64:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "no test-arm64 target"
    assert target.group(1).splitlines() == [
        "\tbash packaging/build-deb.sh arm64",
        "\tbash packaging/test-arm64.sh",
    ]
    assert re.search(r"^\.PHONY:.*\btest-arm64\b", makefile, re.M)
