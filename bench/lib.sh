#!/usr/bin/env bash
# bench/lib.sh: what the benchmark scripts share (sourced, first thing):
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   bench_init "$@"
#
# bench_init sets the shell options, answers -h/--help from the calling
# script's header comment, clears the caller's libpq environment and sets
# SCRIPT_DIR, REPO, RESULTS_DIR and the defaults the scripts share. A script
# then sets its own defaults, runs the checks (need_root, check_run_opts,
# check_only, check_pg, need_cmds), defines teardown_all (stop everything it
# started; fail if something of $WORK is still in use), calls install_cleanup
# and make_work, measures, and ends with publish and finish.
#
# Results go to bench/results/, which git ignores: rerun a script to get them.
# Every wait loop is bounded (TRIES x 0.5 s); everything started by a run is
# recognised by its temporary directory $WORK (pid_is_ours).

# shellcheck disable=SC2317 # functions are called indirectly (traps, hooks)
# shellcheck disable=SC2034 # globals used by the sourcing scripts

# ------------------------------------------------------------- preamble ----

BG_PID=""        # the background job of run_bg, if one is running
WORK=""          # the run's temporary directory (make_work)
SHIELD_BIN=""    # the pgshield binary (use_pgshield)
LOGS_DUMPED=0    # dump_logs ran for a failed phase
FAILED=0         # a phase failed (run_phase)
USED_PORTS=" "   # ports free_port handed out
BENCH_LOG=""     # if set, log appends there too
RAW_OUT=""       # where raw appends
LOG_FIND_OPTS=() # extra find options for dump_logs (e.g. -xdev)
declare -A VAL=() # VAL[KEY:WORKLOAD] from results.tsv (load_results)

# bench_init "$@": shell options, -h/--help, the caller's libpq environment
# cleared, paths and shared defaults.
bench_init() {
	set -euo pipefail
	export LC_ALL=C
	BENCH_SH=${BASH_SOURCE[1]}
	BENCH_NAME=$(basename "$BENCH_SH" .sh)
	if [[ ${1:-} == -h || ${1:-} == --help ]]; then
		sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$BENCH_SH"
		exit 0
	fi
	SCRIPT_DIR=$(cd "$(dirname "$BENCH_SH")" && pwd)
	REPO=$(cd "$SCRIPT_DIR/.." && pwd)
	RESULTS_DIR=$SCRIPT_DIR/results

	SCALE=${SCALE:-20}
	CLIENTS=${CLIENTS:-8}
	THREADS=${THREADS:-2}
	PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
	PG_OS_USER=postgres
	DB=bench # the database holding the pgbench tables
	TRIES=60 # every wait loop: at most TRIES x 0.5 s

	# Never let the caller's libpq environment leak into the measurements.
	unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
		PGSERVICEFILE PGOPTIONS PGSSLMODE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGREQUIRESSL \
		PGGSSENCMODE PGCONNECT_TIMEOUT PGAPPNAME PGTARGETSESSIONATTRS PGCLIENTENCODING
}

