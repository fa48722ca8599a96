"""Helpers for packaging/build-deb.sh and packaging/lock-deps.sh (Debian's python3, stdlib only).

    pkgtool.py deps-hash                      hash of pyproject.toml's [project].dependencies
    pkgtool.py check-lock LOCK...             each lock was made from the current dependencies
    pkgtool.py lock ARCH...                   (re)write packaging/deps/*.lock (needs PyPI)
    pkgtool.py select-files LOCK DIR          the files in DIR whose sha256 the lock lists
    pkgtool.py prune SITE                     drop scripts, caches, install metadata; fix RECORDs
    pkgtool.py elf-depends ARCH SITE          Depends: entries for the bundled ELF objects
    pkgtool.py copyright SITE TEMPLATE        debian/copyright: ours plus one stanza per bundle
    pkgtool.py installed-size ROOT            Installed-Size as dpkg-gencontrol computes it
    pkgtool.py compile-check SITE             every .py file compiles (py3compile runs in postinst)
    pkgtool.py package-sources                the files of agent/ that go into the package's wheel

Everything here is deterministic: sorted walks, no timestamps, no absolute build paths.
"""

from __future__ import annotations

import base64
import csv
import email
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPS_DIR = ROOT / "packaging" / "deps"
PYTHON = "/usr/bin/python3"
PY_VERSION = "3.11"

# Debian architecture → wheel platform tag, ELF machine (readelf -h) and the ld.so name.
ARCHES = {
    "amd64": {"platform": "manylinux2014_x86_64", "machine": "Advanced Micro Devices X86-64"},
    "arm64": {"platform": "manylinux2014_aarch64", "machine": "AArch64"},
}

# Declared dependencies of our dependencies that are deliberately not bundled.
EXCLUDED = {
    "pip": "sqlite-utils declares it for its `sqlite-utils install` subcommand only; "
    "faultmail uses the library, and the package must not ship an installer",
    "tzdata": "python-dateutil's fallback time zone database; Debian's tzdata package "
    "(a Depends) provides /usr/share/zoneinfo, which zoneinfo and dateutil read first",
}

# Shared objects the bundled extensions may link against, and the Debian package providing them.
SONAME_PACKAGES = {
    "libc.so.6": "libc6",
    "libm.so.6": "libc6",
    "libpthread.so.0": "libc6",
    "libdl.so.2": "libc6",
    "librt.so.1": "libc6",
    "ld-linux-x86-64.so.2": "libc6",
    "ld-linux-aarch64.so.1": "libc6",
    "libgcc_s.so.1": "libgcc-s1",
}


def die(message: str) -> None:
    print(f"pkgtool: {message}", file=sys.stderr)
    raise SystemExit(1)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- our own sources ---------------------------------------------------------------------------


# Files of agent/ that a source tree has and the package must not: test hooks stay out of what a
# gateway runs. (The test fakes live in tests/, which is never packaged.)
DEV_ONLY = {
    "agent/failpoints_armed.py": "arms FAULTMAIL_FAILPOINTS, which makes the daemon SIGKILL "
    "itself; without it the installed daemon ignores the variable",
}


