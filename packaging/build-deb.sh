#!/usr/bin/env bash
# Build the faultmail Debian package: `make deb ARCH=amd64|arm64`, or
#     bash packaging/build-deb.sh [amd64|arm64]
# Writes dist/faultmail_<version>_<arch>.deb. Same inputs, same bytes: the inputs are the source
# tree (agent/, pyproject.toml, README.md, config/faultmail.toml, systemd/, packaging/), the pinned
# wheels in packaging/deps/*.lock, Debian 12's build tools, and SOURCE_DATE_EPOCH (by default the
# date of the newest entry in packaging/debian/changelog). See packaging/README.md.
#
# Environment (all optional):
#   SOURCE_DATE_EPOCH    timestamps in the package (default: from packaging/debian/changelog)
#   DEB_VERSION          build this version instead (adds a changelog entry; for upgrade tests)
#   FAULTMAIL_CONFFILE   file shipped as /etc/faultmail/faultmail.toml (default config/faultmail.toml)
#   OUTDIR               where the .deb goes (default dist/)
#   FAULTMAIL_DEB_CACHE  downloaded wheels and sdists, checked by hash (default build/deb/cache)
#   FAULTMAIL_PIP_INDEX_URL  a PyPI mirror
set -euo pipefail

ARCH=${1:-amd64}
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKG=$TOP/packaging
OUTDIR=${OUTDIR:-$TOP/dist}
CACHE=${FAULTMAIL_DEB_CACHE:-$TOP/build/deb/cache}
WORK=$TOP/build/deb/$ARCH
PY=/usr/bin/python3
PKGTOOL=("$PY" -I "$PKG/pkgtool.py")
LIBDIR=usr/lib/faultmail
SITE_REL=$LIBDIR/site-packages

export LC_ALL=C.UTF-8 TZ=UTC PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE
umask 022

T0=${EPOCHREALTIME/[.,]/}
step() { local now=${EPOCHREALTIME/[.,]/}; printf '[build-deb %5d.%01ds] %s\n' $(((now - T0) / 1000000)) $(((now - T0) / 100000 % 10)) "$*"; }
die() { echo "build-deb: $*" >&2; exit 1; }
# Run quietly; show the output only when the command fails.
quiet() {
	local log
	log=$(mktemp)
	if ! "$@" >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		die "failed: $*"
	fi
	rm -f "$log"
}

case $ARCH in
	amd64) PLATFORM=manylinux2014_x86_64 STRIP=strip ;;
	arm64) PLATFORM=manylinux2014_aarch64 STRIP=aarch64-linux-gnu-strip ;;
	*) die "unknown architecture '$ARCH' (amd64 or arm64)" ;;
esac
PIP_PLATFORM=(--only-binary=:all: --platform "$PLATFORM" --python-version 3.11
	--implementation cp --abi cp311)
pip() { "$PY" -m pip --isolated --disable-pip-version-check --no-input "$@"; }
pip_index() {
	if [ -n "${FAULTMAIL_PIP_INDEX_URL:-}" ]; then
		pip "$@" --index-url "$FAULTMAIL_PIP_INDEX_URL"
	else
		pip "$@"
	fi
}

# --- build dependencies: Debian 12's own tools, so that they are the same everywhere ----------
need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v dpkg-parsechangelog >/dev/null || need+=(dpkg-dev)
command -v readelf >/dev/null || need+=(binutils)
if ! command -v "$STRIP" >/dev/null; then
	case $ARCH in amd64) need+=(binutils) ;; arm64) need+=(binutils-aarch64-linux-gnu) ;; esac
fi
"$PY" -c 'import pip' 2>/dev/null || need+=(python3-pip)
"$PY" -c 'import setuptools' 2>/dev/null || need+=(python3-setuptools)
"$PY" -c 'import wheel' 2>/dev/null || need+=(python3-wheel)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "build-deb: installing build dependencies: ${need[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	else
		die "missing build dependencies; run: apt-get install --no-install-recommends ${need[*]}"
	fi