log() {
	printf '[%s-bench %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2
	if [[ -n $BENCH_LOG ]]; then printf '%(%H:%M:%S)T %s\n' -1 "$*" >>"$BENCH_LOG"; fi
}
die() {
	log "ERROR: $*"
	exit 1
}
want() { [[ ",$BENCH_ONLY," == *",$1,"* ]]; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

# ---------------------------------------------------------------- checks ----

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (bash bench/$BENCH_NAME.sh)"; }

# check_run_opts [VAR...]: DURATION, SCALE, CLIENTS, THREADS and each VAR are
# non-negative integers, the first four > 0.
check_run_opts() {
	local v
	for v in DURATION SCALE CLIENTS THREADS "$@"; do
		is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
	done
	((DURATION > 0 && SCALE > 0 && CLIENTS > 0 && THREADS > 0)) || die "DURATION, SCALE, CLIENTS and THREADS must be > 0"
}

# check_only WHAT KNOWN...: BENCH_ONLY is a non-empty comma-separated subset
# of KNOWN (WHAT names them in the error).
check_only() {
	local what=$1 x only=()
	shift
	IFS=, read -r -a only <<<"$BENCH_ONLY"
	((${#only[@]} > 0)) || die "BENCH_ONLY is empty"
	for x in "${only[@]}"; do
		[[ " $* " == *" $x "* ]] || die "BENCH_ONLY: unknown $what '$x' (known: $*)"
	done
}

# check_pg: the postgres OS user and PostgreSQL's programs; sets PSQL,
# PGBENCH and PG_VERSION.
check_pg() {
	local b
	id "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' does not exist (install postgresql-15)"
	for b in initdb pg_ctl postgres psql; do
		[[ -x $PG_BIN/$b ]] || die "$PG_BIN/$b not found (install postgresql-15 or set PG_BIN)"
	done
	PSQL=$PG_BIN/psql
	PGBENCH=$PG_BIN/pgbench
	[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
	PG_VERSION=$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')
}

need_cmds() { # CMD...
	local b
	for b in "$@"; do
		command -v "$b" >/dev/null || die "'$b' not found"
	done
}

# apt_install PKG...: apt-get install them (bounded, output in
# $WORK/apt.log); on failure print the tail of that and fail.
apt_install() {
	log "apt-get install $*"
	{ timeout 600 apt-get update && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y "$@"; } \
		>>"$WORK/apt.log" 2>&1 || {
		tail -n 20 "$WORK/apt.log" >&2
		return 1
	}
}

# --------------------------------------------------------- work/cleanup ----

# make_work PREFIX MODE: the run's temporary directory $WORK (a physical
# path) in $BENCH_TMPDIR, mode MODE (the postgres OS user must traverse it),
# with .start (logs newer than it are this run's), results.tsv and notes;
# and bench/results/.
make_work() {
	umask 022
	mkdir -p "$BENCH_TMPDIR"
	WORK=$(mktemp -d "$(cd "$BENCH_TMPDIR" && pwd -P)/$1.XXXXXX")
	chmod "$2" "$WORK"
	touch "$WORK/.start" "$WORK/results.tsv" "$WORK/notes"
	mkdir -p "$RESULTS_DIR"
}

# install_cleanup: on_exit on EXIT; INT, TERM and HUP exit through it.
install_cleanup() {
	trap on_exit EXIT
	trap 'log "interrupted"; exit 130' INT
	trap 'log "terminated"; exit 143' TERM
	trap 'exit 129' HUP
}

# on_exit: stop the running background job, print the logs of a failed run,
# call the script's teardown_all and remove $WORK, unless teardown_all says
# something of it is still in use (then keep it and exit non-zero).
on_exit() {
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
		if teardown_all; then
			rm -rf --one-file-system -- "$WORK"
		else
			log "WARNING: keeping $WORK because something of it is still in use"
			((rc != 0)) || rc=1
		fi
	fi
	exit "$rc"
}

# run_logs DIR FIND_OPTION...: the non-empty *.log and *.out files below DIR
# written during this run.
run_logs() {
	local dir=$1
	shift
	find "$dir" "${LOG_FIND_OPTS[@]}" "$@" -type f -size +0 \( -name '*.log' -o -name '*.out' \) -newer "$WORK/.start"
}

# dump_logs [SUBDIR]: the last lines of this run's logs three levels below
# $WORK, or only of those at its top and in $WORK/SUBDIR.
dump_logs() {
	local f
	while IFS= read -r f; do
		printf '\n----- last lines of %s -----\n' "${f#"$WORK"/}" >&2
		tail -n 15 "$f" >&2 || true
	done < <({
		if [[ -n ${1:-} ]]; then
			run_logs "$WORK" -maxdepth 1
			run_logs "$WORK/$1" -maxdepth 2
		else
			run_logs "$WORK" -maxdepth 3
		fi
	} 2>/dev/null | sort -u)
}

# ------------------------------------------------------------ processes ----

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

# our_pids [SKIP]: processes of this run other than this shell (without
# those for which the function SKIP PID succeeds).
our_pids() {
	local p pid
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		[[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
		pid_is_ours "$pid" || continue
		if [[ -n ${1:-} ]] && "$1" "$pid"; then continue; fi
		echo "$pid"
	done
}

# kill_leftovers [SKIP]: stop any process still tied to $WORK (e.g. orphaned
# backends).
kill_leftovers() {
	local pid pids
	pids=$(our_pids "${1:-}")
	[[ -n $pids ]] || return 0
	log "stopping leftover processes: $(echo "$pids" | tr '\n' ' ')"
	for pid in $pids; do stop_pid "$pid" TERM; done
}

pidfile_pid() { # first line of a pid file, if numeric
	local f=$1 pid=""
	if [[ -r $f ]]; then IFS= read -r pid <"$f" || true; fi
	is_uint "${pid:-x}" && echo "$pid"
}

# descendants PID: every process below PID (by parent pid).
descendants() {
	local f line rest pid ppid queue=("$1") found=()
	local -A kids=()
	for f in /proc/[0-9]*/stat; do
		IFS= read -r line 2>/dev/null <"$f" || continue
		pid=${line%% *}
		rest=${line##*) } # fields after "(comm)": state ppid ...
		ppid=${rest#* }
		ppid=${ppid%% *}
		kids[$ppid]+="$pid "
	done
	while ((${#queue[@]})); do
		pid=${queue[0]}
		queue=("${queue[@]:1}")
		for f in ${kids[$pid]-}; do
			found+=("$f")
			queue+=("$f")
		done
	done
	echo "${found[*]-}"
}

# kill_tree PID: stop a background job of this script and everything below it.
kill_tree() {
	local top=$1 pids i p alive
	kill -0 "$top" 2>/dev/null || return 0
	read -r -a pids <<<"$top $(descendants "$top")"
	kill -s TERM "${pids[@]}" 2>/dev/null
	for ((i = 0; i < 20; i++)); do
		alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		((alive)) || return 0
		sleep 0.5
	done
	kill -s KILL "${pids[@]}" 2>/dev/null
	return 0
}

# run_bg CMD...: run CMD (a function) in a background subshell under set -e
# and wait for it. The main shell's traps fire at once on Ctrl-C/SIGTERM (a
# foreground child would delay them) and cleanup then kills the job's tree.
run_bg() {
	local rc
	(
		set -e
		trap - EXIT INT TERM HUP
		"$@"
	) &
	BG_PID=$!
	wait "$BG_PID" && rc=0 || rc=$?
	BG_PID=""
	return "$rc"
}

# wait_gone PID TRIES: wait (bounded) for a process to exit.
wait_gone() {
	local pid=$1 n=$2 i
	for ((i = 0; i < n; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.5
	done
	! kill -0 "$pid" 2>/dev/null
}

# stop_pid PID SIGNAL...: send each signal in turn, waiting up to 10 s after
# each, then SIGKILL; only for processes of this run.
stop_pid() {
	local pid=$1 sig
	shift
	pid_is_ours "$pid" || return 0
	for sig in "$@"; do
		kill -s "$sig" "$pid" 2>/dev/null || return 0
		wait_gone "$pid" 20 && return 0
	done
	log "pid $pid still alive; sending SIGKILL"
	kill -s KILL "$pid" 2>/dev/null || true
	wait_gone "$pid" 10 || log "WARNING: pid $pid survived SIGKILL"
}

wait_until() { # DESCRIPTION COMMAND...: bounded wait for COMMAND to succeed
	local desc=$1 i
	shift
	for ((i = 0; i < TRIES; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	log "timed out after $((TRIES / 2)) s waiting for $desc"
	return 1
}

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

# ----------------------------------------------------------- PostgreSQL ----

as_pg() { (cd "$WORK" && runuser -u "$PG_OS_USER" -- "$@"); }

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
psql_sock() { # SOCKDIR PORT DB ARGS...: psql as postgres over the socket
	local dir=$1 port=$2 db=$3
	shift 3
	sock_run "$dir" "$port" timeout 1800 "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"
}

# pg_initdb PGDATA AUTH_HOST LOG: initdb as the postgres OS user (UTF8, C
# locale, trust on the socket, AUTH_HOST on TCP).
pg_initdb() {
	as_pg timeout 300 "$PG_BIN/initdb" -D "$1" -U postgres -E UTF8 --locale=C \
		--auth-local=trust --auth-host="$2" >>"$3" 2>&1
}

# pg_conf PGDATA LISTEN PORT SOCKDIR [SETTING...]: append this run's settings
# to postgresql.conf: listen_addresses, port, the socket directory,
# shared_buffers = 256MB, then each SETTING (a line).
pg_conf() {
	local data=$1
	{
		printf '\n# bench/%s.sh\n' "$BENCH_NAME"
		printf "listen_addresses = '%s'\nport = %s\nunix_socket_directories = '%s'\n" "$2" "$3" "$4"
		echo "shared_buffers = 256MB"
		shift 4
		if (($#)); then printf '%s\n' "$@"; fi
	} >>"$data/postgresql.conf"
}

# pg_start PGDATA SERVERLOG CTLLOG SOCKDIR PORT: pg_ctl start, then wait until
# the cluster answers on its socket.
pg_start() {
	as_pg timeout 120 "$PG_BIN/pg_ctl" -D "$1" -l "$2" -w -t 60 start >>"$3" 2>&1
	wait_until "the cluster in ${1#"$WORK"/} on its socket" sock_run "$4" "$5" "$PSQL" -X -At -d postgres -c 'select 1'
}

# stop_cluster PGDATA: pg_ctl -m fast, then signals as a last resort. The pid
# file is read with a bounded command (PGDATA may sit on a FUSE mount).
stop_cluster() {
	local data=$1 pid
	[[ -n $WORK ]] || return 0
	pid=$(timeout 10 head -n 1 "$data/postmaster.pid" 2>/dev/null) || return 0
	is_uint "${pid:-x}" || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	log "stopping PostgreSQL in ${data#"$WORK"/} (pid $pid)"
	as_pg timeout 90 "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >>"$WORK/cleanup.log" 2>&1 ||
		stop_pid "$pid" INT QUIT
}

vacuum_checkpoint() { # SOCKDIR PORT [LABEL]: VACUUM ANALYZE and CHECKPOINT $DB
	step "${3:+$3: }VACUUM ANALYZE; CHECKPOINT"
	psql_sock "$1" "$2" "$DB" -c "VACUUM ANALYZE"
	psql_sock "$1" "$2" "$DB" -c "CHECKPOINT"
}

# ------------------------------------------------------------- pgshield ----

# go_build OUT PKG: go build -o OUT PKG in the repository, as a background
# job (run_bg), go's output appended to $WORK/go-build.log.
go_build() {
	local go
	go=$(command -v go || echo /usr/local/go/bin/go)
	if [[ ! -x $go ]]; then
		echo "go: command not found" >>"$WORK/go-build.log"
		return 1
	fi
	run_bg go_build_in_repo "$go" "$@" >>"$WORK/go-build.log" 2>&1
}
go_build_in_repo() { cd "$REPO" && timeout 900 "$1" build -o "$2" "$3"; }

# build_failed COLUMN PKG: note and say that PKG did not build, so the COLUMN
# column is skipped.
build_failed() {
	note "$1 skipped: \`go build $2\` failed"
	log "============================================================"
	log "$2 did NOT build; skipping the $1 column. go said:"
	tail -n 20 "$WORK/go-build.log" >&2 || true
	log "============================================================"
}

# use_pgshield: SHIELD_BIN is $PGSHIELD_BIN or bin/pgshield built from
# ./cmd/pgshield; fails if that build fails.
use_pgshield() {
	if [[ -n ${PGSHIELD_BIN:-} ]]; then
		SHIELD_BIN=$(readlink -f "$PGSHIELD_BIN")
		[[ -x $SHIELD_BIN ]] || die "PGSHIELD_BIN=$PGSHIELD_BIN is not an executable"
		log "pgshield: using $SHIELD_BIN (PGSHIELD_BIN)"
		return 0
	fi
	log "pgshield: go build -o bin/pgshield ./cmd/pgshield"
	go_build "$REPO/bin/pgshield" ./cmd/pgshield || return 1
	SHIELD_BIN=$REPO/bin/pgshield
}

# stop_pgshield DATADIR: 'pgshield down', then whatever of that server is left
# (daemon, clusters, encrypted volume) and its system-managed key.
stop_pgshield() {
	local d=$1 pid f id
	[[ -n $WORK && -d $d ]] || return 0
	if [[ -n $SHIELD_BIN && -x $SHIELD_BIN ]]; then
		if ! timeout --kill-after=10 120 "$SHIELD_BIN" down --data-dir "$d" >>"$WORK/pgshield-cli.log" 2>&1; then
			log "note: 'pgshield down' failed; killing leftovers. It said:"
			tail -n 5 "$WORK/pgshield-cli.log" >&2
		fi
	fi
	if pid=$(pidfile_pid "$d/run/pgshield.pid"); then stop_pid "$pid" TERM INT; fi
	while IFS= read -r f; do
		stop_cluster "$(dirname "$f")"
	done < <(find "$d" -name postmaster.pid -type f 2>/dev/null)
	# The encrypted volume (down detaches it; this covers a failed down) and
	# the system-managed key, which lives outside the data directory.
	if mountpoint -q "$d/volume" 2>/dev/null; then umount -l "$d/volume" || true; fi
	losetup -j "$d/storage/volume.img" 2>/dev/null | cut -d: -f1 | xargs -r -n1 losetup -d 2>/dev/null || true
	id=$(sed -n 's/.*"server_id": *"\([0-9a-f]*\)".*/\1/p' "$d/pgshield.json" 2>/dev/null || true)
	if [[ -n $id ]]; then rm -f "/etc/pgshield/keys/$id.key"; fi
}

# ----------------------------------------------------- phases, results ----

step() { # what the run is doing now (logged; named if the phase fails)
	printf '%s\n' "$*" >"$WORK/step"
	log "$*"
}
cur_step() { cat "$WORK/step" 2>/dev/null || echo '?'; }
note() { printf '%s\n' "$*" >>"$WORK/notes"; } # a line below the table
print_notes() { if [[ -s $WORK/notes ]]; then sed 's/^/- /' "$WORK/notes"; fi; } # as a Markdown list

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$WORK/results.tsv"; } # KEY WORKLOAD VALUE

raw() { # TITLE FILE: append FILE to the raw log ($RAW_OUT)
	{
		printf '===== %s\n' "$1"
		cat "$2"
		echo
	} >>"$RAW_OUT"
}

# record_tps KEY WORKLOAD OUT RC: record the tps of the pgbench run that wrote
# OUT and exited RC; fails (and shows pgbench's last words) if there is none.
record_tps() {
	local k=$1 w=$2 out=$3 rc=$4 tps=""
	((rc != 0)) || tps=$(sed -n 's/^tps = \([0-9][0-9.]*\) (.*/\1/p' "$out" | tail -n 1)
	if [[ -n $tps ]]; then
		log "$k: $w = $tps tps"
		record "$k" "$w" "$tps"
		return 0
	fi
	log "$k: $w FAILED; pgbench said:"
	tail -n 5 "$out" >&2 || true
	return 1
}

# run_phase NAME "KEY..." LOGDIR CMD...: run CMD (a function) with run_bg. If
# it fails: FAILED=1, the step it failed in is logged and noted, every
# KEY/workload (of $WORKLOADS) not recorded yet is recorded as an error, and
# the logs are printed (dump_logs LOGDIR). Returns 0 either way.
run_phase() {
	local name=$1 keys=$2 logdir=$3 rc k w
	shift 3
	set +e
	run_bg "$@"
	rc=$?
	set -e
	((rc != 0)) || return 0
	FAILED=1
	log "$name failed (exit $rc) during: $(cur_step)"
	note "FAILED ($keys): $(cur_step)"
	for k in $keys; do
		for w in "${WORKLOADS[@]}"; do
			grep -q "^$k	$w	" "$WORK/results.tsv" 2>/dev/null || record "$k" "$w" error
		done
	done
	dump_logs "$logdir"
	LOGS_DUMPED=1
}

load_results() { # VAL[KEY:WORKLOAD]=VALUE from results.tsv
	local k w v
	while IFS=$'\t' read -r k w v; do
		if [[ -n $k ]]; then VAL[$k:$w]=$v; fi
	done <"$WORK/results.tsv"
}
fmt1() { if is_num "$1"; then printf '%.1f' "$1"; else echo error; fi; }
ratio_of() { # A B: A / B as "0.00x", or n/a
	if is_num "$1" && is_num "$2"; then
		awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'
	else
		echo "n/a"
	fi
}

# stamp: the start of a table's header line.
stamp() { printf '%s | nproc %s' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(nproc)"; }
pgshield_rev() { git -C "$REPO" describe --always --dirty 2>/dev/null || echo "no commit"; }

# publish RENDER: the table RENDER prints, on stdout and in $RESULT_FILE.
publish() {
	"$1" | tee "$RESULT_FILE"
}

# finish SKIPPED: exit 1 if a phase failed, 3 if only a column was skipped
# (SKIPPED is not empty: it did not build), else 0.
finish() {
	log "table written to ${RESULT_FILE#"$REPO"/}; raw pgbench output in ${RAW_LOG#"$REPO"/}"
	if ((FAILED)); then
		exit 1
	elif [[ -n $1 ]]; then
		exit 3
	fi
	exit 0
}
