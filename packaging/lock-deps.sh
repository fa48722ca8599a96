#!/usr/bin/env bash
# Re-resolve the bundled Python dependencies from pyproject.toml and pin them, with hashes, in
# packaging/deps/{amd64,arm64,sdist}.lock. Run it after changing [project].dependencies (the
# build refuses a stale lock), review the diff, commit it. Needs PyPI; the build then only
# downloads exactly these files (or nothing, once they are in build/deb/cache).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
exec /usr/bin/python3 -I packaging/pkgtool.py lock "$@"
