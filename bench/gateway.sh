#!/usr/bin/env bash
# bench/gateway.sh: benchmark three TLS+SCRAM paths to PostgreSQL 15 in one run.
#
#   direct     a temporary PostgreSQL 15 cluster over TCP+TLS (sslmode=require)
#   pgbouncer  pgbouncer (session pool, client TLS, SCRAM) in front of that
#              same cluster; server connections go over the Unix socket
#   pgshield   the pgshield gateway, built from ./cmd/pgshield, with its own
#              cluster
#
# Workloads, on a pgbench database of scale $SCALE:
#   select-only      pgbench -S    -c $CLIENTS -j $THREADS -T $DURATION
#   connect per txn  pgbench -S -C -c $CLIENTS -j $THREADS -T $DURATION
#   token            connect per txn as an OIDC token principal (pgshield only)
#   latency          one session, SELECT 1 over the simple protocol, one at a
#                    time for $LAT_DURATION: median and p99 round trip
#                    (bench/cmd/gwload); pgshield's and PgBouncer's added
#                    latency over direct TLS
#   txpool           $TXPOOL_CLIENTS clients over 20 backends in transaction
#                    pooling, pgbench -S -c $TXPOOL_CLIENTS -j $THREADS -T
#                    $DURATION, once with -M extended (the default: unnamed
#                    statements) and once with -M prepared (named ones, which
#                    the gateway re-prepares when a client changes backends):
#                    PgBouncer (pool_mode transaction, default_pool_size 20,
#                    a second pgbouncer) against pgshield (pgshield.pool_mode
#                    transaction, pool_size 20); direct is not run (200
#                    backends)
#   idle             $IDLE_CONNS TLS+SCRAM sessions opened and held idle
#                    (bench/cmd/gwload): how many were held, and the gateway's
#                    RSS growth per session (VmRSS before and after). PgBouncer
#                    in transaction mode; pgshield with pgshield.pool_mode
#                    transaction if this build has it, else (every session
#                    holding a backend) $IDLE_NOPOOL_CONNS sessions with
#                    PostgreSQL's max_connections raised to fit them
#
# Run as root from anywhere:   bash bench/gateway.sh
# Environment (all optional):
#   DURATION=30           seconds per measured run
#   BENCH_ONLY=direct,pgbouncer,pgshield   a comma-separated subset to run
#   BENCH_ROWS=select,connect,token,latency,txpool,idle   the rows to measure
#   TXPOOL_CLIENTS=200    clients of the txpool row
#   LAT_DURATION=10       seconds of the latency row per path
#   IDLE_CONNS=10000      sessions of the idle row (pooled)
#   IDLE_NOPOOL_CONNS=900 sessions of the idle row when pgshield cannot pool
#   SCALE=20  CLIENTS=8  THREADS=2  WARMUP=5 (seconds of -S before each path; 0 = none)
#   PGSHIELD_BIN=path     use this pgshield binary instead of building bin/pgshield
#   PGSHIELD_POOL_MODE=off|session   pgshield.pool_mode for the select/connect/token
#                         rows (default: the build's default, session); off measures
#                         a backend per client, as builds before pooling did
#   PROFILE_DIR=dir       save a CPU profile of the pgshield daemon during its
#                         select-only, connect and txpool (-M extended) runs, and a
#                         heap profile while the idle row's sessions are held
#                         (pgshield debug pprof)
#   BENCH_TMPDIR=/tmp     where the temporary directory is made
#   PG_BIN=/usr/lib/postgresql/15/bin
#
# The table is printed on stdout and written to bench/results/gateway-latest.md;
# raw pgbench output goes to bench/results/gateway-latest.log (bench/results/
# is git-ignored: results are written, not committed). Progress goes to stderr.
# Exit status: 0 if every path asked for was measured; 3 if the only problem
# is that pgshield did not build (that column is skipped); 1 on any other failure.
# Everything started here is stopped and the temporary directory removed on
# exit, including on error and Ctrl-C.

# shellcheck disable=SC2317,SC2119 # functions called indirectly (traps, phases); optional arguments
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init "$@"

RESULT_FILE=$RESULTS_DIR/gateway-latest.md
RAW_LOG=$RESULTS_DIR/gateway-latest.log
RAW_OUT=$RAW_LOG
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
BENCH_ONLY=${BENCH_ONLY:-direct,pgbouncer,pgshield}
BENCH_ROWS=${BENCH_ROWS:-select,connect,token,latency,txpool,idle}
TXPOOL_CLIENTS=${TXPOOL_CLIENTS:-200}
LAT_DURATION=${LAT_DURATION:-$((DURATION < 10 ? DURATION : 10))}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_NOPOOL_CONNS=${IDLE_NOPOOL_CONNS:-900}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}

ROLE=bench # the SCRAM login role used on all three paths, owner of $DB
PATHS=(direct pgbouncer pgshield)
WORKLOADS=(select connect)
ROWS=(select connect token latency txpool idle)
row() { [[ ",$BENCH_ROWS," == *",$1,"* ]]; } # ROW: BENCH_ROWS asks for it

# ---------------------------------------------------------------- checks ----