fi
[ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = 3.11 ] \
	|| die "$PY is not Python 3.11 (the package targets Debian 12's python3)"

# --- version and timestamps -------------------------------------------------------------------
CHANGELOG=$PKG/debian/changelog
mkdir -p "$WORK"
if [ -n "${DEB_VERSION:-}" ]; then
	base_date=$(dpkg-parsechangelog -l "$CHANGELOG" -S Date)
	maint=$(dpkg-parsechangelog -l "$CHANGELOG" -S Maintainer)
	{
		printf 'faultmail (%s) bookworm; urgency=medium\n\n' "$DEB_VERSION"
		printf '  * Rebuild as %s (DEB_VERSION).\n\n' "$DEB_VERSION"
		printf ' -- %s  %s\n\n' "$maint" "$base_date"
		cat "$CHANGELOG"
	} >"$WORK/changelog.new"
	CHANGELOG=$WORK/changelog.new
fi
VERSION=$(dpkg-parsechangelog -l "$CHANGELOG" -S Version)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -l "$PKG/debian/changelog" -S Timestamp)}
UPSTREAM=$("$PY" -c 'import tomllib; print(tomllib.load(open("'"$TOP"'/pyproject.toml", "rb"))["project"]["version"])')
[ "${VERSION%-*}" = "$UPSTREAM" ] \
	|| die "the package version $VERSION does not match pyproject.toml's $UPSTREAM: add an entry to packaging/debian/changelog"
CONFFILE=${FAULTMAIL_CONFFILE:-$TOP/config/faultmail.toml}
[ -f "$CONFFILE" ] || die "no conffile at $CONFFILE"
step "faultmail $VERSION for $ARCH ($PLATFORM), SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"

# --- inputs: pinned wheels and sdists, checked against their sha256 ---------------------------
LOCK=$PKG/deps/$ARCH.lock
SDIST_LOCK=$PKG/deps/sdist.lock
"${PKGTOOL[@]}" check-lock "$LOCK" "$SDIST_LOCK"
mkdir -p "$CACHE/wheels" "$CACHE/sdist"
fetch() { # lock dir pip-args...
	local lock=$1 dir=$2
	shift 2
	if ! "${PKGTOOL[@]}" select-files "$lock" "$dir" >/dev/null 2>&1; then
		step "downloading what $(basename "$lock") pins into $dir" >&2
		quiet pip_index download --no-deps --no-build-isolation --no-cache-dir --require-hashes \
			-d "$dir" -r "$lock" "$@"
	fi
	"${PKGTOOL[@]}" select-files "$lock" "$dir" || die "$dir lacks files that $lock pins"
}
mapfile -t WHEELS < <(fetch "$LOCK" "$CACHE/wheels" "${PIP_PLATFORM[@]}")
mapfile -t SDISTS < <(fetch "$SDIST_LOCK" "$CACHE/sdist" --no-binary=:all:)
step "inputs: ${#WHEELS[@]} wheels, ${#SDISTS[@]} sdist(s)"

# --- our wheel and the pure-Python wheels built from sdists -----------------------------------
rm -rf "$WORK/src" "$WORK/wheels" "$WORK/root"
mkdir -p "$WORK/src" "$WORK/wheels"
cp "$TOP/pyproject.toml" "$TOP/README.md" "$WORK/src/"
# The files pkgtool.py package-sources lists: agent/ without caches and test hooks (DEV_ONLY).
"${PKGTOOL[@]}" package-sources >"$WORK/sources.list"
tar -C "$TOP" --no-recursion --verbatim-files-from -T "$WORK/sources.list" -cf - | tar -C "$WORK/src" -xf -
quiet pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$WORK/wheels" "$WORK/src"
for sdist in "${SDISTS[@]}"; do
	quiet pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$WORK/wheels" "$sdist"
