#!/usr/bin/env bash
# Install test of the faultmail package under a real systemd: `make test-deb` (builds first), or
#     bash packaging/test-deb.sh [amd64]
# Needs root, debootstrap, systemd-nspawn (systemd-container), lintian, mosquitto and openssl;
# missing tools are installed with apt-get. Exits non-zero if any check fails, and prints
# timings and figures at the end. See packaging/README.md.
#
#  1. lintian --fail-on warning; the unit's exposure (systemd-analyze security --offline=true)
#  2. a second build is byte-identical (reproducibility); a newer build for the upgrade
#  3. a fresh Debian 12 root from debootstrap (the base tarball is cached in
#     $FAULTMAIL_TEST_CACHE, default /var/cache/faultmail-deb-test), booted with
#     systemd-nspawn --boot; it shares the host's network, so the daemon inside reaches the
#     Mosquitto and the TLS+AUTH SMTP sink this script runs on the host's 127.0.0.1
#  4. in it: the documented install path, README.Debian's numbered steps, command by command as
#     the document gives them (packaging/test/readme_steps.py extracts them; see "The documented
#     path" below for the three stand-ins): apt install; without secrets the unit fails once with
#     exit status 2 naming the missing file (no restart loop); configuration, password, DKIM key,
#     the DNS records (served to doctor by dnsmasq on the host), doctor, send-test, start, status;
#     the unit is active, the test mail arrived DKIM-signed; a published fault arrives as a mail; the test hooks are not in the package (`import
#     agent.testing` fails, and a daemon started with FAULTMAIL_FAILPOINTS=after_commit_before_ack
#     still mails and does not die); SIGSTOP trips the watchdog and systemd restarts it;
#     an upgrade keeps the edited conffile (new one as .dpkg-dist) and the outbox; remove keeps
#     config and state; purge deletes them.
#
# Environment: KEEP=1 leaves the container root and logs in place; QUICK=1 skips the
# reproducibility rebuild; FAULTMAIL_TEST_CACHE, FAULTMAIL_TEST_MIRROR; FAULTMAIL_TEST_LOCK (default
# /run/faultmail-install-test.lock: one install test boots at a time on a machine, test-arm64.sh
# too), FAULTMAIL_TEST_LOCK_WAIT (seconds, default 3600). Helpers: packaging/test-lib.sh.
set -uo pipefail

ARCH=${1:-amd64}
TEST_NAME=test-deb
SUMMARY_TITLE="faultmail package test ($ARCH)"
# The base system: what a Debian 12 gateway has anyway (the package's Depends are all here, so
# installing needs no network, as on site) plus man-db for systemd-analyze verify's man: check.
BASE_PACKAGES=systemd,systemd-sysv,dbus,python3,ca-certificates,tzdata,man-db
. "$(dirname "$0")/test-lib.sh"

skip() { RESULTS+=("$(printf '%-4s %7s   %s' SKIP - "$1: $2")"); log "skipped: $1: $2"; }

# --- prerequisites -------------------------------------------------------------------------------
need_root "debootstrap, systemd-nspawn"
need_tools lintian:lintian debootstrap:debootstrap systemd-nspawn:systemd-container \
	mosquitto:mosquitto mosquitto_pub:mosquitto-clients openssl:openssl systemd-analyze:systemd \
	dnsmasq:dnsmasq-base
setup faultmail-deb-test "fmtest-$$"