need_root
check_run_opts WARMUP LAT_DURATION IDLE_CONNS IDLE_NOPOOL_CONNS TXPOOL_CLIENTS
check_only path "${PATHS[@]}"
BENCH_ONLY=$BENCH_ROWS check_only row "${ROWS[@]}"
check_pg
need_cmds openssl runuser ss timeout awk prlimit
# The idle row holds IDLE_CONNS sessions: a descriptor each in gwload and in
# the gateway (pgshield's daemon inherits this limit; pgbouncer is given the
# hard limit with prlimit, runuser leaving it PAM's 1,024). A container may
# not let even root raise the hard limit: then the row is held to it.
NOFILE=$((IDLE_CONNS + 1024))
if (($(ulimit -Hn) < NOFILE)); then ulimit -Hn "$NOFILE" 2>/dev/null || echo "WARNING: RLIMIT_NOFILE hard limit $(ulimit -Hn) < $NOFILE (not raised)" >&2; fi
if (($(ulimit -Sn) < NOFILE)); then ulimit -Sn "$(( $(ulimit -Hn) < NOFILE ? $(ulimit -Hn) : NOFILE ))"; fi

# ---------------------------------------------------------------- cleanup ----
# Everything lives at fixed paths under $WORK so that cleanup finds it no
# matter which (sub)shell started it.

stop_pgbouncer() { # [DIR]: the pgbouncer of $WORK/DIR (default pgbouncer)
	local pid
	[[ -n $WORK ]] || return 0
	pid=$(pidfile_pid "$WORK/${1:-pgbouncer}/pgbouncer.pid") || return 0
	stop_pid "$pid" TERM INT
}

stop_direct() { [[ -n $WORK ]] && stop_cluster "$WORK/direct/data"; }

teardown_all() {
	stop_pgshield "$WORK/pgshield"
	stop_pgbouncer
	stop_pgbouncer pgbouncer-idle
	stop_direct
	kill_leftovers
}
install_cleanup

# ---------------------------------------------------------------- helpers ----

# psql_tls PORT ARGS...: psql as $ROLE over TCP+TLS with the SCRAM password.
psql_tls() {
	local port=$1
	shift
	PGPASSWORD="$PW" PGSSLMODE=require PGGSSENCMODE=disable PGCONNECT_TIMEOUT=5 \
		timeout 30 "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$ROLE" -d "${TLS_DB:-$DB}" "$@"
}
tls_ready() { TLS_DB=${2:-$DB} psql_tls "$1" -c 'select 1' | grep -qx 1; }

# init_pgbench SOCKDIR PORT: database $DB owned by $ROLE with pgbench tables
# of scale $SCALE (loaded as postgres over the socket, then handed to $ROLE).
init_pgbench() {
	local dir=$1 port=$2 t
	step "creating database $DB owned by $ROLE"
	psql_sock "$dir" "$port" postgres -c "CREATE DATABASE $DB OWNER $ROLE"
	step "pgbench -i -s $SCALE (this takes a while)"
	sock_run "$dir" "$port" timeout 1800 "$PGBENCH" -i -q -s "$SCALE" "$DB" >>"$WORK/pgbench-init.log" 2>&1
	for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
		psql_sock "$dir" "$port" "$DB" -c "ALTER TABLE $t OWNER TO $ROLE"
	done
	vacuum_checkpoint "$dir" "$port" # no load-time checkpoint during the runs
}

# pgbench_tls PORT USER PASSWORD OUTFILE ARGS...: pgbench over TCP+TLS; the
# password (or token) reaches pgbench only through its environment.
pgbench_tls() {
	local port=$1 user=$2 pw=$3 out=$4
	shift 4
	PGPASSWORD="$pw" PGHOST=127.0.0.1 PGPORT="$port" PGUSER="$user" PGDATABASE="$DB" \
		PGSSLMODE=require PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10 \
		timeout --kill-after=10 $((DURATION + WARMUP + 120)) \
		"$PGBENCH" -n -c "$CLIENTS" -j "$THREADS" "$@" >"$out" 2>&1
}

# measure PATH WORKLOAD PORT USER PASSWORD PGBENCH_ARG...: one measured run.
measure() {
	local path=$1 w=$2 port=$3 user=$4 pw=$5 out rc
	shift 5
	out=$WORK/$path-$w.out
	step "$path: pgbench $* -c $CLIENTS -j $THREADS"
	pgbench_tls "$port" "$user" "$pw" "$out" "$@" && rc=0 || rc=$?
	raw "$path / $w: pgbench -n -c $CLIENTS -j $THREADS $*" "$out"
	record_tps "$path" "$w" "$out" "$rc" || record "$path" "$w" error
}

# run_path PATH PORT: warm-up, then both measured workloads.
run_path() {
	local path=$1 port=$2
	if ((WARMUP > 0)) && { row select || row connect; }; then
		step "$path: warm-up, -S for ${WARMUP}s"
		pgbench_tls "$port" "$ROLE" "$PW" "$WORK/$path-warmup.out" -S -T "$WARMUP" || log "$path: warm-up run failed (continuing)"
	fi
	local prof=""
	if row select && [[ $path == pgshield && -n ${PROFILE_DIR:-} ]]; then
		# The daemon's CPU profile over the select-only run (it starts
		# with pgbench's connections; the last second is left out).
		mkdir -p "$PROFILE_DIR"
		timeout $((DURATION + 120)) "$SHIELD_BIN" debug pprof --data-dir "$WORK/pgshield" --profile cpu \
			--seconds $((DURATION > 2 ? DURATION - 1 : 1)) -f "$PROFILE_DIR/pgshield-select.cpu.pprof" \
			>>"$WORK/pgshield-cli.log" 2>&1 &
		prof=$!
	fi
	if row select; then measure "$path" select "$port" "$ROLE" "$PW" -S -T "$DURATION"; fi
	if [[ -n $prof ]]; then wait "$prof" || log "WARNING: the CPU profile failed (see pgshield-cli.log)"; fi
	prof=""
	if row connect && [[ $path == pgshield && -n ${PROFILE_DIR:-} ]]; then
		mkdir -p "$PROFILE_DIR"
		timeout $((DURATION + 120)) "$SHIELD_BIN" debug pprof --data-dir "$WORK/pgshield" --profile cpu \
			--seconds $((DURATION > 2 ? DURATION - 1 : 1)) -f "$PROFILE_DIR/pgshield-connect.cpu.pprof" \
			>>"$WORK/pgshield-cli.log" 2>&1 &
		prof=$!
	fi
	if row connect; then measure "$path" connect "$port" "$ROLE" "$PW" -S -T "$DURATION" -C; fi
	if [[ -n $prof ]]; then wait "$prof" || log "WARNING: the connect CPU profile failed (see pgshield-cli.log)"; fi
	if row latency; then measure_latency "$path" "$port"; fi
}

