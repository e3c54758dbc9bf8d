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
#
# Run as root from anywhere:   bash bench/gateway.sh
# Environment (all optional):
#   DURATION=30           seconds per measured run
#   BENCH_ONLY=direct,pgbouncer,pgshield   a comma-separated subset to run
#   SCALE=20  CLIENTS=8  THREADS=2  WARMUP=5 (seconds of -S before each path; 0 = none)
#   PGSHIELD_BIN=path     use this pgshield binary instead of building bin/pgshield
#   BENCH_TMPDIR=/tmp     where the temporary directory is made
#   PG_BIN=/usr/lib/postgresql/15/bin
#
# The table is printed on stdout and written to bench/results/gateway-latest.md;
# raw pgbench output goes to bench/results/gateway-latest.log. Progress goes to stderr.
# Exit status: 0 if every path asked for was measured; 3 if the only problem
# is that pgshield did not build (that column is skipped); 1 on any other failure.
# Everything started here is stopped and the temporary directory removed on
# exit, including on error and Ctrl-C.

# shellcheck disable=SC2317 # functions are called indirectly (traps, phases)
set -euo pipefail
export LC_ALL=C

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
	exit 0
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
RESULTS_DIR=$SCRIPT_DIR/results
RESULT_FILE=$RESULTS_DIR/gateway-latest.md
RAW_LOG=$RESULTS_DIR/gateway-latest.log

DURATION=${DURATION:-30}
SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-5}
BENCH_ONLY=${BENCH_ONLY:-direct,pgbouncer,pgshield}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
PGSHIELD_BIN=${PGSHIELD_BIN:-}

PG_OS_USER=postgres
ROLE=bench             # the SCRAM login role used on all three paths
DB=bench               # database owned by $ROLE holding the pgbench tables
TRIES=60               # every wait loop: at most TRIES x 0.5 s
PATHS=(direct pgbouncer pgshield)

# Never let the caller's libpq environment leak into the measurements.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
	PGSERVICEFILE PGOPTIONS PGSSLMODE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGREQUIRESSL \
	PGGSSENCMODE PGCONNECT_TIMEOUT PGAPPNAME PGTARGETSESSIONATTRS PGCLIENTENCODING

