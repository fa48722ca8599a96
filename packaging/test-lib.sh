# Shared helpers of the install tests, packaging/test-deb.sh (amd64, or the host's architecture)
# and packaging/test-arm64.sh (arm64 under qemu-user). Sourced, not run:
#     TEST_NAME=test-deb ARCH=amd64 BASE_PACKAGES=... ; . "$(dirname "$0")/test-lib.sh"
# Before sourcing, the script sets TEST_NAME (log prefix and messages), ARCH, BASE_PACKAGES and
# SUMMARY_TITLE; it defines stop_container (how cleanup ends the container) and its own checks.
# Not shipped in the package.

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKG=$TOP/packaging
CACHE=${FAULTMAIL_TEST_CACHE:-/var/cache/faultmail-deb-test}
SUITE=bookworm
MIRROR=${FAULTMAIL_TEST_MIRROR:-http://deb.debian.org/debian}
# One install test at a time on this machine, from the boot to the end (see machine_lock).
MACHINE_LOCK=${FAULTMAIL_TEST_LOCK:-/run/faultmail-install-test.lock}
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

# --- logging and timing --------------------------------------------------------------------------
T0=${EPOCHREALTIME/[.,]/}
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 / 100 % 10)); }
log() { printf '[%s %6ss] %s\n' "$TEST_NAME" "$(secs $(($(now_ms) - T0 / 1000)))" "$*"; }

# --- checks and the summary ---------------------------------------------------------------------
declare -a RESULTS=() FIGURES=()
FAILED=0
# check NAME COMMAND...: run one check, record PASS/FAIL and its duration.
check() {
	local name=$1 start rc
	shift
	start=$(now_ms)
	log "── $name"
	CHECK_FAILED=0
	"$@"
	rc=$?
	[ "$CHECK_FAILED" = 0 ] || rc=1
	local took=$(($(now_ms) - start))
	if [ $rc = 0 ]; then
		RESULTS+=("$(printf '%-4s %7ss  %s' PASS "$(secs $took)" "$name")")
	else
		RESULTS+=("$(printf '%-4s %7ss  %s' FAIL "$(secs $took)" "$name")")
		FAILED=$((FAILED + 1))
		log "FAILED: $name"
	fi
	return $rc
}
figure() { FIGURES+=("$(printf '%-28s %s' "$1" "$2")"); }
# fail marks the running check as failed (whatever the check function returns) and returns 1.
fail() { echo "  ✗ $*" >&2; CHECK_FAILED=1; return 1; }
ok() { echo "  ✓ $*"; }
# wait_for SECONDS COMMAND...: poll every 0.5 s.
wait_for() {
	local deadline=$(($(now_ms) + $1 * 1000))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$(now_ms)" -lt $deadline ] || return 1
		sleep 0.5
	done
}

summary() {
	echo
	echo "══════ $SUMMARY_TITLE ══════"
	printf '%s\n' "${RESULTS[@]}"
	echo
	printf '%s\n' "${FIGURES[@]}"
	printf '%-28s %ss\n' "total" "$(secs $(($(now_ms) - T0 / 1000)))"
	if [ $FAILED -gt 0 ]; then
		echo "RESULT: $FAILED check(s) FAILED"
	else
		echo "RESULT: all checks passed"
	fi
}

