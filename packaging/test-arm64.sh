#!/usr/bin/env bash
# Install test of the arm64 package on an amd64 machine, under qemu-user emulation:
# `make test-arm64` (builds the arm64 .deb first), or
#     bash packaging/test-arm64.sh
# Needs root, qemu-user-static + binfmt-support, debootstrap, systemd-nspawn (systemd-container),
# lintian, mosquitto and openssl; missing tools are installed with apt-get. Exits non-zero if any
# check fails (a check that cannot run is a failure, never a skip), and prints timings and
# figures at the end. See packaging/README.md, "arm64".
#
#  1. qemu-aarch64 registered in binfmt_misc with the F flag (the kernel keeps the host's
#     emulator open, so arm64 programs run inside a root that has no qemu of its own); mounts
#     binfmt_misc and enables the handler when needed. lintian --fail-on warning.
#  2. a Debian 12 arm64 root from debootstrap --arch arm64 (its second stage runs under qemu
#     through binfmt_misc; the tarball is cached in $FAULTMAIL_TEST_CACHE, default
#     /var/cache/faultmail-deb-test, beside the amd64 one), booted with systemd-nspawn --boot:
#     arm64 systemd as the container's PID 1, sharing the host's network
#  3. in it: apt-get install ./faultmail_*_arm64.deb offline, postinst's py3compile with arm64
#     python3; `faultmail --version` and `--help`; every faultmail module and every bundled
#     extension module (cryptography, pydantic-core, cffi, PyNaCl, MarkupSafe, uvloop: the aarch64
#     wheels)
#     imports with the package's `python3 -IS`; without secrets the unit fails once with exit 2
#     naming the file; configured (`dkim keygen`, `config check` as root), it becomes active
#     (Type=notify), a fault published on the host's Mosquitto arrives as a DKIM-signed mail at
#     the SMTP sink on the host's 127.0.0.1, and is in `faultmail alerts`; the daemon is still the
#     same process, never restarted, after more than one WatchdogSec.
#
# What qemu-user cannot emulate, and the test therefore changes (a runtime drop-in, printed in
# the log; a real arm64 machine runs the unit unchanged, which test-deb.sh checks on amd64):
# systemd 252 clones a child into new namespaces to set up credentials, the IPC namespace and
# the user namespace, and qemu's clone() refuses namespace flags (EINVAL: 243/CREDENTIALS,
# 226/NAMESPACE, 217/USER). So LoadCredential=, BindReadOnlyPaths=, PrivateIPC= and
# PrivateUsers= are reset and the secret files belong to the faultmail user (0600). qemu also
# refuses a guest's seccomp filters (prctl PR_SET_SECCOMP: EINVAL), so systemd skips
# SystemCallFilter= and the other seccomp-based directives, as on a kernel without seccomp.
#
# Environment: KEEP=1 leaves the container root and logs in place; FAULTMAIL_TEST_CACHE,
# FAULTMAIL_TEST_MIRROR, FAULTMAIL_TEST_LOCK, FAULTMAIL_TEST_LOCK_WAIT (as test-deb.sh; the helpers
# both use are in packaging/test-lib.sh).
set -uo pipefail

ARCH=arm64
TEST_NAME=test-arm64
SUMMARY_TITLE="faultmail package test (arm64 under qemu-user on $(dpkg --print-architecture))"
# What a Debian 12 / Raspberry Pi OS gateway has anyway (every Depends of the package), no more:
# each package in the root is configured under emulation, and that is most of a cold run.
BASE_PACKAGES=systemd,systemd-sysv,dbus,python3,ca-certificates,tzdata
. "$(dirname "$0")/test-lib.sh"

# not_run NAME REASON: a check that could not run counts as failed (no silent skips).
not_run() {
	RESULTS+=("$(printf '%-4s %7s   %s' FAIL - "$1 (not run: $2)")")
	FAILED=$((FAILED + 1))
	log "not run: $1: $2"
}
# finish: print the summary and leave with the verdict (the EXIT trap cleans up).
finish() { summary; exit $((FAILED > 0)); }

# --- prerequisites -------------------------------------------------------------------------------
need_root "binfmt_misc, debootstrap, systemd-nspawn"
need_tools qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support lintian:lintian \
	debootstrap:debootstrap systemd-nspawn:systemd-container mosquitto:mosquitto \
	mosquitto_pub:mosquitto-clients openssl:openssl
setup faultmail-arm64-test "fmarm64-$$"