log() { printf '[gateway-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
want() { [[ ",$BENCH_ONLY," == *",$1,"* ]]; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---------------------------------------------------------------- checks ----

[[ $(id -u) -eq 0 ]] || die "run as root (bash bench/gateway.sh)"
for v in DURATION SCALE CLIENTS THREADS WARMUP; do
	is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
done
((DURATION > 0 && SCALE > 0 && CLIENTS > 0 && THREADS > 0)) || die "DURATION, SCALE, CLIENTS and THREADS must be > 0"
IFS=, read -r -a _only <<<"$BENCH_ONLY"
((${#_only[@]} > 0)) || die "BENCH_ONLY is empty"
for p in "${_only[@]}"; do
	[[ " ${PATHS[*]} " == *" $p "* ]] || die "BENCH_ONLY: unknown path '$p' (known: ${PATHS[*]})"
done
id "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' does not exist (install postgresql-15)"
for b in initdb pg_ctl postgres psql; do
	[[ -x $PG_BIN/$b ]] || die "$PG_BIN/$b not found (install postgresql-15 or set PG_BIN)"
done
PSQL=$PG_BIN/psql
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
for b in openssl runuser ss timeout awk; do
	command -v "$b" >/dev/null || die "'$b' not found"
done

# ---------------------------------------------------------- state/cleanup ----
# Everything lives at fixed paths under $WORK so that cleanup finds it no
# matter which (sub)shell started it.

WORK=""
SHIELD_BIN=""
LOGS_DUMPED=0
USED_PORTS=" "

# pid_is_ours PID: the process belongs to this run (its command line, cwd or
# executable refers to our unique temporary directory or pgshield binary).
pid_is_ours() {
	local pid=$1 args=() cwd exe
	[[ -n $WORK && -d /proc/$pid ]] || return 1
	mapfile -d '' -t args 2>/dev/null </proc/"$pid"/cmdline || return 1
	[[ " ${args[*]-} " == *"$WORK"* ]] && return 0
	cwd=$(readlink /proc/"$pid"/cwd 2>/dev/null) || cwd=""
	[[ $cwd == "$WORK" || $cwd == "$WORK"/* ]] && return 0
	if [[ -n $SHIELD_BIN ]]; then
		exe=$(readlink /proc/"$pid"/exe 2>/dev/null) || exe=""
		[[ -n $exe && $exe == "$(readlink -f "$SHIELD_BIN" 2>/dev/null)" ]] && return 0
	fi
	return 1
}



pidfile_pid() { # first line of a pid file, if numeric
	local f=$1 pid=""
	if [[ -r $f ]]; then IFS= read -r pid <"$f" || true; fi
	is_uint "${pid:-x}" && echo "$pid"
}

as_pg() { (cd "$WORK" && runuser -u "$PG_OS_USER" -- "$@"); }

# stop_cluster PGDATA: pg_ctl -m fast, then signals as a last resort.
stop_cluster() {
	local data=$1 pid
	[[ -f $data/postmaster.pid ]] || return 0
	pid=$(pidfile_pid "$data/postmaster.pid") || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >>"$WORK/cleanup.log" 2>&1 ||
		stop_pid "$pid" INT QUIT
}

stop_pgbouncer() {
	local pid
	[[ -n $WORK ]] || return 0
	pid=$(pidfile_pid "$WORK/pgbouncer/pgbouncer.pid") || return 0
	stop_pid "$pid" TERM INT
}

stop_direct() { [[ -n $WORK ]] && stop_cluster "$WORK/direct/data"; }

stop_pgshield() {
	local d=$WORK/pgshield pid f
	[[ -n $WORK && -d $d ]] || return 0
	if [[ -n $SHIELD_BIN && -x $SHIELD_BIN ]]; then
		timeout --kill-after=10 90 "$SHIELD_BIN" down --data-dir "$d" >>"$WORK/pgshield-cli.log" 2>&1 ||
			log "note: 'pgshield down' failed (see above); killing leftovers"
	fi
	if pid=$(pidfile_pid "$d/run/pgshield.pid"); then stop_pid "$pid" TERM INT; fi
	while IFS= read -r f; do
		stop_cluster "$(dirname "$f")"
	done < <(find "$d" -name postmaster.pid -type f 2>/dev/null)
	# The encrypted volume (down detaches it; this covers a failed down) and
	# the system-managed key, which lives outside the data directory.
	if mountpoint -q "$d/volume" 2>/dev/null; then umount -l "$d/volume" || true; fi
	losetup -j "$d/storage/volume.img" 2>/dev/null | cut -d: -f1 | xargs -r -n1 losetup -d 2>/dev/null || true
	local id
	id=$(sed -n 's/.*"server_id": *"\([0-9a-f]*\)".*/\1/p' "$d/pgshield.json" 2>/dev/null || true)
	if [[ -n $id ]]; then rm -f "/etc/pgshield/keys/$id.key"; fi
}

# kill_leftovers: any process still tied to $WORK (e.g. orphaned backends).
kill_leftovers() {
	local p pid pids=()
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		[[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
		pid_is_ours "$pid" && pids+=("$pid")
	done
	((${#pids[@]})) || return 0
	log "stopping leftover processes: ${pids[*]}"
	for pid in "${pids[@]}"; do stop_pid "$pid" TERM; done
}

dump_logs() {
	local f
	while IFS= read -r f; do
		printf '\n----- last lines of %s -----\n' "${f#"$WORK"/}" >&2
		tail -n 15 "$f" >&2 || true
	done < <(find "$WORK" -maxdepth 3 -type f -size +0 \( -name '*.log' -o -name '*.out' \) -newer "$WORK/.start" 2>/dev/null | sort)
}

# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

cleanup() {
	local rc=$?
	trap '' INT TERM HUP
	trap - EXIT
	set +e
	if [[ -n $BG_PID ]]; then
		kill_tree "$BG_PID"
		wait "$BG_PID" 2>/dev/null
	fi
	if [[ -n $WORK && -d $WORK ]]; then
		((rc == 0 || rc == 3 || rc > 128 || LOGS_DUMPED)) || dump_logs
		log "cleaning up"
		stop_pgshield
		stop_pgbouncer
		stop_direct
		kill_leftovers
		rm -rf -- "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- helpers ----

# free_port VAR: a TCP port on 127.0.0.1 nobody listens on (and not handed out
# before in this shell).
free_port() {
	local -n _out=$1
	local p i
	for ((i = 0; i < 50; i++)); do
		p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null) ||
			p=$((20000 + RANDOM % 12000))
		is_uint "$p" || continue
		[[ $USED_PORTS == *" $p "* ]] && continue
		[[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] || continue
		USED_PORTS+="$p "
		_out=$p
		return 0
	done
	die "no free port found"
}

step() {
	printf '%s\n' "$*" >"$WORK/step"
	log "$*"
}

# psql_tls PORT ARGS...: psql as $ROLE over TCP+TLS with the SCRAM password.
psql_tls() {
	local port=$1
	shift
	PGPASSWORD="$PW" PGSSLMODE=require PGGSSENCMODE=disable PGCONNECT_TIMEOUT=5 \
		timeout 30 "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$ROLE" -d "${TLS_DB:-$DB}" "$@"
}
tls_ready() { TLS_DB=${2:-$DB} psql_tls "$1" -c 'select 1' | grep -qx 1; }

# sock_run SOCKDIR PORT CMD...: run a libpq client as superuser postgres over
# a Unix socket, as the postgres OS user if it can reach the socket, else root.
sock_run() {
	local dir=$1 port=$2
	shift 2
	local envs=(PGHOST="$dir" PGPORT="$port" PGUSER=postgres PGGSSENCMODE=disable)
	if runuser -u "$PG_OS_USER" -- test -w "$dir/.s.PGSQL.$port" 2>/dev/null; then
		(cd "$WORK" && runuser -u "$PG_OS_USER" -- env "${envs[@]}" "$@")
	else
		env "${envs[@]}" "$@"
	fi
}
psql_super() { # SOCKDIR PORT DB ARGS...
	local dir=$1 port=$2 db=$3
	shift 3
	sock_run "$dir" "$port" timeout 600 "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"
}

# init_pgbench SOCKDIR PORT: database $DB owned by $ROLE with pgbench tables
# of scale $SCALE (loaded as postgres over the socket, then handed to $ROLE).
init_pgbench() {
	local dir=$1 port=$2 t
	step "creating database $DB owned by $ROLE"
	psql_super "$dir" "$port" postgres -c "CREATE DATABASE $DB OWNER $ROLE"
	step "pgbench -i -s $SCALE (this takes a while)"
	sock_run "$dir" "$port" timeout 1800 "$PGBENCH" -i -q -s "$SCALE" "$DB" >>"$WORK/pgbench-init.log" 2>&1
	for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
		psql_super "$dir" "$port" "$DB" -c "ALTER TABLE $t OWNER TO $ROLE"
	done
	step "VACUUM ANALYZE; CHECKPOINT"
	psql_super "$dir" "$port" "$DB" -c "VACUUM ANALYZE"
	psql_super "$dir" "$port" "$DB" -c "CHECKPOINT" # no load-time checkpoint during the runs
}

# record PATH WORKLOAD VALUE
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$WORK/results.tsv"; }

# pgbench_tls PORT OUTFILE ARGS...: pgbench as $ROLE over TCP+TLS; the password
# reaches pgbench only through its environment.
pgbench_tls() {
	local port=$1 out=$2
	shift 2
	PGPASSWORD="$PW" PGHOST=127.0.0.1 PGPORT="$port" PGUSER="$ROLE" PGDATABASE="$DB" \
		PGSSLMODE=require PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10 \
		timeout --kill-after=10 $((DURATION + WARMUP + 120)) \
		"$PGBENCH" -n -c "$CLIENTS" -j "$THREADS" "$@" >"$out" 2>&1
}

# run_path PATH PORT: warm-up, then both measured workloads.
run_path() {
	local path=$1 port=$2 w out tps args
	if ((WARMUP > 0)); then
		step "$path: warm-up, -S for ${WARMUP}s"
		pgbench_tls "$port" "$WORK/$path-warmup.out" -S -T "$WARMUP" || log "$path: warm-up run failed (continuing)"
	fi
	for w in select connect; do
		args=(-S -T "$DURATION")
		[[ $w == connect ]] && args+=(-C)
		out=$WORK/$path-$w.out
		step "$path: pgbench ${args[*]} -c $CLIENTS -j $THREADS"
		tps=""
		if pgbench_tls "$port" "$out" "${args[@]}"; then
			tps=$(sed -n 's/^tps = \([0-9][0-9.]*\) (.*/\1/p' "$out" | tail -n 1)
		fi
		{
			printf '===== %s / %s: pgbench -n -c %s -j %s %s\n' "$path" "$w" "$CLIENTS" "$THREADS" "${args[*]}"
			cat "$out"
			echo
		} >>"$RAW_LOG"
		if [[ -n $tps ]]; then
			log "$path: $w = $tps tps"
			record "$path" "$w" "$tps"
		else
			log "$path: $w FAILED; pgbench said:"
			tail -n 5 "$out" >&2 || true
			record "$path" "$w" error
		fi
	done
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
		log "pgbouncer not installed; apt-get install pgbouncer"
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer; } >"$WORK/apt.log" 2>&1 ||
			{ tail -n 20 "$WORK/apt.log" >&2; die "apt-get install pgbouncer failed"; }
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
	as_pg "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C \
		--auth-local=trust --auth-host=scram-sha-256 >>"$WORK/direct/initdb.log" 2>&1
	cat >>"$data/postgresql.conf" <<-EOF

		# bench/gateway.sh
		listen_addresses = '127.0.0.1'
		port = $port
		unix_socket_directories = '$sock'
		max_connections = 200
		shared_buffers = 256MB
		password_encryption = 'scram-sha-256'
		ssl = on
		ssl_cert_file = '$WORK/tls/server.crt'
		ssl_key_file = '$WORK/tls/server.key'
	EOF
	cat >"$data/pg_hba.conf" <<-EOF
		# TYPE  DATABASE USER ADDRESS        METHOD
		local   all      all                 trust
		hostssl all      all  127.0.0.1/32   scram-sha-256
	EOF
	as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$WORK/direct/postgres.log" -w -t 60 start >>"$WORK/direct/pg_ctl.log" 2>&1
	wait_until "direct cluster socket" sock_run "$sock" "$port" "$PSQL" -X -At -d postgres -c 'select 1'

	step "direct: role $ROLE with a SCRAM password"
	# The password goes in on stdin, never on a command line.
	printf "CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s';\n" "$ROLE" "$PW" |
		psql_super "$sock" "$port" postgres -f -
	secret=$(psql_super "$sock" "$port" postgres -c "SELECT rolpassword FROM pg_authid WHERE rolname = '$ROLE'")
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
	fi
}

# shield_up DATADIR PORT: 'pgshield up', tolerating a server already running.
shield_up() {
	local d=$1 port=$2
	if ! timeout 180 "$SHIELD_BIN" up --data-dir "$d" >>"$WORK/pgshield-cli.log" 2>&1; then
		tls_ready "$port" postgres || die "'pgshield up' failed"
		log "pgshield: 'up' failed but the gateway answers; going on"
	fi
	wait_until "pgshield TLS login" tls_ready "$port" postgres
}

phase_pgshield() {
	local d=$WORK/pgshield port sock="" spath sport sb ok
	free_port port
	step "pgshield: init in $d, listen 127.0.0.1:$port"
	timeout 300 "$SHIELD_BIN" init --data-dir "$d" --listen "127.0.0.1:$port" \
		--admin-user "$ROLE" --admin-password-file "$WORK/bench.password" >>"$WORK/pgshield-cli.log" 2>&1
	step "pgshield: up"
	shield_up "$d" "$port"
	step "pgshield: shared_buffers=256MB, max_connections=200; restart"
	# The per-source connection rate limit (200/s by default) would cap the
	# connect-per-transaction runs, all from 127.0.0.1; direct PostgreSQL has
	# no such limit, so it is off for the comparison.
	timeout 60 "$SHIELD_BIN" parameter set --data-dir "$d" pgshield.max_connection_rate_per_ip 0 >>"$WORK/pgshield-cli.log" 2>&1
	timeout 60 "$SHIELD_BIN" parameter set --data-dir "$d" shared_buffers 256MB >>"$WORK/pgshield-cli.log" 2>&1
	timeout 60 "$SHIELD_BIN" parameter set --data-dir "$d" max_connections 200 >>"$WORK/pgshield-cli.log" 2>&1 ||
		log "note: pgshield refused max_connections=200 (only matters beyond its default)"
	timeout 180 "$SHIELD_BIN" down --data-dir "$d" >>"$WORK/pgshield-cli.log" 2>&1
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

	sb=$(psql_super "$sock" "$sport" postgres -c 'SHOW shared_buffers')
	[[ $sb == 256MB ]] || log "WARNING: pgshield's cluster runs with shared_buffers=$sb, not 256MB"
	printf 'pgshield cluster: shared_buffers=%s max_connections=%s\n' "$sb" \
		"$(psql_super "$sock" "$sport" postgres -c 'SHOW max_connections')" >>"$WORK/notes"
	ok=$(psql_super "$sock" "$sport" postgres -c "SELECT rolpassword LIKE 'SCRAM-SHA-256\$%' FROM pg_authid WHERE rolname = '$ROLE'")
	[[ $ok == t ]] || log "WARNING: role $ROLE in pgshield's cluster has no SCRAM secret in pg_authid"

	init_pgbench "$sock" "$sport"
	wait_until "pgshield TLS login to $DB" tls_ready "$port"
	run_path pgshield "$port"
	token_path "$d" "$port" "$sock" "$sport"
}

# token_path DATADIR PORT SOCKDIR SOCKPORT: connect per transaction as a
# token principal (OIDC access token as the password), against a test issuer
# over HTTPS on loopback. The token reaches pgbench only through its
# environment.
token_path() {
	local d=$1 port=$2 sock=$3 sport=$4 url out tps i
	# A principal's name must be one SQL has to quote (pgshield refuses plain
	# lower-case names, which get SCRAM): hence the '@', and the quotes in SQL.
	local principal="${ROLE}@token"
	step "pgshield-token: test OIDC issuer, principal $principal"
	mkdir -p "$WORK/issuer"
	chmod 700 "$WORK/issuer"
	(cd "$REPO" && go build -o "$WORK/issuer/oidcissuer" ./bench/cmd/oidcissuer) >>"$WORK/go-build.log" 2>&1
	"$WORK/issuer/oidcissuer" --dir "$WORK/issuer" --object-id bench-oid >"$WORK/issuer/url" 2>"$WORK/issuer/issuer.log" &
	local issuer_pid=$!
	for ((i = 0; i < TRIES; i++)); do
		[[ -s $WORK/issuer/url && -s $WORK/issuer/token ]] && break
		sleep 0.5
	done
	url=$(head -n 1 "$WORK/issuer/url")
	[[ $url == https://* ]] || die "the test issuer did not start"
	local kv
	for kv in "pgshield.oidc_issuer=$url" "pgshield.oidc_audience=api://pgshield-bench" \
		"pgshield.oidc_ca_file=$WORK/issuer/oidc-ca.pem"; do
		timeout 60 "$SHIELD_BIN" parameter set --data-dir "$d" "${kv%%=*}" "${kv#*=}" >>"$WORK/pgshield-cli.log" 2>&1
	done
	timeout 60 "$SHIELD_BIN" principal create --data-dir "$d" --name "$principal" --object-id bench-oid >>"$WORK/pgshield-cli.log" 2>&1
	psql_super "$sock" "$sport" "$DB" -c "GRANT SELECT ON pgbench_accounts, pgbench_branches TO \"$principal\""
	out=$WORK/pgshield-token-connect.out
	step "pgshield-token: pgbench -S -C -T $DURATION -c $CLIENTS -j $THREADS"
	tps=""
	if PGPASSWORD="$(cat "$WORK/issuer/token")" PGHOST=127.0.0.1 PGPORT="$port" PGUSER="$principal" PGDATABASE="$DB" \
		PGSSLMODE=require PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10 \
		timeout --kill-after=10 $((DURATION + 120)) "$PGBENCH" -n -c "$CLIENTS" -j "$THREADS" -S -C -T "$DURATION" >"$out" 2>&1; then
		tps=$(sed -n 's/^tps = \([0-9][0-9.]*\) (.*/\1/p' "$out" | tail -n 1)
	fi
	{
		printf '===== pgshield-token / connect: pgbench -n -c %s -j %s -S -C -T %s\n' "$CLIENTS" "$THREADS" "$DURATION"
		cat "$out"
		echo
	} >>"$RAW_LOG"
	kill "$issuer_pid" 2>/dev/null || true
	if [[ -n $tps ]]; then
		log "pgshield-token: connect = $tps tps"
		record pgshield-token connect "$tps"
	else
		log "pgshield-token: connect FAILED; pgbench said:"
		tail -n 5 "$out" >&2 || true
		record pgshield-token connect error
	fi
}

go_build() { cd "$REPO" && go build -o bin/pgshield ./cmd/pgshield; }

# run_phase NAME PATH...: run phase_NAME in a subshell; mark its unmeasured
# paths as errors if it fails.
FAILED=0
run_phase() {
	local name=$1 rc p w
	shift
	set +e
	run_bg "phase_$name"
	rc=$?
	set -e
	if ((rc != 0)); then
		FAILED=1
		log "phase '$name' failed (exit $rc) during: $(cat "$WORK/step" 2>/dev/null || echo '?')"
		printf 'FAILED (%s): %s\n' "$*" "$(cat "$WORK/step" 2>/dev/null || echo '?')" >>"$WORK/notes"
		for p in "$@"; do
			for w in select connect; do
				grep -q "^$p	$w	" "$WORK/results.tsv" 2>/dev/null || record "$p" "$w" error
			done
		done
		dump_logs
		LOGS_DUMPED=1
	fi
}

# ------------------------------------------------------------------- main ----

umask 022
mkdir -p "$BENCH_TMPDIR"
WORK=$(mktemp -d "$BENCH_TMPDIR/pgshield-bench.XXXXXX")
chmod 755 "$WORK" # the postgres OS user must traverse it
touch "$WORK/.start" "$WORK/results.tsv" "$WORK/notes"
mkdir -p "$RESULTS_DIR"
: >"$RAW_LOG"
log "work dir $WORK; DURATION=${DURATION}s scale=$SCALE clients=$CLIENTS threads=$THREADS paths=$BENCH_ONLY"

PG_VERSION=$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')

# One random password for $ROLE everywhere, in a 0600 file.
PW=$(openssl rand -hex 24)
(umask 077 && printf '%s' "$PW" >"$WORK/bench.password")
make_cert "$WORK/tls"

PGBOUNCER=""
if want pgbouncer; then
	ensure_pgbouncer
	PGBOUNCER=$(pgbouncer_bin) || die "pgbouncer binary not found after install"
fi
PGBOUNCER_VERSION=$({ "${PGBOUNCER:-$(pgbouncer_bin || echo pgbouncer)}" --version 2>/dev/null || true; } | head -n 1)

if want direct || want pgbouncer; then
	run_phase cluster direct pgbouncer
	step "stopping pgbouncer and the direct cluster"
	stop_pgbouncer
	stop_direct
fi

SHIELD_NOTE=""
if want pgshield; then
	if [[ -n $PGSHIELD_BIN ]]; then
		SHIELD_BIN=$(readlink -f "$PGSHIELD_BIN")
		[[ -x $SHIELD_BIN ]] || die "PGSHIELD_BIN=$PGSHIELD_BIN is not an executable"
		log "pgshield: using $SHIELD_BIN (PGSHIELD_BIN)"
	else
		log "pgshield: go build -o bin/pgshield ./cmd/pgshield"
		if command -v go >/dev/null && run_bg go_build >"$WORK/go-build.log" 2>&1; then
			SHIELD_BIN=$REPO/bin/pgshield
		else
			command -v go >/dev/null || echo "go: command not found" >>"$WORK/go-build.log"
			SHIELD_NOTE="build failed"
			echo "pgshield skipped: \`go build ./cmd/pgshield\` failed" >>"$WORK/notes"
			log "============================================================"
			log "pgshield did NOT build; skipping the pgshield column. go said:"
			tail -n 20 "$WORK/go-build.log" >&2 || true
			log "============================================================"
		fi
	fi
	if [[ -n $SHIELD_BIN ]]; then
		run_phase pgshield pgshield
		step "stopping pgshield"
		stop_pgshield
	fi
fi

# ------------------------------------------------------------------ table ----

declare -A TPS=()
while IFS=$'\t' read -r p w v; do
	[[ -n $p ]] && TPS[$p:$w]=$v
done <"$WORK/results.tsv"

cell() { # PATH WORKLOAD
	local p=$1 w=$2
	if ! want "${p%-token}"; then
		echo "not run"
	elif [[ $p == pgshield* && -n $SHIELD_NOTE ]]; then
		echo "$SHIELD_NOTE"
	elif [[ -n ${TPS[$p:$w]:-} ]]; then
		if [[ ${TPS[$p:$w]} == error ]]; then echo error; else printf '%.1f' "${TPS[$p:$w]}"; fi
	else
		echo error
	fi
}
ratio() { # PATH WORKLOAD: PATH tps / direct tps
	local a=${TPS[$1:$2]:-} b=${TPS[direct:$2]:-}
	if is_num "$a" && is_num "$b"; then
		awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'
	else
		echo "n/a"
	fi
}
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

REV=$(git -C "$REPO" describe --always --dirty 2>/dev/null) || REV="no commit"
render() {
	printf '### pgshield gateway benchmark\n\n'
	printf '%s | nproc %s | PostgreSQL %s | %s | DURATION=%ss | scale %s, %s clients, %s threads | pgshield %s\n\n' \
		"$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(nproc)" "$PG_VERSION" "${PGBOUNCER_VERSION:-pgbouncer n/a}" \
		"$DURATION" "$SCALE" "$CLIENTS" "$THREADS" "$REV"
	printf '| workload | direct TLS (tps) | pgbouncer TLS (tps) | pgshield (tps) | pgshield / direct | pgbouncer / direct |\n'
	printf '|---|---:|---:|---:|---:|---:|\n'
	local w label
	for w in select connect; do
		case $w in
		select) label="select-only (\`-S\`)" ;;
		connect) label="connect per txn (\`-S -C\`)" ;;
		esac
		printf '| %s | %s | %s | %s | %s | %s |\n' "$label" \
			"$(cell direct $w)" "$(cell pgbouncer $w)" "$(cell pgshield $w)" \
			"$(ratio pgshield $w)" "$(ratio pgbouncer $w)"
	done
	# shellcheck disable=SC2016 # backticks are Markdown
	printf '| connect per txn, OIDC access token instead of SCRAM (pgshield only) | %s (SCRAM) | n/a | %s | %s | n/a |\n' \
		"$(cell direct connect)" "$(cell pgshield-token connect)" "$(ratio pgshield-token connect)"
	# shellcheck disable=SC2016 # backticks are Markdown
	printf '\nAll paths: role `%s` with a SCRAM-SHA-256 password, `sslmode=require`, pgbench -n -c %s -j %s -T %s (+%ss -S warm-up per path).\n' \
		"$ROLE" "$CLIENTS" "$THREADS" "$DURATION" "$WARMUP"
	if [[ -s $WORK/notes ]]; then
		sed 's/^/- /' "$WORK/notes"
	fi
}
render | tee "$RESULT_FILE"
log "table written to ${RESULT_FILE#"$REPO"/}; raw pgbench output in ${RAW_LOG#"$REPO"/}"

if ((FAILED)); then
	exit 1
elif [[ -n $SHIELD_NOTE ]]; then
	exit 3
fi
exit 0