# cleanup's part: power the container off, then end nspawn.
stop_container() {
	if [ -n "$LEADER" ] && kill -0 "$LEADER" 2>/dev/null; then
		ct systemctl poweroff >/dev/null 2>&1
		for _ in $(seq 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
	fi
	[ -n "$NSPAWN_PID" ] && kill "$NSPAWN_PID" 2>/dev/null
}

# --- 1. static checks -------------------------------------------------------------------------
lintian_check() {
	local out rc
	out=$(lintian --fail-on warning --display-info "$DEB" 2>&1 | grep -v 'running with root privileges')
	rc=${PIPESTATUS[0]}
	[ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/  /'
	local overrides
	overrides=$(grep -c '^faultmail: ' "$PKG/debian/lintian-overrides")
	local tags
	tags=$(printf '%s\n' "$out" | grep -c '^[EWIP]:')
	if [ "$rc" = 0 ]; then
		figure "lintian (--fail-on warning)" "clean: 0 errors, 0 warnings, $tags info tag(s), $overrides override(s)"
	else
		figure "lintian (--fail-on warning)" "FAILED (exit $rc)"
	fi
	return "$rc"
}

exposure_check() {
	local line score
	line=$(systemd-analyze security --offline=true "$TOP/systemd/faultmail.service" 2>&1 | grep 'Overall exposure level')
	score=$(printf '%s' "$line" | grep -oE '[0-9]+\.[0-9]+' | head -1)
	echo "  $line"
	figure "exposure (offline)" "${score:-?} (limit 2.0)"
	[ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure ${score:-unknown} > 2.0"
}

check "lintian" lintian_check
check "unit exposure ≤ 2.0 (systemd-analyze security --offline=true)" exposure_check
figure ".deb size" "$(stat -c %s "$DEB") bytes ($(du -h --apparent-size "$DEB" | cut -f1)), $(basename "$DEB")"
figure "installed size" "$(dpkg-deb -f "$DEB" Installed-Size) KiB"

# --- 2. reproducibility and the newer build --------------------------------------------------
reproducible_check() {
	local first second
	first=$(sha256sum "$DEB" | cut -d' ' -f1)
	OUTDIR=$WORK/rebuild bash "$PKG/build-deb.sh" "$ARCH" >"$WORK/rebuild.log" 2>&1 || { tail "$WORK/rebuild.log"; return 1; }
	second=$(sha256sum "$WORK/rebuild/$(basename "$DEB")" | cut -d' ' -f1)
	echo "  first  $first"
	echo "  second $second"
	figure "reproducible" "$([ "$first" = "$second" ] && echo "yes, sha256 $first" || echo "NO ($first vs $second)")"
	[ "$first" = "$second" ] || fail "rebuild differs (did the source tree change since the first build?)"
}
if [ "${QUICK:-0}" = 1 ]; then
	skip "reproducible" "QUICK=1"
else
	check "reproducible: a second build gives the same sha256" reproducible_check
fi

NEW_VERSION=${VERSION}+upgradetest1
NEW_DEB=$WORK/upgrade/faultmail_${NEW_VERSION}_${ARCH}.deb
newer_build() {
	# A changed shipped conffile, so that the upgrade has to keep the technician's version.
	cp "$TOP/config/faultmail.toml" "$WORK/faultmail.toml.new"
	printf '\n# (upgrade test: the shipped example changed)\n' >>"$WORK/faultmail.toml.new"
	DEB_VERSION=$NEW_VERSION FAULTMAIL_CONFFILE=$WORK/faultmail.toml.new OUTDIR=$WORK/upgrade \
		bash "$PKG/build-deb.sh" "$ARCH" >"$WORK/upgrade.log" 2>&1 || { tail "$WORK/upgrade.log"; return 1; }
	ok "$(basename "$NEW_DEB")"
}
check "newer build $NEW_VERSION for the upgrade" newer_build

HOST_ARCH=$(dpkg --print-architecture)
if [ "$ARCH" != "$HOST_ARCH" ]; then
	skip "install test" "the $ARCH package needs an $ARCH machine to boot (this one is $HOST_ARCH)"
	summary
	exit $((FAILED > 0))
fi

# --- 3. the Debian 12 root, booted -------------------------------------------------------------
base_root() {
	base_tarball || return 1
	unpack_base "$DEB" "$NEW_DEB" || return 1
	ok "$(du -sh "$ROOT" | cut -f1) in $ROOT"
}

boot() {
	start_nspawn 30 || return 1
	local state deadline
	# Until systemd in the container has opened its private socket, systemctl cannot ask it
	# and prints nothing: ask again until it answers (running, degraded, ...).
	deadline=$(($(now_ms) + 90000))
	until state=$(timeout 90 nsenter -t "$LEADER" -a systemctl is-system-running --wait 2>/dev/null) ||
		[ -n "$state" ] || [ "$(now_ms)" -ge $deadline ]; do
		kill -0 "$NSPAWN_PID" 2>/dev/null || break
		sleep 0.5
	done
	echo "  container systemd: ${state:-no answer} (pid $LEADER)"
	[ "$state" = degraded ] && ct systemctl --failed --no-legend | sed 's/^/    failed: /'
	case $state in running | degraded) return 0 ;; *) cat "$WORK/nspawn.log"; return 1 ;; esac
}

check "fresh Debian 12 root (debootstrap, cached tarball)" base_root || { summary; exit 1; }
check "the machine-wide install-test lock (one container at a time)" machine_lock || { summary; exit 1; }
check "boot it with systemd-nspawn --boot" boot || {
	echo "systemd-nspawn could not boot the root; see the log above. The install checks need a" >&2
	echo "kernel and cgroup setup where nspawn can run systemd (root, not in an unprivileged container)." >&2
	skip "install, mail, watchdog, upgrade, remove, purge" "the container did not boot"
	summary
	exit 1
}

check "Mosquitto and an SMTP sink on the host's loopback" servers || { summary; exit 1; }

# --- 4. the documented path: install, configure, mail -----------------------------------------
# README.Debian's numbered steps, their command lines taken from the document (readme_steps.py),
# run as root in the container from /root, each with `bash -o pipefail`, stdin /dev/null. Three
# stand-ins, and nothing else is changed:
#   - the package file: `./faultmail_<anything>.deb` becomes the .deb under test;
#   - `editor FILE`: /usr/local/bin/editor in the container (first on PATH) types the test's
#     values, the ones step 2 lists (broker, relay, ehlo_name, DKIM domain and selector), into
#     faultmail.toml, and the sink's password into smtp-password;
#   - `faultmail doctor` gets `--resolver 127.0.0.1:PORT`: dnsmasq on the host, started after
#     the step that prints /root/dkim-dns.txt, with its record (as IT would publish it) plus
#     SPF and DMARC for example.com.
# Every command and its output go to $WORK/documented-path.log, printed before the summary.
declare -A DOC_COMMANDS=() DOC_TITLES=()
DOC_LAST=0
while IFS=$'\t' read -r kind number text; do
	if [ "$kind" = STEP ]; then
		DOC_TITLES[$number]=$text DOC_COMMANDS[$number]= DOC_LAST=$number
	else
		DOC_COMMANDS[$number]+=$text$'\n'
	fi
done < <(/usr/bin/python3 -I "$PKG/test/readme_steps.py" "$PKG/debian/README.Debian")
TRANSCRIPT=$WORK/documented-path.log
DNS_PORT=

doc_substitute() {
	local command=$1
	command=$(sed -E "s#\./faultmail_[^ ]*\.deb#/srv/debs/$(basename "$DEB")#" <<<"$command")
	case $command in
	"faultmail doctor"*) command="faultmail doctor --resolver 127.0.0.1:$DNS_PORT${command#faultmail doctor}" ;;
	esac
	printf '%s' "$command"
}