# cleanup's part. Through systemctl, never a signal to nspawn: nspawn asks the container's systemd
# to halt with a real-time signal, and under qemu-user that arrives as another one (seen: SIGTERM
# to nspawn put the arm64 systemd into rescue.target, and nspawn never exited).
stop_container() {
	if [ -n "$LEADER" ] && kill -0 "$LEADER" 2>/dev/null; then
		for _ in $(seq 20); do ct systemctl poweroff >/dev/null 2>&1 && break; sleep 1; done
		for _ in $(seq 180); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
		# Still there: killing the container's PID 1 ends every process in its PID namespace.
		kill -0 "$NSPAWN_PID" 2>/dev/null && kill -KILL "$LEADER" 2>/dev/null
	elif [ -n "$NSPAWN_PID" ]; then
		kill "$NSPAWN_PID" 2>/dev/null
	fi
}

# --- 1. emulation and the static check ----------------------------------------------------------
BINFMT=/proc/sys/fs/binfmt_misc
binfmt_check() {
	if [ ! -e "$BINFMT/register" ]; then
		mount -t binfmt_misc binfmt_misc "$BINFMT" || { fail "cannot mount binfmt_misc on $BINFMT"; return 1; }
		ok "mounted binfmt_misc on $BINFMT"
	fi
	if ! grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null; then
		update-binfmts --enable qemu-aarch64 || { fail "update-binfmts --enable qemu-aarch64 failed"; return 1; }
	fi
	grep -qx enabled "$BINFMT/qemu-aarch64" || { fail "no enabled qemu-aarch64 handler in $BINFMT"; return 1; }
	local flags
	flags=$(sed -n 's/^flags: //p' "$BINFMT/qemu-aarch64")
	echo "  $(sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64"), flags $flags"
	# F: the kernel opens the emulator when the handler is registered, so it runs arm64 programs
	# inside the container root too, where the host's /usr/libexec/qemu-binfmt is not visible.
	[[ $flags == *F* ]] || fail "the qemu-aarch64 handler lacks the F (fix binary) flag"
	figure "qemu" "$(qemu-aarch64-static --version | head -1)"
}

lintian_check() {
	local out rc
	out=$(lintian --fail-on warning --display-info "$DEB" 2>&1 | grep -v 'running with root privileges')
	rc=${PIPESTATUS[0]}
	[ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/  /'
	figure "lintian (--fail-on warning)" "$([ "$rc" = 0 ] && echo clean || echo "FAILED (exit $rc)")"
	return "$rc"
}

check "qemu-user: qemu-aarch64 registered in binfmt_misc (F flag)" binfmt_check || finish
check "lintian $(basename "$DEB")" lintian_check
figure ".deb" "$(stat -c %s "$DEB") bytes, sha256 $(sha256sum "$DEB" | cut -c1-16)…"

# --- 2. the Debian 12 arm64 root, booted --------------------------------------------------------
base_root() {
	base_tarball || return 1
	local start
	start=$(now_ms)
	unpack_base "$DEB" || return 1
	figure "unpack base tarball" "$(secs $(($(now_ms) - start)))s"
	local machine
	machine=$(chroot "$ROOT" /usr/bin/uname -m 2>&1)
	[ "$machine" = aarch64 ] && ok "chroot $ROOT uname -m: aarch64 ($(du -sh "$ROOT" | cut -f1))" \
		|| fail "the root's uname -m says '$machine', not aarch64"
}

# What qemu-user cannot emulate (see the header): a drop-in in the container's /etc, before the
# package is installed, so that postinst's first start already has it.
QEMU_DROPIN=/etc/systemd/system/faultmail.service.d/qemu-user.conf
write_dropin() {
	mkdir -p "$(dirname "$ROOT$QEMU_DROPIN")"
	cat >"$ROOT$QEMU_DROPIN" <<'EOF'
# packaging/test-arm64.sh: what qemu-user cannot emulate. systemd 252 clones a child into new
# namespaces for these, and qemu-user's clone() refuses namespace flags (EINVAL).
[Service]
# 243/CREDENTIALS: the secret files are read directly (owned by faultmail, 0600, in this test).
LoadCredential=
BindReadOnlyPaths=
# 226/NAMESPACE
PrivateIPC=no
# 217/USER
PrivateUsers=no
EOF
}

boot() {
	write_dropin
	local start
	start=$(now_ms)
	start_nspawn 60 || return 1
	# The emulated systemd takes a while to open its private socket: until then systemctl says
	# "offline" (or nothing), even with --wait.
	local state=
	until state=$(timeout 240 nsenter -t "$LEADER" -a systemctl is-system-running --wait 2>/dev/null)
		[ -n "$state" ] && [ "$state" != offline ]; do
		[ "$(now_ms)" -lt $((start + 240000)) ] || break
		sleep 0.5
	done
	figure "boot to is-system-running" "$(secs $(($(now_ms) - start)))s ($state)"
	echo "  container systemd: ${state:-no answer} (pid $LEADER: $(tr '\0' ' ' <"/proc/$LEADER/cmdline"))"
	case $state in running | degraded) ;; *) cat "$WORK/nspawn.log"; fail "the container did not boot"; return 1 ;; esac
	# Units with credentials of their own (systemd-sysusers, systemd-tmpfiles-setup*) fail under
	# qemu for the reason above, so "degraded" is expected; any other failure is one.
	local unit status
	for unit in $(ct systemctl list-units --failed --plain --no-legend --type=service | cut -d' ' -f1); do
		status=$(ct systemctl show -P ExecMainStatus "$unit")
		if [ "$status" = 243 ]; then
			echo "    failed as expected under qemu-user: $unit (243/CREDENTIALS)"
		else
			fail "$unit failed with status $status, not 243/CREDENTIALS"
		fi
	done
	local machine arch
	machine=$(ct uname -m) arch=$(ct dpkg --print-architecture)
	[ "$machine/$arch" = aarch64/arm64 ] && ok "inside: uname -m $machine, dpkg architecture $arch" \
		|| fail "inside: uname -m $machine, dpkg architecture $arch"
}

