#!/usr/bin/env bash
# bench/threat.sh: what threat protection buys, with and without it, in one run.
#
# One pgshield server (built from ./cmd/pgshield), a firewall rule for all of
# 127.0.0.0/8 (Linux routes it to lo, so each 127.x.y.z is its own source),
# and bench/cmd/threatload as the attackers and the legitimate client:
#   latency   the administrator logs in from its usual source (127.0.0.1)
#             while 8 sources hold 1,280 idle and trickling sockets and 50
#             sources guess its password
#   attack    50 sources guess the administrator's password for $DURATION:
#             guesses that got an answer
#   banned    guesses answered per minute from one source after its ban
#   cpu       the gateway's CPU per refused connection: banned at accept vs
#             a full TLS handshake and startup
# "off" sets the threat parameters to 0 (no bans, no role slow-down, no
# pre-authentication budgets, preauth_timeout 60s: the gateway before
# threat protection); "on" is the defaults. The per-source connection rate
# limit is off in both, so that it does not hide what is measured.
#
# Run as root from anywhere:   bash bench/threat.sh
# Environment (all optional):
#   DURATION=30           seconds each attack runs
#   PGSHIELD_BIN=path     use this pgshield binary instead of building bin/pgshield
#   BENCH_TMPDIR=/tmp     where the temporary directory is made
#
# The table is printed on stdout and written to bench/results/threat-latest.md;
# threatload's output goes to bench/results/threat-latest.log.

# shellcheck disable=SC2317 # functions called indirectly (traps)
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init "$@"

RESULT_FILE=$RESULTS_DIR/threat-latest.md
RAW_LOG=$RESULTS_DIR/threat-latest.log
RAW_OUT=$RAW_LOG
DURATION=${DURATION:-30}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
ROLE=benchadmin

need_root
is_uint "$DURATION" || die "DURATION=$DURATION is not a whole number of seconds"
need_cmds openssl timeout awk ss python3

teardown_all() {
	stop_pgshield "$WORK/pgshield"
	return 0
}
install_cleanup
make_work threat 0711
: >"$RAW_LOG"
ulimit -n 65536 || true

shield() { # TIMEOUT ARGS...
	local t=$1
	shift
	timeout "$t" "$SHIELD_BIN" "$@" --data-dir "$WORK/pgshield" >>"$WORK/pgshield-cli.log" 2>&1
}

use_pgshield || die "pgshield did not build"
step "threatload: go build"
go_build "$WORK/threatload" ./bench/cmd/threatload || die "threatload did not build"

free_port PORT
openssl rand -hex 16 >"$WORK/pw"
step "pgshield: init and up on 127.0.0.1:$PORT"
shield 300 init --listen "127.0.0.1:$PORT" --admin-user "$ROLE" --admin-password-file "$WORK/pw" --storage-size 1GiB
shield 180 up --timeout 2m
shield 60 firewall-rule create --name Loopback8 --start-ip-address 127.0.0.0 --end-ip-address 127.255.255.255
shield 60 parameter set pgshield.max_connection_rate_per_ip 0
# The legitimate client is 127.0.0.1, ignored by default: measure the
# known-good reservations, not the exemption.
shield 60 parameter set pgshield.bruteforce_ignore_sources ""
DPID=$(pidfile_pid "$WORK/pgshield/run/pgshield.pid") || die "no daemon pid"

load() { # LABEL ARGS...: threatload, its output kept, its values recorded as KEY:LABEL
	local label=$1
	shift
	step "threatload $label: $*"
	timeout 900 "$WORK/threatload" -addr "127.0.0.1:$PORT" -ca "$WORK/pgshield/tls/ca.crt" -user "$ROLE" \
		-password-file "$WORK/pw" -duration "${DURATION}s" -pid "$DPID" "$@" >"$WORK/out" 2>>"$RAW_LOG" || true
	{
		echo "== $label: $*"
		cat "$WORK/out"
	} >>"$RAW_LOG"
	while read -r k v; do record "$k" "$label" "$v"; done <"$WORK/out"
}

protection() { # off|on: the threat parameters at 0, or at their defaults
	local -A on=([bruteforce_max_failures]=5 [bruteforce_role_max_failures]=20 [max_preauth_connections]=256
		[max_preauth_connections_per_source]=32 [preauth_timeout]=10s)
	local -A off=([bruteforce_max_failures]=0 [bruteforce_role_max_failures]=0 [max_preauth_connections]=0
		[max_preauth_connections_per_source]=0 [preauth_timeout]=60s)
	local p
	for p in "${!on[@]}"; do
		if [[ $1 == on ]]; then shield 60 parameter set "pgshield.$p" "${on[$p]}"; else shield 60 parameter set "pgshield.$p" "${off[$p]}"; fi
	done
}

# The usual source logs in once: known-good from then on.
load warm -mode latency -flood-sources 0 -guess-sources 0 -logins 1

protection off
load off -mode latency
load off -mode attack
load off_cpu -mode cpu -kind tls -n 1000

protection on
load on -mode latency
load on -mode attack
load on -mode banned
load on_cpu_banned -mode cpu -kind banned -n 2000
load on_cpu_tls -mode cpu -kind tls -n 1000

load_results
table() {
	local per=$((DURATION))
	echo "## pgshield threat protection ($(stamp), $(pgshield_rev))"
	echo
	echo "| measure | without protection | with protection (defaults) |"
	echo "|---|---:|---:|"
	echo "| legitimate login from its usual source, median / max (ms), under 1,280 idle+trickling sockets from 8 sources and 50 sources guessing | ${VAL[login_median_ms:off]:-n/a} / ${VAL[login_max_ms:off]:-n/a} (${VAL[login_failed:off]:-?} of 10 failed) | ${VAL[login_median_ms:on]:-n/a} / ${VAL[login_max_ms:on]:-n/a} (${VAL[login_failed:on]:-?} of 10 failed) |"
	echo "| guesses answered, 50 sources against one role for ${per} s | ${VAL[answered:off]:-n/a} | ${VAL[answered:on]:-n/a} |"
	echo "| guesses answered per minute from one banned source | n/a (no bans) | ${VAL[answered_per_minute:on]:-n/a} |"
	echo "| gateway CPU per refused connection (µs): full TLS handshake | ${VAL[cpu_us_per_conn:off_cpu]:-n/a} | ${VAL[cpu_us_per_conn:on_cpu_tls]:-n/a} |"
	echo "| gateway CPU per refused connection (µs): banned, closed at accept | n/a | ${VAL[cpu_us_per_conn:on_cpu_banned]:-n/a} |"
	echo
	echo "nproc $(nproc); the daemon's utime+stime from /proc (10 ms ticks) over the connections; pgshield.max_connection_rate_per_ip 0 in both columns."
}
publish table
finish ""