# doc_step N: run README.Debian step N's commands in order; stop at the first that fails.
doc_step() {
	local number=$1 command run rc out start took
	[ -n "${DOC_TITLES[$number]:-}" ] || { fail "README.Debian has no step $number"; return 1; }
	printf '\n%s. %s\n' "$number" "${DOC_TITLES[$number]}" >>"$TRANSCRIPT"
	echo "  step $number: ${DOC_TITLES[$number]}"
	while IFS= read -r command; do
		[ -n "$command" ] || continue
		run=$(doc_substitute "$command")
		printf '   # %s\n' "$run" >>"$TRANSCRIPT"
		start=$(now_ms)
		out=$(ct bash -o pipefail -c "cd /root && $run" </dev/null 2>&1)
		rc=$?
		took=$(secs $(($(now_ms) - start)))
		printf '%s\n' "$out" | sed 's/^/     /' >>"$TRANSCRIPT"
		if [ "$rc" != 0 ]; then
			printf '     (exit status %s)\n' "$rc" >>"$TRANSCRIPT"
			printf '%s\n' "$out" | tail -15 | sed 's/^/    /'
			fail "README.Debian step $number: \`$run\` exited $rc"
			return 1
		fi
		printf '     (%ss)\n' "$took" >>"$TRANSCRIPT"
		echo "    ✓ $run (${took}s)"
		[ "$run" = "systemctl restart faultmail" ] && figure "restart to active (READY=1)" "${took}s"
	done <<<"${DOC_COMMANDS[$number]}"
}