check "fresh Debian 12 arm64 root (debootstrap under qemu, cached tarball)" base_root || finish
check "the machine-wide install-test lock (one container at a time)" machine_lock || finish
check "boot it with systemd-nspawn --boot (arm64 systemd under qemu)" boot || finish

check "Mosquitto and an SMTP sink on the host's loopback" servers || finish

# --- 3. install and run ------------------------------------------------------------------------
install_check() {
	local start
	start=$(now_ms)
	ct apt-get install -y --no-install-recommends "/srv/debs/$(basename "$DEB")" >"$WORK/install.log" 2>&1 \
		|| { tail -20 "$WORK/install.log"; fail "apt-get install failed"; return 1; }
	figure "apt-get install" "$(secs $(($(now_ms) - start)))s (incl. py3compile)"
	grep -E '^(Setting up|Get:|Need to get)' "$WORK/install.log" | sed 's/^/  /'
	grep -qE '^Get:[0-9]+ (https?|ftp)://' "$WORK/install.log" && fail "apt downloaded something: the package should install offline"
	[ "$(ct dpkg-query -W -f '${db:Status-Status} ${Version} ${Architecture}' faultmail)" = "installed $VERSION arm64" ] \
		&& ok "faultmail $VERSION arm64 installed" || fail "not installed"
	ct getent passwd faultmail | grep -q ':/usr/sbin/nologin$' && ok "system user: $(ct getent passwd faultmail)" || fail "no faultmail system user"
	[ "$(ct systemctl is-enabled faultmail.service)" = enabled ] && ok "unit enabled" || fail "unit not enabled"
	local pyc
	pyc=$(ct find /usr/lib/faultmail -name '*.pyc' | wc -l)
	[ "$pyc" -gt 500 ] && ok "postinst (arm64 py3compile) compiled $pyc .pyc files" || fail "only $pyc .pyc files after postinst"
}