# gwload KEY ARGS...: bench/cmd/gwload as $ROLE on $DB (the password only in
# its environment); its "key value" lines are recorded as KEY's workloads
# (latency_*, idle_*), its output kept in the raw log.
gwload() {
	local key=$1 out=$WORK/$1-gwload.out rc k v
	shift
	PGPASSWORD="$PW" timeout --kill-after=10 900 "$WORK/gwload" -user "$ROLE" -db "$DB" "$@" >"$out" 2>&1 && rc=0 || rc=$?
	raw "$key: gwload $*" "$out"
	if ((rc != 0)); then
		log "$key: gwload failed; it said:"
		tail -n 5 "$out" >&2
		return 1
	fi
	while read -r k v; do
		case $k in
		median_us | p99_us) record "$key" "latency_${k%_us}" "$v" ;;
		asked | held | rss_per_conn_kib) record "$key" "idle_$k" "$v" ;;
		first_error) note "$key idle: first error: $v" ;;
		esac
	done <"$out"
	log "$key: $(tr '\n' ' ' <"$out")"
}

# measure_latency PATH PORT: the latency row, one session on PATH.
measure_latency() {
	step "$1: SELECT 1 round trips, one session, ${LAT_DURATION}s"
	gwload "$1" -addr "127.0.0.1:$2" -mode latency -duration "${LAT_DURATION}s" || record "$1" latency_median error
}

# measure_idle KEY PORT PID N: the idle row, N sessions held on PORT,
# the RSS of PID (the gateway) read before and after.
measure_idle() {
	local hp=""
	step "$1: opening $4 TLS+SCRAM sessions and holding them idle"
	if [[ $1 == pgshield && -n ${PROFILE_DIR:-} ]]; then
		# The daemon's heap while the sessions are held: what each costs.
		mkdir -p "$PROFILE_DIR"
		(
			for ((i = 0; i < 4 * TRIES; i++)); do
				[[ -e $WORK/idle.ready ]] && break
				sleep 0.5
			done
			[[ -e $WORK/idle.ready ]] && timeout 60 "$SHIELD_BIN" debug pprof --data-dir "$WORK/pgshield" \
				--profile heap -f "$PROFILE_DIR/pgshield-idle.heap.pprof"
		) >>"$WORK/pgshield-cli.log" 2>&1 &
		hp=$!
	fi
	gwload "$1" -addr "127.0.0.1:$2" -mode idle -n "$4" -pid "$3" -ready-file "$WORK/idle.ready" || record "$1" idle_held error
	if [[ -n $hp ]]; then wait "$hp" || log "WARNING: no heap profile of the idle sessions"; fi
	rm -f "$WORK/idle.ready"
}

# pgbouncer_idle SOCKDIR SOCKPORT: a second pgbouncer, in transaction mode
# with a pool of 20 and room for $IDLE_CONNS clients, on the same cluster
# and userlist, for the idle row; then the row.
pgbouncer_idle() {
	local dir=$WORK/pgbouncer-idle port pid nofile
	free_port port
	step "pgbouncer (transaction pool of 20, max_client_conn $((IDLE_CONNS + 100))): 127.0.0.1:$port"
	mkdir -p "$dir"
	cp "$WORK/pgbouncer/userlist.txt" "$dir/"
	sed -e "s|^listen_port = .*|listen_port = $port|" -e "s|^pool_mode = .*|pool_mode = transaction|" \
		-e "s|^default_pool_size = .*|default_pool_size = 20|" \
		-e "s|^max_client_conn = .*|max_client_conn = $((IDLE_CONNS + 100))|" \
		-e "s|$WORK/pgbouncer/|$dir/|g" "$WORK/pgbouncer/pgbouncer.ini" >"$dir/pgbouncer.ini"
	chown -R "$PG_OS_USER": "$dir"
	chmod 700 "$dir"
	chmod 600 "$dir/userlist.txt" "$dir/pgbouncer.ini"
	# A descriptor per client: runuser leaves pgbouncer PAM's soft limit of
	# 1,024, which it may raise up to the hard limit itself.
	nofile=$(ulimit -Hn)
	[[ $nofile == unlimited ]] || nofile=$((nofile < IDLE_CONNS + 1024 ? nofile : IDLE_CONNS + 1024))
	as_pg prlimit --nofile="$nofile" "$PGBOUNCER" -d "$dir/pgbouncer.ini" >>"$dir/start.log" 2>&1
	wait_until "pgbouncer (idle) TLS login" tls_ready "$port"
	pid=$(pidfile_pid "$dir/pgbouncer.pid") || die "no pgbouncer pid"
	note "pgbouncer idle row: transaction mode, default_pool_size 20, max_client_conn $((IDLE_CONNS + 100)), RLIMIT_NOFILE $(awk '/open files/ {print $4}' /proc/"$pid"/limits)"
	measure_idle pgbouncer "$port" "$pid" "$IDLE_CONNS"
	stop_pgbouncer pgbouncer-idle
}