# --- prerequisites -------------------------------------------------------------------------------
# need_root WHY: exit 2 unless root.
need_root() { [ "$(id -u)" = 0 ] || { echo "$TEST_NAME: needs root ($1)" >&2; exit 2; }; }
# need_tools COMMAND:PACKAGE...: apt-get install the packages of the commands that are missing.
need_tools() {
	local need=() tool
	for tool; do
		command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
	done
	if [ ${#need[@]} -gt 0 ]; then
		log "installing ${need[*]}"
		apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
			|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
			|| { echo "$TEST_NAME: cannot install ${need[*]}" >&2; exit 2; }
	fi
}

# setup WORKNAME MACHINE: the .deb under test (built if missing), a work directory
# /var/tmp/WORKNAME.XXXXXX with the container root in it, the container's name, and the cleanup.
setup() {
	VERSION=$(dpkg-parsechangelog -l "$PKG/debian/changelog" -S Version)
	DEB=$TOP/dist/faultmail_${VERSION}_${ARCH}.deb
	[ -f "$DEB" ] || bash "$PKG/build-deb.sh" "$ARCH" || exit 1
	WORK=$(mktemp -d "/var/tmp/$1.XXXXXX")
	ROOT=$WORK/root
	MACHINE=$2
	NSPAWN_PID= LEADER= MOSQUITTO_PID= SINK_PID= DNS_PID=
	trap cleanup EXIT
	trap 'exit 130' INT TERM
}

cleanup() {
	stop_container # the script's own: how its container is shut down
	[ -n "$MOSQUITTO_PID" ] && kill "$MOSQUITTO_PID" 2>/dev/null
	[ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null
	[ -n "$DNS_PID" ] && kill "$DNS_PID" 2>/dev/null
	wait 2>/dev/null
	if [ "${KEEP:-0}" = 1 ]; then
		log "kept $WORK"
	else
		rm -rf --one-file-system "$WORK"
	fi
}

# Run a command in the booted container (all its namespaces), with a clean environment.
ct() {
	nsenter -t "$LEADER" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive HOME=/root "$@"
}
unit_prop() { ct systemctl show -P "$1" faultmail.service; }

# --- the Debian 12 root ------------------------------------------------------------------------
# base_tarball: the cached debootstrap of $SUITE for $ARCH with $BASE_PACKAGES, built when missing;
# sets BASE_TARBALL.
base_tarball() {
	local key
	key=$(printf '%s\n' "$SUITE" "$ARCH" minbase "$BASE_PACKAGES" "$MIRROR" | sha256sum | cut -c1-12)
	BASE_TARBALL=$CACHE/debian12-$ARCH-$key.tar
	mkdir -p "$CACHE"
	exec 9>"$CACHE/.lock"
	flock 9 # another run on this machine may be building a tarball
	if [ ! -s "$BASE_TARBALL" ]; then
		log "no cached $ARCH base system: debootstrap --arch $ARCH $SUITE ($BASE_PACKAGES)"
		local tmp start
		start=$(now_ms)
		tmp=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
		if ! debootstrap --variant=minbase --arch="$ARCH" --include="$BASE_PACKAGES" \
			"$SUITE" "$tmp" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
			tail "$WORK/debootstrap.log"
			rm -rf --one-file-system "$tmp"
			exec 9>&-
			fail "debootstrap failed"
			return 1
		fi
		rm -rf "$tmp"/var/cache/apt/archives/*.deb
		chmod 0755 "$tmp" # mktemp made it 0700: it becomes the container's /
		tar --numeric-owner --xattrs -C "$tmp" -cf "$BASE_TARBALL.part" . && mv "$BASE_TARBALL.part" "$BASE_TARBALL"
		rm -rf --one-file-system "$tmp"
		figure "base tarball" "built (cold) in $(secs $(($(now_ms) - start)))s: $BASE_TARBALL"
	else
		figure "base tarball" "cached (warm): $BASE_TARBALL"
	fi
	exec 9>&-
}

# unpack_base DEB...: the base tarball unpacked as $ROOT, named $MACHINE, the packages in /srv/debs.
unpack_base() {
	mkdir -p "$ROOT"
	tar --numeric-owner --xattrs -C "$ROOT" -xf "$BASE_TARBALL" || return 1
	chmod 0755 "$ROOT"
	echo "$MACHINE" >"$ROOT/etc/hostname"
	: >"$ROOT/etc/machine-id"
	mkdir -p "$ROOT/srv/debs"
	cp "$@" "$ROOT/srv/debs/"
	chmod -R a+rX "$ROOT/srv/debs"
}

# --- one install test at a time on this machine -------------------------------------------------
# systemd-nspawn --keep-unit, run from the host's root cgroup, puts every container into the same
# /system.slice/faultmail.service cgroup: two install tests booted at once (amd64 and arm64, say)
# see each other's processes there and break each other's watchdog check. So from the boot to
# the end (the EXIT trap powers the container off first) each holds this lock; the descriptor is
# inherited by nspawn, so a container that outlives its script still holds it.
machine_lock() {
	local start=$(now_ms) wait_s=${FAULTMAIL_TEST_LOCK_WAIT:-3600}
	exec 8>"$MACHINE_LOCK" || { fail "cannot open $MACHINE_LOCK"; return 1; }
	if ! flock -n 8; then
		log "another install test holds $MACHINE_LOCK: waiting (up to ${wait_s}s)"
		flock -w "$wait_s" 8 || { fail "$MACHINE_LOCK still held after ${wait_s}s"; return 1; }
	fi
	ok "$MACHINE_LOCK held (waited $(secs $(($(now_ms) - start)))s)"
}

# start_nspawn TIMEOUT_S: boot $ROOT with systemd-nspawn in the background; sets NSPAWN_PID and
# LEADER (the container's systemd) once it exists.
start_nspawn() {
	systemd-nspawn --boot --register=no --keep-unit --console=passive -D "$ROOT" -M "$MACHINE" \
		>"$WORK/nspawn.log" 2>&1 &
	NSPAWN_PID=$!
	local deadline=$(($(now_ms) + $1 * 1000))
	until LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd); do
		kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/nspawn.log"; return 1; }
		[ "$(now_ms)" -lt $deadline ] || { cat "$WORK/nspawn.log"; return 1; }
		sleep 0.2
	done
}

# --- host side: Mosquitto and the SMTP sink on 127.0.0.1 -----------------------------------------
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
servers() {
	MQTT_PORT=$(free_port)
	SMTP_PORT=$(free_port)
	mkdir -p "$WORK/host/mails"
	cd "$WORK/host" || return 1
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=faultmail-test-CA \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
		-keyout ca.key -out ca.pem >/dev/null 2>&1 &&
		openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr >/dev/null 2>&1 &&
		openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out server.pem \
			-extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n') >/dev/null 2>&1 ||
		{ cd "$TOP"; fail "openssl could not make the test certificates"; return 1; }
	head -c 18 /dev/urandom | base64 | tr -d '/+' >smtp-password
	cat >mosquitto.conf <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest stdout
EOF
	mosquitto -c mosquitto.conf >mosquitto.log 2>&1 &
	MOSQUITTO_PID=$!
	/usr/bin/python3 -I "$PKG/test/smtp_sink.py" --port "$SMTP_PORT" --cert server.pem --key server.key \
		--user gw-test@example.com --password-file smtp-password --outdir mails >sink.log 2>&1 &
	SINK_PID=$!
	cd "$TOP" || return 1
	wait_for 10 grep -q listening "$WORK/host/sink.log" || { cat "$WORK/host/sink.log"; fail "SMTP sink did not start"; return 1; }
	wait_for 10 mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t faultmail-test/ping -m x || { cat "$WORK/host/mosquitto.log"; fail "mosquitto did not start"; return 1; }
	ok "mosquitto on 127.0.0.1:$MQTT_PORT, SMTP sink (implicit TLS, AUTH) on 127.0.0.1:$SMTP_PORT"
}

mails() { find "$WORK/host/mails" -name '*.eml' | wc -l; }
# publish UID CODE SEVERITY [MESSAGE]: a fault on the host's Mosquitto.
publish() {
	mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t "devices/$1/fault" \
		-m "{\"code\":\"$2\",\"severity\":\"$3\",\"message\":\"${4:-install test $2}\",\"seq\":1}"
}
mail_count_above() { [ "$(mails)" -gt "$1" ]; }
is_active() { [ "$(unit_prop ActiveState)" = active ]; }
is_failed() { [ "$(unit_prop ActiveState)" = failed ]; }