done
for w in "$WORK"/wheels/*.whl; do
	case $w in *-none-any.whl) ;; *) die "$(basename "$w") is not pure Python" ;; esac
done
step "built $(cd "$WORK/wheels" && echo *.whl)"

# --- the bundled environment ------------------------------------------------------------------
# A pip --target directory plus a launcher, rather than a venv: pip installs foreign-platform
# wheels (arm64 on amd64) only with --target; a venv would embed the build path in its scripts
# and bring pip and setuptools along. The launcher runs Debian's /usr/bin/python3 -IS with this
# directory first on sys.path and no other site-packages: the isolation of a venv.
ROOTFS=$WORK/root
SITE=$ROOTFS/$SITE_REL
mkdir -p "$SITE"
quiet pip install --no-index --no-deps --no-compile --no-cache-dir --root-user-action=ignore \
	--target "$SITE" "${PIP_PLATFORM[@]}" "${WHEELS[@]}" "$WORK"/wheels/*.whl
# Debian ships stripped shared objects (dh_strip's options); then RECORD gets the new hashes.
while IFS= read -r -d '' so; do
	if [ "$(head -c4 "$so" | od -An -c | tr -d ' ')" = '177ELF' ]; then
		"$STRIP" --remove-section=.comment --remove-section=.note --strip-unneeded "$so"
	fi
done < <(find "$SITE" -type f -name '*.so*' -print0 | sort -z)
"${PKGTOOL[@]}" prune "$SITE"
# Test hooks stay out of what a gateway runs: the module that arms FAULTMAIL_FAILPOINTS
# (pkgtool.py DEV_ONLY) and the test fakes, which live in tests/ (never packaged).
for hook in agent/failpoints_armed.py agent/testing.py tests; do
	[ ! -e "$SITE/$hook" ] || die "$hook is in the bundle: test hooks must stay out of the package"
done
py_files=$("${PKGTOOL[@]}" compile-check "$SITE")
ELF_DEPENDS=$("${PKGTOOL[@]}" elf-depends "$ARCH" "$SITE")
if [ "$ARCH" = amd64 ] && [ "$(dpkg --print-architecture)" = amd64 ]; then
	# Smoke test with the interpreter the package uses: every faultmail module imports.
	"$PY" -IS -c '
import importlib, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import agent
for m in pkgutil.walk_packages(agent.__path__, "agent."):
    if not m.name.endswith(".__main__"):
        importlib.import_module(m.name)
from agent.failpoints import available
assert not available(), "failpoints are armed in the bundle"
from agent.cli import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
' "$SITE" >/dev/null || die "the bundled environment does not import"
	# The man page is rendered from the argument parser (agent/cli/manpage.py): a copy that
	# differs would document a command line other than the one in the package.
	"$PY" -IS -c '
import sys
sys.path.insert(0, sys.argv[1])
from agent.cli.manpage import render
with open(sys.argv[2], encoding="utf-8") as fh:
    sys.exit(render() != fh.read())
' "$SITE" "$PKG/debian/faultmail.1" \
		|| die "packaging/debian/faultmail.1 differs from the command line; regenerate it:" \
			".venv/bin/python -m agent.cli.manpage > packaging/debian/faultmail.1"
	find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
fi
step "bundle: $(find "$SITE" -maxdepth 1 -name '*.dist-info' | wc -l) distributions, $py_files .py files, $(du -sk "$SITE" | cut -f1) KiB"

# --- the rest of the file system ---------------------------------------------------------------
install -D -m 0755 "$PKG/faultmail.launcher" "$ROOTFS/usr/bin/faultmail"
install -D -m 0644 "$TOP/systemd/faultmail.service" "$ROOTFS/lib/systemd/system/faultmail.service"
install -D -m 0644 "$TOP/systemd/faultmail.sysusers" "$ROOTFS/usr/lib/sysusers.d/faultmail.conf"
install -D -m 0644 "$CONFFILE" "$ROOTFS/etc/faultmail/faultmail.toml"
mkdir -p "$ROOTFS/usr/lib/credstore"
# The credential store entries the unit's LoadCredential=ID:faultmail.ID lines look up, pointing
# where its BindReadOnlyPaths=-%d/ID:/etc/faultmail/FILE lines say the secret lives.
links=0
while read -r credential file; do
	ln -s "$file" "$ROOTFS/usr/lib/credstore/faultmail.$credential"
	links=$((links + 1))
done < <(sed -n 's|^BindReadOnlyPaths=-%d/\([a-z0-9.-]*\):\(/etc/faultmail/[^ ]*\)$|\1 \2|p' \
	"$TOP/systemd/faultmail.service")
[ "$links" = "$(grep -c '^LoadCredential=' "$TOP/systemd/faultmail.service")" ] \
	|| die "systemd/faultmail.service: every LoadCredential= needs its BindReadOnlyPaths= line"
DOC=$ROOTFS/usr/share/doc/faultmail
install -D -m 0644 "$PKG/debian/README.Debian" "$DOC/README.Debian"
# The shipped configuration unedited: config errors and README.Debian point to it on a gateway.
install -D -m 0644 "$CONFFILE" "$DOC/examples/faultmail.toml"
gzip -9n <"$CHANGELOG" >"$DOC/changelog.Debian.gz"
"${PKGTOOL[@]}" copyright "$SITE" "$PKG/debian/copyright.in" >"$DOC/copyright"
mkdir -p "$ROOTFS/usr/share/man/man1"
# Generated from the argument parser (agent/cli/manpage.py), checked above on amd64 hosts and
# by tests/test_docs.py.
gzip -9n <"$PKG/debian/faultmail.1" >"$ROOTFS/usr/share/man/man1/faultmail.1.gz"
install -D -m 0644 "$PKG/debian/lintian-overrides" "$ROOTFS/usr/share/lintian/overrides/faultmail"

# Permissions as dh_fixperms leaves them: directories 0755, files 0644, the command 0755.
find "$ROOTFS" -type d -exec chmod 0755 {} +
find "$ROOTFS" -type f -exec chmod 0644 {} +
chmod 0755 "$ROOTFS/usr/bin/faultmail"

# --- control files -----------------------------------------------------------------------------
mkdir -p "$ROOTFS/DEBIAN"
for script in preinst postinst prerm postrm; do
	install -m 0755 "$PKG/debian/$script" "$ROOTFS/DEBIAN/$script"
done
install -m 0644 "$PKG/debian/conffiles" "$ROOTFS/DEBIAN/conffiles"
(cd "$ROOTFS" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort \
	| grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles) | xargs -d '\n' md5sum >DEBIAN/md5sums)
chmod 0644 "$ROOTFS/DEBIAN/md5sums"
DEPENDS="python3 (>= 3.11~), python3 (<< 3.12), $ELF_DEPENDS, ca-certificates, tzdata, systemd (>= 252)"
INSTALLED_SIZE=$("${PKGTOOL[@]}" installed-size "$ROOTFS")
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@DEPENDS@|$DEPENDS|" \
	-e "s|@INSTALLED_SIZE@|$INSTALLED_SIZE|" "$PKG/debian/control.in" >"$ROOTFS/DEBIAN/control"

# --- the archive ---------------------------------------------------------------------------------
find "$ROOTFS" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$OUTDIR"
DEB=$OUTDIR/faultmail_${VERSION}_${ARCH}.deb
# xz at dpkg's default level 6 (-9 saves 1 % and needs 64 MiB more to unpack on a gateway);
# one compressor thread, as the multi-threaded encoder writes different bytes.
quiet dpkg-deb --root-owner-group --threads-max=1 -Zxz --build "$ROOTFS" "$DEB"
step "built $DEB"
printf '  %-16s %s\n' \
	"version" "$VERSION" \
	"architecture" "$ARCH" \
	"size" "$(stat -c %s "$DEB") bytes ($(du -h --apparent-size "$DEB" | cut -f1))" \
	"installed size" "$INSTALLED_SIZE KiB" \
	"files" "$(dpkg-deb -c "$DEB" | grep -vc '^d')" \
	"depends" "$DEPENDS" \
	"sha256" "$(sha256sum "$DEB" | cut -d' ' -f1)"