# measure_txpool KEY PORT: the txpool row on PORT, -M extended and -M
# prepared, $TXPOOL_CLIENTS clients.
measure_txpool() {
	local CLIENTS=$TXPOOL_CLIENTS # measure and pgbench_tls read it
	if ((WARMUP > 0)); then
		step "$1: txpool warm-up, -S for ${WARMUP}s"
		pgbench_tls "$2" "$ROLE" "$PW" "$WORK/$1-txpool-warmup.out" -S -T "$WARMUP" || log "$1: txpool warm-up failed (continuing)"
	fi
	local prof=""
	if [[ $1 == pgshield && -n ${PROFILE_DIR:-} ]]; then
		# The daemon's CPU profile over the -M extended run.
		mkdir -p "$PROFILE_DIR"
		timeout $((DURATION + 120)) "$SHIELD_BIN" debug pprof --data-dir "$WORK/pgshield" --profile cpu \
			--seconds $((DURATION > 2 ? DURATION - 1 : 1)) -f "$PROFILE_DIR/pgshield-txpool.cpu.pprof" \
			>>"$WORK/pgshield-cli.log" 2>&1 &
		prof=$!
	fi
	measure "$1" txpool "$2" "$ROLE" "$PW" -S -T "$DURATION"
	if [[ -n $prof ]]; then wait "$prof" || log "WARNING: the txpool CPU profile failed (see pgshield-cli.log)"; fi
	measure "$1" txpool_prepared "$2" "$ROLE" "$PW" -S -M prepared -T "$DURATION"
}

# pgbouncer_txpool: a second pgbouncer, in transaction mode with a pool of
# 20 and room for $TXPOOL_CLIENTS clients, on the same cluster and
# userlist; then the txpool row.
pgbouncer_txpool() {
	local dir=$WORK/pgbouncer-txpool port
	free_port port
	step "pgbouncer (transaction pool of 20, max_client_conn $((TXPOOL_CLIENTS + 100))): 127.0.0.1:$port"
	mkdir -p "$dir"
	cp "$WORK/pgbouncer/userlist.txt" "$dir/"
	sed -e "s|^listen_port = .*|listen_port = $port|" -e "s|^pool_mode = .*|pool_mode = transaction|" \
		-e "s|^default_pool_size = .*|default_pool_size = 20|" \
		-e "s|^max_client_conn = .*|max_client_conn = $((TXPOOL_CLIENTS + 100))|" \
		-e "s|$WORK/pgbouncer/|$dir/|g" "$WORK/pgbouncer/pgbouncer.ini" >"$dir/pgbouncer.ini"
	chown -R "$PG_OS_USER": "$dir"
	chmod 700 "$dir"
	chmod 600 "$dir/userlist.txt" "$dir/pgbouncer.ini"
	as_pg "$PGBOUNCER" -d "$dir/pgbouncer.ini" >>"$dir/start.log" 2>&1
	wait_until "pgbouncer (txpool) TLS login" tls_ready "$port"
	measure_txpool pgbouncer "$port"
	note "pgbouncer txpool row: PgBouncer before 1.21 does not track protocol-level prepared statements in transaction mode, so -M prepared fails there (prepared statement \"P_0\" already exists)"
	stop_pgbouncer pgbouncer-txpool
}

make_cert() { # DIR: self-signed ECDSA P-256 certificate for 127.0.0.1
	local dir=$1
	mkdir -p "$dir"
	if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$dir/server.key" -out "$dir/server.crt" -days 7 \
		-subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
		>"$WORK/openssl.txt" 2>&1; then
		cat "$WORK/openssl.txt" >&2
		die "openssl could not make the certificate"
	fi
	chown -R "$PG_OS_USER": "$dir"
	chmod 700 "$dir"
	chmod 600 "$dir/server.key"
	chmod 644 "$dir/server.crt"
}

pgbouncer_bin() { command -v pgbouncer 2>/dev/null || { [[ -x /usr/sbin/pgbouncer ]] && echo /usr/sbin/pgbouncer; }; }

ensure_pgbouncer() {
	if [[ -z $(pgbouncer_bin) ]]; then
		log "pgbouncer not installed"
		apt_install pgbouncer || die "apt-get install pgbouncer failed"
	fi
	# The Debian package ships (and may start) a system-wide pgbouncer; we run
	# our own, so keep that one stopped and disabled.
	{
		if [[ -d /run/systemd/system ]]; then
			systemctl disable --now pgbouncer.service
		else
			systemctl disable pgbouncer.service
			if [[ -x /etc/init.d/pgbouncer ]]; then /etc/init.d/pgbouncer stop; fi
			update-rc.d pgbouncer disable
		fi
	} >>"$WORK/apt.log" 2>&1 || true
}

# ------------------------------------------------------------------ phases ----
# Each phase runs in a subshell under set -e; on failure the parent records
# the paths it left unmeasured as "error" and carries on.