install_check() {
	local start took
	[ "$DOC_LAST" -ge 9 ] || { fail "README.Debian has $DOC_LAST numbered steps"; return 1; }
	grep -q '^apt install ' <<<"${DOC_COMMANDS[1]}" || { fail "README.Debian step 1 is not apt install"; return 1; }
	echo "The documented install path (README.Debian), as test-deb ran it:" >"$TRANSCRIPT"
	start=$(now_ms)
	doc_step 1 || return 1
	took=$(($(now_ms) - start))
	cp "$TRANSCRIPT" "$WORK/install.log"
	figure "apt-get install" "$(secs $took)s (incl. py3compile)"
	grep -E '^ *(Setting up|Get:|Need to get)' "$WORK/install.log" | sed 's/^ */  /'
	grep -qE '^ *Get:[0-9]+ (https?|ftp)://' "$WORK/install.log" && fail "apt downloaded something: the package should install offline"
	[ "$(ct dpkg-query -W -f '${db:Status-Status} ${Version}' faultmail)" = "installed $VERSION" ] || fail "not installed"
	ct getent passwd faultmail | grep -q ':/usr/sbin/nologin$' && ok "system user: $(ct getent passwd faultmail)" || fail "no faultmail system user"
	[ "$(ct systemctl is-enabled faultmail.service)" = enabled ] && ok "unit enabled" || fail "unit not enabled"
	[ "$(ct dpkg -L faultmail | grep -c '\.pyc$')" = 0 ] && ok "no .pyc shipped" || fail ".pyc files in the package"
	local pyc
	pyc=$(ct find /usr/lib/faultmail -name '*.pyc' | wc -l)
	[ "$pyc" -gt 500 ] && ok "postinst compiled $pyc .pyc files" || fail "only $pyc .pyc files after postinst"
	[ "$(ct stat -c '%a %U' /etc/faultmail/faultmail.toml)" = "644 root" ] && ok "conffile /etc/faultmail/faultmail.toml" || fail "conffile mode/owner"
}

no_secret_check() {
	# postinst started the unit with the shipped example config and no secret files: it must
	# fail once (exit status 2, message naming the file) and stay failed, not loop.
	wait_for 30 is_failed || { ct systemctl status faultmail --no-pager; fail "unit did not fail without secrets"; return 1; }
	sleep 12 # longer than RestartSec=10s: a restart would show now
	local status restarts result
	status=$(unit_prop ExecMainStatus) restarts=$(unit_prop NRestarts) result=$(unit_prop Result)
	echo "  state $(unit_prop ActiveState), result $result, exit status $status, restarts $restarts"
	local journal
	journal=$(ct journalctl -u faultmail -b --no-pager -o cat)  # once: no SIGPIPE under pipefail
	grep -E 'password_file|dkim|invalid configuration' <<<"$journal" | head -4 | sed 's/^/  journal: /'
	[ "$status" = 2 ] || fail "exit status $status, expected 2"
	[ "$restarts" = 0 ] || fail "restarted $restarts times: a crash loop"
	grep -q "/etc/faultmail/smtp-password' does not exist" <<<"$journal" \
		|| fail "the journal does not name the missing secret file"
}

unit_checks() {
	local out
	out=$(ct systemd-analyze verify faultmail.service 2>&1)
	if [ -z "$out" ]; then ok "systemd-analyze verify: no output"; else printf '  verify: %s\n' "$out"; fail "systemd-analyze verify complained"; fi
	local line
	line=$(ct systemd-analyze security faultmail.service 2>&1 | grep 'Overall exposure')
	echo "  in the container: $line"
	figure "exposure (installed unit)" "$(printf '%s' "$line" | grep -oE '[0-9]+\.[0-9]+' | head -1)"
	[ -z "$out" ]
}

