"""pyproject.toml and `make clean` as a build meets them: a wheel built without a single
warning from current setuptools, a configuration Debian 12's setuptools 66 still accepts (the
.deb is built with it), and a clean tree after `make clean`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _source_copy(dest: Path) -> Path:
    """What a build reads (pyproject.toml, README.md, LICENSE, agent/), without caches, so the
    build's own leftovers never land in the work tree."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "agent", dest / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dest


def test_wheel_builds_without_warnings(tmp_path: Path) -> None:
    """`pip wheel .` with build isolation (the newest setuptools from the index, as `make venv`
    gets it) prints no warning, and the wheel has the mail templates and the license."""
    src = _source_copy(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "-w",
            str(tmp_path / "whl"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # The paths hold the test's name, "warnings" included.
    output = (done.stdout + done.stderr).replace(str(tmp_path), "TMP")
    assert done.returncode == 0, output
    warnings = [line for line in output.splitlines() if "warn" in line.lower()]
    assert not warnings, output
    (wheel,) = (tmp_path / "whl").glob("faultmail-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(f"agent/templates/{p.name}" for p in (ROOT / "agent/templates").glob("*"))
    assert templates and sorted(n for n in names if n.startswith("agent/templates/")) == templates
    assert [n for n in names if n.endswith("/LICENSE")], names
    assert not [n for n in names if "__pycache__" in n]


def test_debian_setuptools_accepts_the_configuration(tmp_path: Path) -> None:
    """The setuptools of this virtualenv (Debian 12's python3-venv bundles 66.1.1, the version
    packaging/build-deb.sh builds with) validates pyproject.toml and finds every package,
    agent.templates included: an SPDX `license = "MIT"` would be refused here."""
    src = _source_copy(tmp_path)
    probe = (
        "import json, warnings; warnings.simplefilter('ignore');"
        "from setuptools.config.pyprojecttoml import read_configuration;"
        "c = read_configuration('pyproject.toml');"
        "print(json.dumps(sorted(c['tool']['setuptools']['packages'])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    packages = json.loads(done.stdout)
    expected = sorted(
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "agent").rglob("__init__.py")
    )
    assert sorted(set(packages) - {"agent.templates"}) == expected
    assert "agent.templates" in packages


def test_make_clean_removes_build_leftovers(tmp_path: Path) -> None:
    """`make clean` removes build/, dist/ and *.egg-info (and the virtualenv and caches), and
    nothing else."""
    shutil.copy2(ROOT / "Makefile", tmp_path / "Makefile")
    leftovers = ["build/deb/cache", "dist", "faultmail.egg-info", ".venv/bin", ".mypy_cache"]
    for name in leftovers:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "file").write_text("x")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "app.py").write_text("x")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "agent"]