phase_cluster() {
	local data=$WORK/direct/data sock=$WORK/direct/sock port bport secret ssl
	free_port port
	step "direct: initdb (PostgreSQL $PG_VERSION) in $WORK/direct, TLS on 127.0.0.1:$port"
	mkdir -p "$data" "$sock"
	chown -R "$PG_OS_USER": "$WORK/direct"
	chmod 700 "$data"
	pg_initdb "$data" scram-sha-256 "$WORK/direct/initdb.log"
	pg_conf "$data" 127.0.0.1 "$port" "$sock" "max_connections = 200" \
		"password_encryption = 'scram-sha-256'" "ssl = on" \
		"ssl_cert_file = '$WORK/tls/server.crt'" "ssl_key_file = '$WORK/tls/server.key'"
	cat >"$data/pg_hba.conf" <<-EOF
		# TYPE  DATABASE USER ADDRESS        METHOD
		local   all      all                 trust
		hostssl all      all  127.0.0.1/32   scram-sha-256
	EOF
	pg_start "$data" "$WORK/direct/postgres.log" "$WORK/direct/pg_ctl.log" "$sock" "$port"

	step "direct: role $ROLE with a SCRAM password"
	# The password goes in on stdin, never on a command line.
	printf "CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s';\n" "$ROLE" "$PW" |
		psql_sock "$sock" "$port" postgres -f -
	secret=$(psql_sock "$sock" "$port" postgres -c "SELECT rolpassword FROM pg_authid WHERE rolname = '$ROLE'")
	[[ $secret == 'SCRAM-SHA-256$'* ]] || die "role $ROLE has no SCRAM secret"
	init_pgbench "$sock" "$port"

	wait_until "direct TLS login" tls_ready "$port"
	ssl=$(psql_tls "$port" -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
	[[ $ssl == t ]] || die "direct connection is not using TLS"

	if want direct; then
		run_path direct "$port"
	fi

	if want pgbouncer; then
		free_port bport
		step "pgbouncer: 127.0.0.1:$bport -> $sock (session pool)"
		mkdir -p "$WORK/pgbouncer"
		printf '"%s" "%s"\n' "$ROLE" "$secret" >"$WORK/pgbouncer/userlist.txt"
		cat >"$WORK/pgbouncer/pgbouncer.ini" <<-EOF
			[databases]
			$DB = host=$sock port=$port dbname=$DB

			[pgbouncer]
			listen_addr = 127.0.0.1
			listen_port = $bport
			unix_socket_dir =
			auth_type = scram-sha-256
			auth_file = $WORK/pgbouncer/userlist.txt
			pool_mode = session
			default_pool_size = 50
			max_client_conn = 200
			client_tls_sslmode = require
			client_tls_cert_file = $WORK/tls/server.crt
			client_tls_key_file = $WORK/tls/server.key
			ignore_startup_parameters = extra_float_digits
			log_connections = 0
			log_disconnections = 0
			logfile = $WORK/pgbouncer/pgbouncer.log
			pidfile = $WORK/pgbouncer/pgbouncer.pid
		EOF
		chown -R "$PG_OS_USER": "$WORK/pgbouncer"
		chmod 700 "$WORK/pgbouncer"
		chmod 600 "$WORK/pgbouncer/userlist.txt" "$WORK/pgbouncer/pgbouncer.ini"
		as_pg "$PGBOUNCER" -d "$WORK/pgbouncer/pgbouncer.ini" >>"$WORK/pgbouncer/start.log" 2>&1
		wait_until "pgbouncer TLS login" tls_ready "$bport"
		run_path pgbouncer "$bport"
		if row txpool; then pgbouncer_txpool; fi
		if row idle; then pgbouncer_idle; fi
	fi
}

# shield TIMEOUT ARGS...: the pgshield CLI, bounded, its output in pgshield-cli.log.
shield() {
	local t=$1
	shift
	timeout "$t" "$SHIELD_BIN" "$@" >>"$WORK/pgshield-cli.log" 2>&1
}

# shield_up DATADIR PORT: 'pgshield up', tolerating a server already running.
shield_up() {
	local d=$1 port=$2
	if ! shield 180 up --data-dir "$d"; then
		tls_ready "$port" postgres || die "'pgshield up' failed"
		log "pgshield: 'up' failed but the gateway answers; going on"
	fi
	wait_until "pgshield TLS login" tls_ready "$port" postgres
}

phase_pgshield() {
	local d=$WORK/pgshield port sock="" spath sport sb ok
	free_port port
	step "pgshield: init in $d, listen 127.0.0.1:$port"
	shield 300 init --data-dir "$d" --listen "127.0.0.1:$port" \
		--admin-user "$ROLE" --admin-password-file "$WORK/bench.password"
	step "pgshield: up"
	shield_up "$d" "$port"
	step "pgshield: shared_buffers=256MB, max_connections=200; restart"
	# The per-source connection rate limit (200/s by default) would cap the
	# connect-per-transaction runs, all from 127.0.0.1; direct PostgreSQL has
	# no such limit, so it is off for the comparison.
	shield 60 parameter set --data-dir "$d" pgshield.max_connection_rate_per_ip 0
	shield 60 parameter set --data-dir "$d" shared_buffers 256MB
	if [[ -n ${PGSHIELD_POOL_MODE:-} ]]; then
		shield 60 parameter set --data-dir "$d" pgshield.pool_mode "$PGSHIELD_POOL_MODE" ||
			log "note: pgshield.pool_mode $PGSHIELD_POOL_MODE refused (a build without pooling?)"
		note "pgshield: pgshield.pool_mode ${PGSHIELD_POOL_MODE} for the select/connect/token rows"
	fi
	shield 60 parameter set --data-dir "$d" max_connections 200 ||
		log "note: pgshield refused max_connections=200 (only matters beyond its default)"
	shield 180 down --data-dir "$d"
	shield_up "$d" "$port"

	# The private PostgreSQL socket: D/run/pg (config.Layout) or D/run.
	for spath in "$d/run/pg/.s.PGSQL.5432" "$d/run/.s.PGSQL.5432"; do
		[[ -S $spath ]] && { sock=$spath; break; }
	done
	[[ -n $sock ]] || sock=$(find "$d" -maxdepth 4 -type s -name '.s.PGSQL.*' 2>/dev/null | head -n 1) || true
	[[ -n $sock ]] || die "no PostgreSQL Unix socket found under $d"
	sport=${sock##*.}
	sock=$(dirname "$sock")
	log "pgshield: PostgreSQL socket $sock/.s.PGSQL.$sport"

	sb=$(psql_sock "$sock" "$sport" postgres -c 'SHOW shared_buffers')
	[[ $sb == 256MB ]] || log "WARNING: pgshield's cluster runs with shared_buffers=$sb, not 256MB"
	note "pgshield cluster: shared_buffers=$sb max_connections=$(psql_sock "$sock" "$sport" postgres -c 'SHOW max_connections')"
	ok=$(psql_sock "$sock" "$sport" postgres -c "SELECT rolpassword LIKE 'SCRAM-SHA-256\$%' FROM pg_authid WHERE rolname = '$ROLE'")
	[[ $ok == t ]] || log "WARNING: role $ROLE in pgshield's cluster has no SCRAM secret in pg_authid"

	init_pgbench "$sock" "$sport"
	wait_until "pgshield TLS login to $DB" tls_ready "$port"
	run_path pgshield "$port"
	if row token; then token_path "$d" "$port" "$sock" "$sport"; fi
	if row txpool; then pgshield_txpool "$d" "$port"; fi
	if row idle; then pgshield_idle "$d" "$port"; fi
}

# pgshield_txpool DATADIR PORT: the txpool row through pgshield in
# transaction pooling, pool_size 20; the session caps (90 sessions, 32
# logins in progress per source) off, as pgbouncer's max_client_conn is
# raised. Session pooling again after.
pgshield_txpool() {
	local d=$1 port=$2
	shield 60 parameter set --data-dir "$d" pgshield.max_connections 0
	shield 60 parameter set --data-dir "$d" pgshield.max_preauth_connections_per_source 0
	shield 60 parameter set --data-dir "$d" pgshield.pool_size 20
	if ! shield 60 parameter set --data-dir "$d" pgshield.pool_mode transaction; then
		note "pgshield txpool row: pgshield.pool_mode transaction refused by this build"
		record pgshield txpool error
		return 0
	fi
	note "pgshield txpool row: pgshield.pool_mode transaction, pool_size 20, pgshield.max_connections 0, max_preauth_connections_per_source 0"
	measure_txpool pgshield "$port"
	shield 60 parameter set --data-dir "$d" pgshield.pool_mode session
}

# pgshield_idle DATADIR PORT: the idle row through pgshield, in transaction
# pooling (a pool of 20) if this build multiplexes clients over backends;
# otherwise every session holds a backend, so PostgreSQL's max_connections
# and pgshield.pool_max_total are raised and $IDLE_NOPOOL_CONNS sessions
# are asked for.
pgshield_idle() {
	local d=$1 port=$2 pid n mode
	# Threat protection caps sessions (90 in all) and logins in progress per
	# source; all of the row's sessions come from 127.0.0.1: caps off.
	shield 60 parameter set --data-dir "$d" pgshield.max_connections 0
	shield 60 parameter set --data-dir "$d" pgshield.max_preauth_connections_per_source 0
	# The gateway holds 1,000 client connections by default (as PgBouncer's
	# max_client_conn, raised for its run too).
	shield 60 parameter set --data-dir "$d" pgshield.max_client_connections $((IDLE_CONNS + 100)) ||
		log "WARNING: pgshield refused pgshield.max_client_connections=$((IDLE_CONNS + 100))"
	pid=$(pidfile_pid "$d/run/pgshield.pid") || die "no pgshield pid file"
	if multiplexes "$d" "$port" "$pid"; then
		shield 60 parameter set --data-dir "$d" pgshield.pool_size 20
		shield 60 parameter set --data-dir "$d" pgshield.pool_wait_timeout 30s
		n=$IDLE_CONNS
		mode="pgshield.pool_mode transaction, pool_size 20"
	else
		n=$IDLE_NOPOOL_CONNS
		mode="no transaction pooling in this build (two idle sessions cannot share one backend): a backend per session, PostgreSQL max_connections $((n + 100)), pgshield.pool_max_total $((n + 50))"
		step "pgshield: no transaction pooling; max_connections $((n + 100)), restart"
		shield 60 parameter set --data-dir "$d" pgshield.pool_mode session || true
		shield 60 parameter set --data-dir "$d" pgshield.pool_wait_timeout 30s || true
		shield 60 parameter set --data-dir "$d" pgshield.pool_max_total $((n + 50)) || true
		shield 60 parameter set --data-dir "$d" max_connections $((n + 100)) ||
			log "WARNING: pgshield refused max_connections=$((n + 100))"
		shield 180 down --data-dir "$d"
		shield_up "$d" "$port"
		pid=$(pidfile_pid "$d/run/pgshield.pid") || die "no pgshield pid file"
	fi
	note "pgshield idle row: $mode; pgshield.max_connections 0 and pgshield.max_preauth_connections_per_source 0 (caps off), pgshield.max_client_connections $((IDLE_CONNS + 100)), RLIMIT_NOFILE $(awk '/open files/ {print $4}' /proc/"$pid"/limits)"
	measure_idle pgshield "$port" "$pid" "$n"
}

# multiplexes DATADIR PORT PID: pgshield.pool_mode transaction is accepted
# and two idle sessions, each answering a SELECT 1, share a pool of one
# backend (a client waits at most 2 s for it); a pool that gives each
# session its own backend fails this.
multiplexes() {
	local d=$1 port=$2 pid=$3 out=$WORK/pgshield-probe.out
	shield 60 parameter set --data-dir "$d" pgshield.pool_mode transaction || return 1
	shield 60 parameter set --data-dir "$d" pgshield.pool_size 1 || return 1
	shield 60 parameter set --data-dir "$d" pgshield.pool_wait_timeout 2s || return 1
	step "pgshield: do two idle sessions share a pool of one backend?"
	PGPASSWORD="$PW" timeout 120 "$WORK/gwload" -user "$ROLE" -db "$DB" -addr "127.0.0.1:$port" -mode idle \
		-n 2 -conc 2 -hold 0s -max-failures 1 -pid "$pid" >"$out" 2>&1 || true
	raw "pgshield: transaction pooling probe" "$out"
	grep -qx 'held 2' "$out"
}

# token_path DATADIR PORT SOCKDIR SOCKPORT: connect per transaction as a
# token principal (OIDC access token as the password), against a test issuer
# over HTTPS on loopback. The token reaches pgbench only through its
# environment.
token_path() {
	local d=$1 port=$2 sock=$3 sport=$4 url i kv
	# A principal's name must be one SQL has to quote (pgshield refuses plain
	# lower-case names, which get SCRAM): hence the '@', and the quotes in SQL.
	local principal="${ROLE}@token"
	step "pgshield-token: test OIDC issuer, principal $principal"
	mkdir -p "$WORK/issuer"
	chmod 700 "$WORK/issuer"
	go_build "$WORK/issuer/oidcissuer" ./bench/cmd/oidcissuer
	"$WORK/issuer/oidcissuer" --dir "$WORK/issuer" --object-id bench-oid >"$WORK/issuer/url" 2>"$WORK/issuer/issuer.log" &
	local issuer_pid=$!
	for ((i = 0; i < TRIES; i++)); do
		[[ -s $WORK/issuer/url && -s $WORK/issuer/token ]] && break
		sleep 0.5
	done
	url=$(head -n 1 "$WORK/issuer/url")
	[[ $url == https://* ]] || die "the test issuer did not start"
	for kv in "pgshield.oidc_issuer=$url" "pgshield.oidc_audience=api://pgshield-bench" \
		"pgshield.oidc_ca_file=$WORK/issuer/oidc-ca.pem"; do
		shield 60 parameter set --data-dir "$d" "${kv%%=*}" "${kv#*=}"
	done
	shield 60 principal create --data-dir "$d" --name "$principal" --object-id bench-oid
	psql_sock "$sock" "$sport" "$DB" -c "GRANT SELECT ON pgbench_accounts, pgbench_branches TO \"$principal\""
	measure pgshield-token connect "$port" "$principal" "$(cat "$WORK/issuer/token")" -S -C -T "$DURATION"
	kill "$issuer_pid" 2>/dev/null || true
}

# ------------------------------------------------------------------- main ----

make_work pgshield-bench 755
: >"$RAW_LOG"
log "work dir $WORK; DURATION=${DURATION}s scale=$SCALE clients=$CLIENTS threads=$THREADS paths=$BENCH_ONLY rows=$BENCH_ROWS"

# One random password for $ROLE everywhere, in a 0600 file.
PW=$(openssl rand -hex 24)
(umask 077 && printf '%s' "$PW" >"$WORK/bench.password")
make_cert "$WORK/tls"

if row latency || row idle; then
	step "gwload: go build"
	go_build "$WORK/gwload" ./bench/cmd/gwload || die "bench/cmd/gwload did not build"
fi

PGBOUNCER=""
if want pgbouncer; then
	ensure_pgbouncer
	PGBOUNCER=$(pgbouncer_bin) || die "pgbouncer binary not found after install"
fi
PGBOUNCER_VERSION=$({ "${PGBOUNCER:-$(pgbouncer_bin || echo pgbouncer)}" --version 2>/dev/null || true; } | head -n 1)

if want direct || want pgbouncer; then
	run_phase "phase 'cluster'" "direct pgbouncer" "" phase_cluster
	step "stopping pgbouncer and the direct cluster"
	stop_pgbouncer
	stop_direct
fi

SHIELD_NOTE=""
if want pgshield; then
	if use_pgshield; then
		run_phase "phase 'pgshield'" pgshield "" phase_pgshield
		step "stopping pgshield"
		stop_pgshield "$WORK/pgshield"
	else
		SHIELD_NOTE="build failed"
		build_failed pgshield ./cmd/pgshield
	fi
fi

# ------------------------------------------------------------------ table ----

load_results

cell() { # PATH WORKLOAD
	local p=$1 w=$2
	if ! want "${p%-token}"; then
		echo "not run"
	elif [[ $p == pgshield* && -n $SHIELD_NOTE ]]; then
		echo "$SHIELD_NOTE"
	else
		fmt1 "${VAL[$p:$w]:-}"
	fi
}
ratio() { ratio_of "${VAL[$1:$2]:-}" "${VAL[direct:$2]:-}"; } # PATH WORKLOAD: PATH tps / direct tps

render() {
	printf '### pgshield gateway benchmark\n\n'
	printf '%s | PostgreSQL %s | %s | DURATION=%ss | scale %s, %s clients, %s threads | pgshield %s\n\n' \
		"$(stamp)" "$PG_VERSION" "${PGBOUNCER_VERSION:-pgbouncer n/a}" \
		"$DURATION" "$SCALE" "$CLIENTS" "$THREADS" "$(pgshield_rev)"
	printf '| workload | direct TLS (tps) | pgbouncer TLS (tps) | pgshield (tps) | pgshield / direct | pgbouncer / direct | pgshield / pgbouncer |\n'
	printf '|---|---:|---:|---:|---:|---:|---:|\n'
	local w label
	for w in select connect; do
		row "$w" || continue
		case $w in
		select) label="select-only (\`-S\`)" ;;
		connect) label="connect per txn (\`-S -C\`)" ;;
		esac
		printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
			"$(cell direct "$w")" "$(cell pgbouncer "$w")" "$(cell pgshield "$w")" \
			"$(ratio pgshield "$w")" "$(ratio pgbouncer "$w")" \
			"$(ratio_of "${VAL[pgshield:$w]:-}" "${VAL[pgbouncer:$w]:-}")"
	done
	# shellcheck disable=SC2016 # backticks are Markdown
	if row token; then
		printf '| connect per txn, OIDC access token to pgshield (direct and pgbouncer: SCRAM) | %s | %s | %s | %s | %s | %s |\n' \
			"$(cell direct connect)" "$(cell pgbouncer connect)" "$(cell pgshield-token connect)" "$(ratio pgshield-token connect)" \
			"$(ratio pgbouncer connect)" "$(ratio_of "${VAL[pgshield-token:connect]:-}" "${VAL[pgbouncer:connect]:-}")"
	fi
	# shellcheck disable=SC2016 # backticks are Markdown
	printf '\nAll paths: role `%s` with a SCRAM-SHA-256 password, `sslmode=require`, pgbench -n -c %s -j %s -T %s (+%ss -S warm-up per path).\n' \
		"$ROLE" "$CLIENTS" "$THREADS" "$DURATION" "$WARMUP"
	if row latency; then render_latency; fi
	if row txpool; then render_txpool; fi
	if row idle; then render_idle; fi
	printf '\n'
	print_notes
}

added() { # PATH WORKLOAD: PATH's value minus direct's, as "+12.3"
	local a=${VAL[$1:$2]:-} b=${VAL[direct:$2]:-}
	if is_num "$a" && is_num "$b"; then awk -v a="$a" -v b="$b" 'BEGIN { printf "%+.1f", a - b }'; else echo "n/a"; fi
}

render_latency() {
	# shellcheck disable=SC2016 # backticks are Markdown
	printf '\n| 1 client, `SELECT 1` round trip (µs) | direct TLS | pgbouncer TLS (session) | pgshield | pgshield added over direct | pgbouncer added over direct |\n'
	printf '|---|---:|---:|---:|---:|---:|\n'
	local w
	for w in median p99; do
		printf '| %s | %s | %s | %s | %s | %s |\n' "$w" \
			"$(cell direct "latency_$w")" "$(cell pgbouncer "latency_$w")" "$(cell pgshield "latency_$w")" \
			"$(added pgshield "latency_$w")" "$(added pgbouncer "latency_$w")"
	done
	printf '\nOne session per path, SELECT 1 over the simple protocol one at a time for %ss after 2,000 unmeasured (bench/cmd/gwload).\n' "$LAT_DURATION"
}

# shellcheck disable=SC2016 # backticks are Markdown
render_txpool() {
	printf '\n| %s clients, transaction pooling over 20 backends, `pgbench -S` (tps) | pgbouncer TLS (transaction) | pgshield | pgshield / pgbouncer |\n' "$TXPOOL_CLIENTS"
	printf '|---|---:|---:|---:|\n'
	local w label
	for w in txpool txpool_prepared; do
		case $w in
		txpool) label='`-M extended` (unnamed statements)' ;;
		txpool_prepared) label='`-M prepared` (named, re-prepared on a change of backend)' ;;
		esac
		printf '| %s | %s | %s | %s |\n' "$label" "$(cell pgbouncer "$w")" "$(cell pgshield "$w")" \
			"$(ratio_of "${VAL[pgshield:$w]:-}" "${VAL[pgbouncer:$w]:-}")"
	done
	printf '\npgbench -n -S -c %s -j %s -T %s; PgBouncer pool_mode transaction, default_pool_size 20; pgshield.pool_mode transaction, pool_size 20.\n' \
		"$TXPOOL_CLIENTS" "$THREADS" "$DURATION"
}

render_idle() {
	printf '\n| idle TLS + SCRAM sessions | pgbouncer TLS (transaction) | pgshield |\n'
	printf '|---|---:|---:|\n'
	printf '| asked for | %s | %s |\n' "${VAL[pgbouncer:idle_asked]:-n/a}" "${VAL[pgshield:idle_asked]:-n/a}"
	printf '| held (each answered a SELECT 1 after the hold) | %s | %s |\n' "${VAL[pgbouncer:idle_held]:-n/a}" "${VAL[pgshield:idle_held]:-n/a}"
	printf '| gateway RSS growth per session (KiB) | %s | %s |\n' \
		"$(cell pgbouncer idle_rss_per_conn_kib)" "$(cell pgshield idle_rss_per_conn_kib)"
	printf '\nSessions opened 16 at a time from 127.0.0.1 (bench/cmd/gwload), held idle 5 s; RSS is VmRSS of the gateway process (pgbouncer; the pgshield daemon) before the first and with all held, over the sessions held.\n'
}
publish render
finish "$SHIELD_NOTE"