CONF=$ROOT/etc/faultmail/faultmail.toml
EHLO=gw-test-01.example.com
# The technician at the keyboard, for `editor` in README.Debian steps 2 and 3.
scripted_editor() {
	mkdir -p "$ROOT/srv/test"
	install -m 0644 "$PKG/test/conf_edit.py" "$ROOT/srv/test/conf_edit.py"
	install -m 0600 "$WORK/host/smtp-password" "$ROOT/srv/test/smtp-password"
	install -m 0644 "$WORK/host/ca.pem" "$ROOT/etc/faultmail/test-ca.pem"
	cat >"$ROOT/usr/local/bin/editor" <<EOF
#!/bin/sh
# test-deb.sh: types the test's values where README.Debian says "editor FILE".
set -e
case "\$1" in
*/faultmail.toml)
	exec python3 -I /srv/test/conf_edit.py "\$1" \\
		'gateway.id="gw-test-01"' 'gateway.site="install test"' \\
		'mqtt.host="127.0.0.1"' 'mqtt.port=$MQTT_PORT' 'mqtt.client_id="faultmail-gw-test-01"' \\
		'smtp.host="127.0.0.1"' 'smtp.port=$SMTP_PORT' 'smtp.security="tls"' \\
		'smtp.ca_file="/etc/faultmail/test-ca.pem"' 'smtp.username="gw-test@example.com"' \\
		'smtp.from="Gateway Test <gw-test@example.com>"' 'smtp.ehlo_name="$EHLO"' \\
		'policy.allowed_domains=["example.com"]' 'routes.to=["ops@example.com"]' \\
		'dkim.domain="example.com"' 'dkim.selector="gw2026"' ;;
*/smtp-password) cat /srv/test/smtp-password >"\$1" ;;
*) echo "editor (test-deb): no values for \$1" >&2; exit 1 ;;
esac
EOF
	chmod 0755 "$ROOT/usr/local/bin/editor"
}