def package_sources(root: Path = ROOT) -> list[str]:
    """The files under agent/ (relative to the repository, sorted) that faultmail's wheel is built
    from: everything but caches and DEV_ONLY."""
    found = []
    for path in sorted((root / "agent").rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if rel in DEV_ONLY:
            continue
        found.append(rel)
    return found


# --- dependency locks ---------------------------------------------------------------------------


def project_dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    return sorted(re.sub(r"\s+", "", d) for d in deps)


def deps_hash() -> str:
    return hashlib.sha256("\n".join(project_dependencies()).encode()).hexdigest()


def check_lock(paths: list[str]) -> None:
    want = deps_hash()
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        found = re.search(r"^# pyproject-dependencies-sha256: ([0-9a-f]{64})$", text, re.M)
        if not found or found.group(1) != want:
            die(
                f"{Path(path).relative_to(ROOT)} was not made from pyproject.toml's current "
                "[project].dependencies; run `bash packaging/lock-deps.sh` and commit "
                "packaging/deps/"
            )


def pip(*args: str) -> None:
    # --isolated: no pip.conf and no PIP_* variables (PIP_FIND_LINKS and the like change what
    # gets resolved). An index mirror can still be given as FAULTMAIL_PIP_INDEX_URL.
    cmd = [PYTHON, "-m", "pip", "--isolated", "--disable-pip-version-check", "--no-input"]
    cmd += list(args)
    if os.environ.get("FAULTMAIL_PIP_INDEX_URL") and "--no-index" not in args:
        cmd += ["--index-url", os.environ["FAULTMAIL_PIP_INDEX_URL"]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def platform_args(arch: str) -> list[str]:
    return [
        "--only-binary=:all:",
        "--platform",
        ARCHES[arch]["platform"],
        "--python-version",
        PY_VERSION,
        "--implementation",
        "cp",
        "--abi",
        "cp" + PY_VERSION.replace(".", ""),
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return canonical(name), version


def sdist_name_version(filename: str) -> tuple[str, str]:
    stem = re.sub(r"\.(tar\.gz|zip)$", "", filename)
    name, version = stem.rsplit("-", 1)
    return canonical(name), version


def build_pure_wheel(sdist: Path, outdir: Path) -> Path:
    """A wheel from an sdist with Debian's setuptools; it must be pure Python (any platform)."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.unpack_archive(sdist, tmp)
        (src,) = Path(tmp).iterdir()
        pip(
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "-w",
            str(outdir),
            str(src),
        )
    name, _ = sdist_name_version(sdist.name)
    wheels = [w for w in outdir.glob("*.whl") if wheel_name_version(w.name)[0] == name]
    if len(wheels) != 1 or not wheels[0].name.endswith("-none-any.whl"):
        die(f"{sdist.name} did not give one pure-Python wheel ({[w.name for w in wheels]})")
    return wheels[0]


def lock(arches: list[str]) -> None:
    deps = project_dependencies()
    header = [
        "# Generated by packaging/lock-deps.sh from pyproject.toml; do not edit by hand.",
        f"# pyproject-dependencies-sha256: {deps_hash()}",
        "# Deliberately not bundled although declared by a dependency:",
        *(f"#   {name}: {why}" for name, why in sorted(EXCLUDED.items())),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        req = work / "requirements.txt"
        req.write_text("\n".join(deps) + "\n", encoding="utf-8")
        # 1. Resolve for this machine, sdists allowed, to find distributions without wheels.
        pip(
            "download",
            "--no-build-isolation",
            "--no-cache-dir",
            "-d",
            str(work / "host"),
            "-r",
            str(req),
        )
        local = work / "local"
        local.mkdir()
        sdists: dict[str, tuple[str, str]] = {}
        for sdist in sorted((work / "host").iterdir()):
            if sdist.name.endswith(".whl"):
                continue
            name, version = sdist_name_version(sdist.name)
            build_pure_wheel(sdist, local)
            sdists[name] = (version, sha256(sdist))
        lines = [*header, "# Source-only distributions, built into pure-Python wheels:"]
        lines += [f"{n}=={v} --hash=sha256:{h}" for n, (v, h) in sorted(sdists.items())]
        (DEPS_DIR / "sdist.lock").write_text("\n".join(lines) + "\n", encoding="utf-8")
        # 2. Resolve the wheels for each target platform.
        for arch in arches:
            dest = work / arch
            pip(
                "download",
                *platform_args(arch),
                "--no-cache-dir",
                "--find-links",
                str(local),
                "-d",
                str(dest),
                "-r",
                str(req),
            )
            entries: dict[str, tuple[str, list[str]]] = {}
            for wheel in sorted(dest.glob("*.whl")):
                name, version = wheel_name_version(wheel.name)
                if name in sdists or name in EXCLUDED:
                    continue
                entries[name] = (version, [sha256(wheel)])
            lines = [
                f"# faultmail bundle for {arch}: {ARCHES[arch]['platform']}, CPython {PY_VERSION}.",
                *header,
            ]
            for name, (version, hashes) in sorted(entries.items()):
                lines.append(f"{name}=={version} \\")
                lines += [f"    --hash=sha256:{h}" for h in hashes]
            (DEPS_DIR / f"{arch}.lock").write_text("\n".join(lines) + "\n", encoding="utf-8")
            print(f"packaging/deps/{arch}.lock: {len(entries)} wheels")
        print(f"packaging/deps/sdist.lock: {', '.join(sorted(sdists)) or 'none'}")


def lock_hashes(lock_file: Path) -> set[str]:
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", lock_file.read_text(encoding="utf-8")))


def lock_entries(lock_file: Path) -> int:
    text = lock_file.read_text(encoding="utf-8")
    return len(re.findall(r"^[A-Za-z0-9][A-Za-z0-9._-]*==", text, re.M))


def select_files(lock_file: Path, directory: Path) -> None:
    """Print the files of DIRECTORY the lock pins (one per entry), or fail if one is missing."""
    hashes = lock_hashes(lock_file)
    chosen: dict[str, Path] = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file() and sha256(path) in hashes:
            chosen[sha256(path)] = path
    names = {
        wheel_name_version(p.name)[0] if p.name.endswith(".whl") else sdist_name_version(p.name)[0]
        for p in chosen.values()
    }
    if len(names) != lock_entries(lock_file):
        raise SystemExit(3)  # not all there (yet): the caller downloads
    for path in sorted(chosen.values()):
        print(path)


# --- the bundled site-packages ------------------------------------------------------------------


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def prune(site: Path) -> None:
    """Leave what runs: no console scripts, man pages, caches, or per-install metadata."""
    for name in ("bin", "share"):
        shutil.rmtree(site / name, ignore_errors=True)
    for path in sorted(site.rglob("*"), reverse=True):
        if path.name == "__pycache__" and path.is_dir():
            shutil.rmtree(path)
        elif path.is_file() and (
            path.suffix in (".pyc", ".pyo")
            # direct_url.json holds the build machine's path to the wheel; REQUESTED and
            # INSTALLER describe this pip run, not the software.
            or (
                path.parent.name.endswith(".dist-info")
                and path.name in ("direct_url.json", "REQUESTED", "INSTALLER")
            )
        ):
            path.unlink()
        elif path.is_file() and path.suffix == ".py":
            fix_shebang(path)
    for dist in sorted(site.glob("*.dist-info")):
        if canonical(dist.name.split("-")[0]) in EXCLUDED:
            die(f"{dist.name} is in the bundle although excluded")
        fix_record(site, dist / "RECORD")


def fix_shebang(path: Path) -> None:
    """`#!/usr/bin/env python` in a module → Debian's interpreter, as dh_python3 rewrites it."""
    data = path.read_bytes()
    first, sep, rest = data.partition(b"\n")
    if first.startswith(b"#!") and b"python" in first and first != b"#!/usr/bin/python3":
        path.write_bytes(b"#!/usr/bin/python3" + sep + rest)


def fix_record(site: Path, record: Path) -> None:
    """Rewrite RECORD so that it lists exactly the files present, with their current hashes."""
    rows = list(csv.reader(io.StringIO(record.read_text(encoding="utf-8"))))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        if not row:
            continue
        rel = row[0]
        path = (site / rel).resolve()
        if rel.startswith("../") or not path.is_file() or site.resolve() not in path.parents:
            continue
        if path == record.resolve():
            writer.writerow([rel, "", ""])
            continue
        data = path.read_bytes()
        writer.writerow([rel, record_hash(data), str(len(data))])
    record.write_text(out.getvalue(), encoding="utf-8")


def elf_files(site: Path) -> list[Path]:
    found = []
    for path in sorted(site.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def readelf(*args: str) -> str:
    return subprocess.run(
        ["readelf", "-W", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def elf_depends(arch: str, site: Path) -> None:
    """libc6 (>= newest GLIBC_ symbol version needed) and friends, like dpkg-shlibdeps would."""
    minimum: dict[str, str] = {}
    for elf in elf_files(site):
        rel = elf.relative_to(site)
        machine = re.search(r"Machine:\s+(.+)", readelf("-h", str(elf)))
        if not machine or machine.group(1).strip() != ARCHES[arch]["machine"]:
            die(f"{rel} is for {machine.group(1).strip() if machine else '?'}, not {arch}")
        if arch == "arm64":
            # Raspberry Pi 5 kernels use 16 KiB pages: a 4 KiB-aligned object will not load.
            aligns = re.findall(r"^\s*LOAD\s.*\s(0x[0-9a-f]+)$", readelf("-l", str(elf)), re.M)
            if not aligns or min(int(a, 16) for a in aligns) < 0x4000:
                die(f"{rel}: LOAD segments aligned to {aligns}, under 16 KiB pages it fails")
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf("-d", str(elf)))
        for soname in needed:
            if soname not in SONAME_PACKAGES:
                die(f"{rel} needs {soname}: map it to a Debian package in SONAME_PACKAGES")
            minimum.setdefault(SONAME_PACKAGES[soname], "")
        for prefix, package in (("GLIBC_", "libc6"), ("GCC_", "libgcc-s1")):
            versions = re.findall(rf"Name: {prefix}([0-9.]+)", readelf("-V", str(elf)))
            for version in versions:
                if version_key(version) > version_key(minimum.get(package, "") or "0"):
                    minimum[package] = version
    # GCC_4.2.0 → 4.2, as libgcc-s1's symbols file (and so dpkg-shlibdeps) writes it.
    minimum = {p: re.sub(r"(\.0)+$", "", v) if v.count(".") > 1 else v for p, v in minimum.items()}
    print(", ".join(f"{p} (>= {v})" if v else p for p, v in sorted(minimum.items())))


# --- Debian metadata ----------------------------------------------------------------------------

LICENSE_NAMES = {
    # Free-text License: values in wheel metadata → SPDX/Debian short names.
    "MIT": "MIT",
    "Apache-2.0": "Apache-2.0",
    "Apache License, Version 2.0": "Apache-2.0",
    "BSD-3-Clause": "BSD-3-Clause",
    "BSD-like": "BSD-like",
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: BSD License": "BSD-3-Clause",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: Public Domain": "public-domain",
}


def dist_license(meta: email.message.Message) -> str:
    expression = meta.get("License-Expression")
    if expression:
        return re.sub(r"\bOR\b", "or", re.sub(r"\bAND\b", "and", expression))
    if meta.get("License") and meta["License"].strip() in LICENSE_NAMES:
        return LICENSE_NAMES[meta["License"].strip()]
    names = sorted(
        {LICENSE_NAMES[c] for c in meta.get_all("Classifier") or [] if c in LICENSE_NAMES}
    )
    if names:
        return " or ".join(names)
    die(f"no license found for {meta['Name']}: extend LICENSE_NAMES")
    return ""


def copyright_file(site: Path, template: Path) -> None:
    prefix = "usr/lib/faultmail/site-packages"
    stanzas = []
    for dist in sorted(site.glob("*.dist-info"), key=lambda p: p.name.lower()):
        meta = email.message_from_string((dist / "METADATA").read_text(encoding="utf-8"))
        if canonical(meta["Name"]) == "faultmail":
            continue
        files = sorted(
            {
                row[0].split("/")[0]
                for row in csv.reader(io.StringIO((dist / "RECORD").read_text(encoding="utf-8")))
                if row
            }
        )
        license_files = sorted(
            p.relative_to(site).as_posix()
            for p in dist.rglob("*")
            if p.is_file() and re.match(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", p.name, re.I)
        )
        paths = " ".join(f"{prefix}/{f}" + ("/*" if (site / f).is_dir() else "") for f in files)
        author = meta.get("Author") or meta.get("Author-email") or meta.get("Maintainer") or ""
        author = re.sub(r"\s*<[^>]*>", "", author).replace("\n", " ").strip()
        stanzas.append(
            f"Files: {paths}\n"
            f"Copyright: {author or 'the ' + meta['Name'] + ' authors'}\n"
            f"License: {dist_license(meta)}\n"
            f"Comment: {meta['Name']} {meta['Version']}, bundled from its PyPI wheel. Copyright\n"
            f" notices and license texts: {', '.join(license_files) or 'none shipped'} (under\n"
            f" /{prefix})."
        )
    text = template.read_text(encoding="utf-8").rstrip("\n")
    sys.stdout.write(text + "\n\n" + "\n\n".join(stanzas) + "\n")


def installed_size(root: Path) -> None:
    """Sum of file sizes in KiB (rounded up per file), 1 per directory, as dpkg-gencontrol."""
    total = 1  # the package root itself
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == str(root) and d == "DEBIAN")]
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if os.path.isdir(os.path.join(dirpath, name)) and not os.path.islink(
                os.path.join(dirpath, name)
            ):
                total += 1
            elif (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += (st.st_size + 1023) // 1024
    print(total)


def compile_check(site: Path) -> None:
    failures = []
    count = 0
    for path in sorted(site.rglob("*.py")):
        count += 1
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            failures.append(f"{path.relative_to(site)}: {exc}")
    if failures:
        die("these files would make py3compile fail in postinst:\n  " + "\n  ".join(failures))
    print(count)


def main(argv: list[str]) -> None:
    if not argv:
        die(__doc__ or "")
    command, args = argv[0], argv[1:]
    if command == "deps-hash":
        print(deps_hash())
    elif command == "check-lock":
        check_lock(args)
    elif command == "lock":
        lock(args or sorted(ARCHES))
    elif command == "select-files":
        select_files(Path(args[0]), Path(args[1]))
    elif command == "prune":
        prune(Path(args[0]))
    elif command == "elf-depends":
        elf_depends(args[0], Path(args[1]))
    elif command == "copyright":
        copyright_file(Path(args[0]), Path(args[1]))
    elif command == "installed-size":
        installed_size(Path(args[0]))
    elif command == "compile-check":
        compile_check(Path(args[0]))
    elif command == "package-sources":
        print("\n".join(package_sources()))
    else:
        die(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