SITE_PACKAGES=/usr/lib/faultmail/site-packages
bundle_check() {
	local out start upstream
	upstream=${VERSION%-*}
	start=$(now_ms)
	out=$(ct faultmail --version 2>&1) || { echo "  $out"; fail "faultmail --version failed"; }
	figure "faultmail --version" "$(secs $(($(now_ms) - start)))s: $(head -1 <<<"$out")"
	[ "$out" = "faultmail $upstream" ] && ok "faultmail --version: $out" || fail "faultmail --version says '$out', expected 'faultmail $upstream'"
	out=$(ct faultmail --help 2>&1) && grep -q 'config' <<<"$out" && ok "faultmail --help: $(head -1 <<<"$out")" \
		|| { echo "$out" | tail -5; fail "faultmail --help failed"; }
	# As the launcher runs it (python3 -IS, the bundle first on sys.path), as build-deb.sh does on
	# amd64: every faultmail module, and every extension module in the bundle (the aarch64
	# wheels of cryptography, pydantic-core, cffi, PyNaCl, MarkupSafe, uvloop), found by its file.
	start=$(now_ms)
	out=$(ct /usr/bin/python3 -IS -c '
import importlib, pkgutil, platform, sys
from pathlib import Path
site = Path(sys.argv[1])
sys.path.insert(0, str(site))
import agent
modules = [m.name for m in pkgutil.walk_packages(agent.__path__, "agent.") if not m.name.endswith(".__main__")]
for name in modules:
    importlib.import_module(name)
extensions = sorted(site.rglob("*.so"))
assert extensions, "no extension modules in the bundle"
for path in extensions:
    parts = path.relative_to(site).parts
    name = ".".join([*parts[:-1], parts[-1].split(".")[0]])
    module = importlib.import_module(name)
    assert Path(module.__file__) == path, f"{name} loaded from {module.__file__}, not {path}"
    print(f"  {name}: {path.name}")
from agent.failpoints import available
assert not available(), "failpoints are armed in the package"
print(f"  {len(modules)} faultmail modules, {len(extensions)} extension modules on {platform.machine()}, python {platform.python_version()}")
' "$SITE_PACKAGES" 2>&1)
	local rc=$?
	printf '%s\n' "$out"
	[ $rc = 0 ] || { fail "the bundle does not import with python3 -IS on arm64"; return 1; }
	grep -q ' extension modules on aarch64, ' <<<"$out" || fail "the interpreter is not aarch64"
	figure "import every module" "$(secs $(($(now_ms) - start)))s"
}

no_secret_check() {
	# postinst started the unit with the shipped example config and no secret files: it must
	# fail once (exit status 2, message naming the file) and stay failed, not loop.
	ct systemctl cat faultmail.service | sed -n "\|$QEMU_DROPIN|,\$p" | grep -v '^#' | sed 's/^/  drop-in: /'
	wait_for 60 is_failed || { ct systemctl status faultmail --no-pager; fail "unit did not fail without secrets"; return 1; }
	sleep 12 # longer than RestartSec=10s: a restart would show now
	local status restarts journal
	status=$(unit_prop ExecMainStatus) restarts=$(unit_prop NRestarts)
	echo "  state $(unit_prop ActiveState), result $(unit_prop Result), exit status $status, restarts $restarts"
	journal=$(ct journalctl -u faultmail -b --no-pager -o cat) # once: no SIGPIPE under pipefail
	grep -E 'password_file|invalid configuration' <<<"$journal" | head -3 | sed 's/^/  journal: /'
	[ "$status" = 2 ] || fail "exit status $status, expected 2"
	[ "$restarts" = 0 ] || fail "restarted $restarts times: a crash loop"
	grep -q "/etc/faultmail/smtp-password' does not exist" <<<"$journal" \
		|| fail "the journal does not name the missing secret file"
}

CONF=$ROOT/etc/faultmail/faultmail.toml
configure_check() {
	local edits=('gateway.id="gw-arm64-01"' 'gateway.site="arm64 install test"'
		'mqtt.host="127.0.0.1"' "mqtt.port=$MQTT_PORT" 'mqtt.client_id="faultmail-gw-arm64-01"'
		'smtp.host="127.0.0.1"' "smtp.port=$SMTP_PORT" 'smtp.security="tls"'
		'smtp.ca_file="/etc/faultmail/test-ca.pem"' 'smtp.username="gw-test@example.com"'
		'smtp.from="Gateway arm64 <gw-test@example.com>"')
	grep -q '^ehlo_name *=' "$CONF" && edits+=('smtp.ehlo_name="gw-arm64-01.example.com"')
	/usr/bin/python3 -I "$PKG/test/conf_edit.py" "$CONF" "${edits[@]}" || { fail "conf_edit.py"; return 1; }
	install -m 0644 "$WORK/host/ca.pem" "$ROOT/etc/faultmail/test-ca.pem"
	install -m 0600 "$WORK/host/smtp-password" "$ROOT/etc/faultmail/smtp-password"
	local start
	start=$(now_ms)
	ct faultmail dkim keygen --selector gw2026 --domain example.com --out /etc/faultmail/dkim.key \
		>"$WORK/keygen.log" 2>&1 || { cat "$WORK/keygen.log"; fail "faultmail dkim keygen failed"; return 1; }
	figure "dkim keygen" "$(secs $(($(now_ms) - start)))s (RSA, cryptography's aarch64 extension)"
	ok "DKIM key from faultmail dkim keygen: $(ct stat -c '%n %a %U' /etc/faultmail/dkim.key)"
	# No credentials under qemu (the drop-in): the service reads its secret files itself.
	ct chown faultmail: /etc/faultmail/smtp-password /etc/faultmail/dkim.key || { fail "chown"; return 1; }
	ct faultmail config check >"$WORK/config-check.out" 2>"$WORK/config-check.log" \
		|| { cat "$WORK/config-check.out" "$WORK/config-check.log"; fail "faultmail config check (as root)"; return 1; }
	ok "config check as root: exit 0$(sed 's/^/; /' "$WORK/config-check.log" | head -2 | tr -d '\n')"
	start=$(now_ms)
	ct systemctl restart faultmail.service || { ct journalctl -u faultmail -b --no-pager -n 20; fail "restart failed"; return 1; }
	figure "restart to active (READY=1)" "$(secs $(($(now_ms) - start)))s"
	is_active || { fail "not active"; return 1; }
	DAEMON_PID=$(unit_prop MainPID) DAEMON_START=$(now_ms) WATCHDOG_USEC=$(unit_prop WatchdogUSec)
	ok "active, main pid $DAEMON_PID, user $(ct stat -c %U "/proc/$DAEMON_PID")"
}

mail_check() {
	local before start eml
	before=$(mails)
	start=$(now_ms)
	publish pump-7 E042 critical "arm64 install test E042" || return 1
	wait_for 60 mail_count_above "$before" || { ct journalctl -u faultmail -b --no-pager -n 30 -o cat; fail "no mail within 60 s"; return 1; }
	figure "published fault to mail" "$(secs $(($(now_ms) - start)))s"
	eml=$(find "$WORK/host/mails" -name '*.eml' | sort | tail -1)
	grep -m1 '^Subject:' "$eml" | sed 's/^/  /'
	grep -q '^Subject:.*E042' "$eml" || fail "the mail's subject lacks the fault code"
	grep -q '^X-Sink-To: ops@example.com' "$eml" && ok "to ops@example.com" || fail "wrong recipient"
	grep -q '^DKIM-Signature:.*' "$eml" && ok "DKIM-signed" || fail "not DKIM-signed"
	ct faultmail alerts --json | grep -q '"code": "E042"' && ok "recorded in the outbox (faultmail alerts, as root)" || fail "not in faultmail alerts"
}

watchdog_check() {
	# The daemon pings the watchdog every WatchdogSec/3; a late ping under emulation would kill
	# it (SIGABRT) and restart it. Still the same process after more than one WatchdogSec?
	local watchdog_s
	watchdog_s=${WATCHDOG_USEC%s} # systemctl show prints 30s
	[[ $watchdog_s =~ ^[0-9]+$ ]] && [ "$watchdog_s" -gt 0 ] || { fail "the unit's WatchdogUSec is '$WATCHDOG_USEC'"; return 1; }
	local wait_ms=$((DAEMON_START + (watchdog_s + 5) * 1000 - $(now_ms)))
	[ $wait_ms -gt 0 ] && sleep "$(secs $wait_ms)"
	local up=$(($(now_ms) - DAEMON_START))
	is_active && [ "$(unit_prop MainPID)" = "$DAEMON_PID" ] && [ "$(unit_prop NRestarts)" = 0 ] \
		&& ok "active $(secs $up)s, pid $DAEMON_PID, no restarts (WatchdogSec=${watchdog_s}s)" \
		|| { ct journalctl -u faultmail -b --no-pager -n 20 -o cat; fail "pid $DAEMON_PID → $(unit_prop MainPID), restarts $(unit_prop NRestarts)"; }
}

if check "install: apt-get install ./$(basename "$DEB") (arm64, offline)" install_check; then
	check "the bundle runs on arm64: --version, --help, every module and extension imports" bundle_check
	check "without secrets: fails once with exit 2 naming the file, no restart loop" no_secret_check
	if check "configured (dkim keygen, config check): the service becomes active" configure_check; then
		check "a published fault arrives as a DKIM-signed mail" mail_check
		check "the daemon outlives a WatchdogSec unrestarted" watchdog_check
	else
		not_run "mail, watchdog" "the service did not become active"
	fi
else
	not_run "everything after install" "the package did not install"
fi

finish