# IT publishes what README.Debian step 5 hands over: the DKIM line of /root/dkim-dns.txt (its
# quoted strings as they are), and SPF and DMARC records for the From domain.
publish_dns() {
	local line name strings longest=0 part
	line=$(grep -m1 ' IN TXT ' "$ROOT/root/dkim-dns.txt") || { fail "/root/dkim-dns.txt has no TXT record"; return 1; }
	name=${line%%. IN TXT*}
	mapfile -t strings < <(grep -oE '"[^"]*"' <<<"$line" | tr -d '"')
	for part in "${strings[@]}"; do [ ${#part} -gt $longest ] && longest=${#part}; done
	if [ "$longest" -le 255 ]; then
		ok "DKIM record: ${#strings[@]} quoted string(s), the longest $longest bytes"
	else
		fail "a TXT string of $longest bytes: DNS allows 255"
	fi
	DNS_PORT=$(free_port)
	dnsmasq --keep-in-foreground --no-hosts --no-resolv --no-poll --conf-file=/dev/null --user=root \
		--port="$DNS_PORT" --listen-address=127.0.0.1 --bind-interfaces --pid-file="$WORK/host/dnsmasq.pid" \
		--log-facility=- --log-queries \
		"--txt-record=$name,$(IFS=,; echo "${strings[*]}")" \
		'--txt-record=example.com,v=spf1 ip4:127.0.0.1 -all' \
		'--txt-record=_dmarc.example.com,v=DMARC1; p=none' >"$WORK/host/dnsmasq.log" 2>&1 &
	DNS_PID=$!
	wait_for 10 grep -q 'started' "$WORK/host/dnsmasq.log" || { cat "$WORK/host/dnsmasq.log"; fail "dnsmasq did not start"; return 1; }
	ok "dnsmasq on 127.0.0.1:$DNS_PORT serves $name, SPF and DMARC for example.com"
}

documented_path_check() {
	local before number eml start
	scripted_editor
	before=$(mails) start=$(now_ms)
	for number in $(seq 2 "$DOC_LAST"); do
		doc_step "$number" || return 1
		if grep -q 'dkim keygen' <<<"${DOC_COMMANDS[$number]}"; then
			local mode
			mode=$(ct stat -c '%a %U:%G' /etc/faultmail/dkim.key)
			[ "$mode" = "600 root:root" ] && ok "DKIM key /etc/faultmail/dkim.key: 0600 root:root" \
				|| fail "DKIM key mode and owner: $mode"
		elif [ -z "$DNS_PID" ] && grep -q 'dkim-dns.txt' <<<"${DOC_COMMANDS[$number]}"; then
			publish_dns || return 1
		fi
	done
	figure "README.Debian steps 2-$DOC_LAST" "$(secs $(($(now_ms) - start)))s (doctor, send-test and the start included)"
	[ -n "$DNS_PID" ] || fail "no step printed /root/dkim-dns.txt for IT"
	grep -q "OK *relay EHLO name" "$TRANSCRIPT" && ok "doctor: the EHLO name $EHLO is fully qualified" \
		|| fail "doctor did not pass the EHLO name"
	grep -q "OK *DKIM rsa" "$TRANSCRIPT" && ok "doctor: the DKIM key matches the published record" \
		|| fail "doctor did not pass DKIM"
	mail_count_above "$before" && ok "send-test: the test mail reached the relay" || fail "no test mail at the relay"
	eml=$(find "$WORK/host/mails" -name '*.eml' | sort | head -1)
	[ -n "$eml" ] && grep -q '^DKIM-Signature:' "$eml" && ok "the test mail is DKIM-signed" \
		|| fail "the test mail is not DKIM-signed"
	ct faultmail config check >/dev/null 2>"$WORK/config-check.log" || { cat "$WORK/config-check.log"; fail "faultmail config check (as root)"; return 1; }
	ok "config check as root: $(cat "$WORK/config-check.log")"
	is_active || { ct journalctl -u faultmail -b --no-pager -n 20; fail "not active after README.Debian's steps"; return 1; }
	ok "active, main pid $(unit_prop MainPID), user $(ct stat -c %U "/proc/$(unit_prop MainPID)")"
	ct stat -c '  state dir: %n %a %U' /var/lib/faultmail
	# The credential reached the service, not the file: 0600 root, unreadable by faultmail.
	ct runuser -u faultmail -- cat /etc/faultmail/smtp-password >/dev/null 2>&1 && fail "faultmail can read the secret file directly"
	return 0
}

mail_check() {
	local before start
	before=$(mails)
	start=$(now_ms)
	publish pump-7 E042 critical || return 1
	wait_for 40 mail_count_above "$before" || { ct journalctl -u faultmail -b --no-pager -n 30 -o cat; fail "no mail within 40 s"; return 1; }
	figure "published fault to mail" "$(secs $(($(now_ms) - start)))s"
	local eml
	eml=$(find "$WORK/host/mails" -name '*.eml' | sort | tail -1)
	grep -m1 '^Subject:' "$eml" | sed 's/^/  /'
	grep -q '^Subject:.*E042' "$eml" || fail "the mail's subject lacks the fault code"
	grep -q '^X-Sink-To: ops@example.com' "$eml" || fail "wrong recipient"
	if grep -q '^\[dkim\]' "$CONF"; then grep -q '^DKIM-Signature:' "$eml" && ok "DKIM-signed" || fail "not DKIM-signed"; fi
	ct faultmail alerts --json | grep -q '"code": "E042"' && ok "recorded in the outbox (faultmail alerts, as root)" || fail "not in faultmail alerts"
}

SITE_PACKAGES=/usr/lib/faultmail/site-packages
FAILPOINT_DROPIN=/run/systemd/system/faultmail.service.d
test_hooks_check() {
	# What the fault-injection tests use must be inert on a gateway: the test fakes are not
	# importable with the package's interpreter and path, the module that arms failpoints is not
	# shipped, and the daemon ignores FAULTMAIL_FAILPOINTS (which makes a repository build SIGKILL
	# itself at that point).
	local out
	if out=$(ct /usr/bin/python3 -IS -c "import sys; sys.path.insert(0, '$SITE_PACKAGES'); import agent.testing" 2>&1); then
		fail "import agent.testing works in the installed package"
	else
		ok "python3 -c 'import agent.testing' fails: $(tail -1 <<<"$out")"
	fi
	local shipped
	shipped=$(ct dpkg -L faultmail | grep -E '/agent/(testing|failpoints_armed)\.py$|/tests/')
	[ -z "$shipped" ] && ok "no test hooks in dpkg -L faultmail" || fail "shipped: $shipped"
	ct mkdir -p "$FAILPOINT_DROPIN" &&
		ct sh -c "printf '[Service]\nEnvironment=FAULTMAIL_FAILPOINTS=after_commit_before_ack\n' >$FAILPOINT_DROPIN/failpoints.conf" &&
		ct systemctl daemon-reload && ct systemctl restart faultmail.service ||
		{ fail "could not restart the unit with FAULTMAIL_FAILPOINTS"; return 1; }
	wait_for 30 is_active || { fail "not active with FAULTMAIL_FAILPOINTS set"; return 1; }
	unit_prop Environment | grep -q 'FAULTMAIL_FAILPOINTS=after_commit_before_ack' \
		|| fail "the unit's environment lacks FAULTMAIL_FAILPOINTS"
	local pid restarts before
	pid=$(unit_prop MainPID) restarts=$(unit_prop NRestarts) before=$(mails)
	publish pump-9 E077 critical || return 1
	if wait_for 40 mail_count_above "$before"; then
		ok "FAULTMAIL_FAILPOINTS=after_commit_before_ack: the fault still became a mail"
	else
		fail "no mail with FAULTMAIL_FAILPOINTS=after_commit_before_ack set"
	fi
	sleep 2 # a kill right after the commit would show now
	if is_active && [ "$(unit_prop MainPID)" = "$pid" ] && [ "$(unit_prop NRestarts)" = "$restarts" ]; then
		ok "the daemon did not die: pid $pid, restarts $restarts"
	else
		fail "the daemon died: pid $pid → $(unit_prop MainPID), restarts $restarts → $(unit_prop NRestarts)"
	fi
	local journal
	journal=$(ct journalctl -u faultmail -b --no-pager -o cat _PID="$pid")
	grep -m1 failpoints_ignored <<<"$journal" | sed 's/^/  journal: /'
	grep -q failpoints_ignored <<<"$journal" || fail "the journal does not say the failpoints were ignored"
	ct rm -rf "$FAILPOINT_DROPIN"
	ct systemctl daemon-reload && ct systemctl restart faultmail.service && wait_for 30 is_active \
		|| fail "not active again without the drop-in"
	return 0
}

watchdog_check() {
	local pid restarts start
	pid=$(unit_prop MainPID) restarts=$(unit_prop NRestarts) start=$(now_ms)
	ct systemctl kill -s SIGSTOP faultmail.service || return 1
	restarted() { [ "$(unit_prop NRestarts)" -gt "$restarts" ] && is_active && [ "$(unit_prop MainPID)" != "$pid" ]; }
	wait_for 90 restarted || { ct systemctl status faultmail --no-pager; fail "no watchdog restart within 90 s"; return 1; }
	figure "SIGSTOP to active again" "$(secs $(($(now_ms) - start)))s (WatchdogSec=30s, RestartSec=10s)"
	# Read the journal once: `journalctl | grep -q` under pipefail fails with SIGPIPE when
	# grep stops reading before journalctl has written everything.
	local journal stacks
	journal=$(ct journalctl -u faultmail -b --no-pager -o cat)
	grep -iE 'watchdog timeout|Watchdog' <<<"$journal" | tail -2 | sed 's/^/  journal: /'
	grep -qi 'watchdog timeout' <<<"$journal" || fail "journal does not mention the watchdog"
	# The launcher's faulthandler prints each thread's stack when SIGABRT arrives.
	stacks=$(grep -c '^  File "/usr/lib/faultmail/' <<<"$journal")
	echo "  journal: Python stack trace of the hung daemon: $stacks frame(s)"
	ok "pid $pid → $(unit_prop MainPID), restarts $(unit_prop NRestarts)"
}

upgrade_check() {
	local alerts_before alerts_after pid before
	alerts_before=$(ct faultmail alerts --json | wc -l)
	pid=$(unit_prop MainPID)
	ct apt-get install -y -o Dpkg::Options::=--force-confold "/srv/debs/$(basename "$NEW_DEB")" >"$WORK/upgrade-install.log" 2>&1 \
		|| { tail -20 "$WORK/upgrade-install.log"; fail "upgrade failed"; return 1; }
	grep -iE 'faultmail.toml|Unpacking|Setting up' "$WORK/upgrade-install.log" | sed 's/^/  /'
	[ "$(ct dpkg-query -W -f '${Version}' faultmail)" = "$NEW_VERSION" ] || fail "version is not $NEW_VERSION"
	grep -q '^id = "gw-test-01"' "$CONF" && ok "edited conffile kept" || fail "the technician's faultmail.toml was replaced"
	[ -f "$CONF.dpkg-dist" ] && grep -q 'upgrade test' "$CONF.dpkg-dist" && ok "new default as faultmail.toml.dpkg-dist" || fail "no .dpkg-dist"
	wait_for 30 is_active || { fail "not active after the upgrade"; return 1; }
	[ "$(unit_prop MainPID)" != "$pid" ] && ok "restarted: pid $pid → $(unit_prop MainPID)" || fail "daemon not restarted by the upgrade"
	alerts_after=$(ct faultmail alerts --json | wc -l)
	[ "$alerts_after" -ge "$alerts_before" ] && [ "$alerts_before" -gt 0 ] && ok "outbox kept: $alerts_after alert(s)" || fail "outbox lost: $alerts_before → $alerts_after"
	before=$(mails)
	publish valve-3 E101 error || return 1
	wait_for 40 mail_count_above "$before" && ok "a new fault still becomes a mail" || fail "no mail after the upgrade"
}

remove_check() {
	ct apt-get remove -y faultmail >"$WORK/remove.log" 2>&1 || { tail "$WORK/remove.log"; fail "remove failed"; return 1; }
	[ "$(ct dpkg-query -W -f '${db:Status-Abbrev}' faultmail)" = "rc " ] && ok "dpkg state rc (config-files)" || fail "unexpected dpkg state"
	[ -n "$(ct find /proc -maxdepth 1 -user faultmail)" ] && fail "faultmail processes still running"
	ct test -f /var/lib/faultmail/outbox.db && ok "outbox kept: /var/lib/faultmail/outbox.db" || fail "state removed on remove"
	ct test -f /etc/faultmail/faultmail.toml && ct test -f /etc/faultmail/smtp-password && ok "config and secrets kept" || fail "config removed on remove"
	ct test -e /usr/lib/faultmail && fail "/usr/lib/faultmail left behind (unowned .pyc?): $(ct find /usr/lib/faultmail | head -3)"
	ct test -e /usr/bin/faultmail && fail "/usr/bin/faultmail left behind"
	return 0
}

purge_check() {
	ct apt-get purge -y faultmail >"$WORK/purge.log" 2>&1 || { tail "$WORK/purge.log"; fail "purge failed"; return 1; }
	ct dpkg-query -W faultmail >/dev/null 2>&1 && fail "dpkg still knows faultmail"
	ct test -e /etc/faultmail && fail "/etc/faultmail left: $(ct ls -A /etc/faultmail)"
	ct test -e /var/lib/faultmail && fail "/var/lib/faultmail left"
	ct test -e /etc/systemd/system/multi-user.target.wants/faultmail.service && fail "enablement symlink left"
	ct test -e /var/lib/systemd/deb-systemd-helper-enabled/faultmail.service.dsh-also && fail "deb-systemd-helper state left"
	ct getent passwd faultmail >/dev/null && ok "config, state and unit state gone; the faultmail system user stays (Debian practice)"
	return 0
}

if check "install: apt-get install ./$(basename "$DEB")" install_check; then
	check "without secrets: fails once with exit 2 naming the file, no restart loop" no_secret_check
	check "unit: systemd-analyze verify clean in the installed system" unit_checks
	if check "README.Debian steps 2-$DOC_LAST as documented: service active, test mail sent" documented_path_check; then
		check "a published fault arrives as a mail" mail_check
		check "test hooks: agent.testing not importable, FAULTMAIL_FAILPOINTS ignored" test_hooks_check
		check "SIGSTOP trips the watchdog; the unit restarts" watchdog_check
		check "upgrade to $NEW_VERSION keeps the edited conffile and the outbox" upgrade_check
	else
		skip "mail, watchdog, upgrade" "the service did not become active"
	fi
	check "remove keeps config and state" remove_check
	check "purge removes config and state" purge_check
else
	skip "everything after install" "the package did not install"
fi

[ -s "$TRANSCRIPT" ] && { echo; cat "$TRANSCRIPT"; }
summary
[ $FAILED = 0 ]
