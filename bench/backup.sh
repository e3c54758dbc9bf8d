#!/usr/bin/env bash
# bench/backup.sh: what encrypted backups cost, in one run.
#
# A pgbench -i -s $SCALE database, then a full backup and a restore of it:
#
#   pgshield  a pgshield server (init/up; its cluster on the fscrypt volume),
#             `pgshield backup create --type full` (pgBackRest, repository
#             encrypted with aes-256-cbc), `pgshield backup restore` into a
#             new server (new encrypted volume and data key; files only),
#             then `pgshield up` on it (WAL replay, promotion, gateway ready)
#   plain     a PostgreSQL 15 cluster (initdb) in a directory on the plain
#             disk, archiving to two pgBackRest repositories: repo1 WITHOUT
#             encryption, repo2 with aes-256-cbc like pgshield's (random
#             passphrase in the 0600 config). For each: `pgbackrest backup
#             --type=full`, `pgbackrest restore` into an empty directory;
#             then pg_ctl start of repo1's restore until promoted. The
#             encrypted column isolates what the repository cipher costs from
#             what the encrypted volume costs.
#
# Both use pgBackRest 2.45 with the same options: compress-type=lz4,
# process-max=min(4, nproc), start-fast, archive-async, repository on the
# same disk as the data. Times are wall-clock seconds.
#
# Run as root:   bash bench/backup.sh
# Environment:   SCALE=20  PGSHIELD_BIN=(build bin/pgshield)  BENCH_TMPDIR=/tmp
#                PG_BIN=/usr/lib/postgresql/15/bin
# The table goes to stdout and bench/results/backup-latest.md, the log to
# bench/results/backup-latest.log (bench/results/ is git-ignored). On exit (also on error or Ctrl-C) every
# server and cluster is stopped, volumes detached, keys and the temporary
# directory removed.

# shellcheck disable=SC2317,SC2119 # functions called indirectly (traps); optional arguments
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init "$@"

RESULT_FILE=$RESULTS_DIR/backup-latest.md
LOG=$RESULTS_DIR/backup-latest.log
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
PROCS=$(($(nproc) < 4 ? $(nproc) : 4))

need_root
command -v pgbackrest >/dev/null || die "pgbackrest is missing: apt-get install -y pgbackrest"
check_pg

teardown_all() {
	stop_pgshield "$WORK/shield-restored"
	stop_pgshield "$WORK/shield"
	stop_cluster "$WORK/plain/data"
	stop_cluster "$WORK/plain/restored"
	kill_leftovers
}
install_cleanup
make_work pgshield-bench-backup 711
SHIELD=$WORK/shield RESTORED=$WORK/shield-restored PLAIN=$WORK/plain
: >"$LOG"
BENCH_LOG=$LOG # log lines go to the log too

use_pgshield || {
	tail -n 20 "$WORK/go-build.log" >&2
	die "go build ./cmd/pgshield failed"
}

# secs CMD...: run CMD (output to the log), print its wall-clock seconds.
secs() {
	local t0
	t0=$(date +%s%N)
	"$@" >>"$LOG" 2>&1
	since "$t0"
}
since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
wait_promoted() { # SOCKDIR PORT
	local i
	for ((i = 0; i < 1200; i++)); do
		[[ $(as_pg psql -h "$1" -p "$2" -U postgres -Atc 'SELECT pg_is_in_recovery()' 2>/dev/null) == f ]] && return 0
		sleep 0.1
	done
	return 1
}

# ------------------------------------------------------------------ pgshield
log "pgshield: init and up in $SHIELD"
head -c 18 /dev/urandom | base64 >"$WORK/pw"
free_port port
"$SHIELD_BIN" init --data-dir "$SHIELD" --listen "127.0.0.1:$port" --admin-password-file "$WORK/pw" --storage-size 8GiB >>"$LOG" 2>&1
"$SHIELD_BIN" up --data-dir "$SHIELD" >>"$LOG" 2>&1
log "pgshield: pgbench -i -s $SCALE through the gateway"
PGPASSWORD=$(cat "$WORK/pw") "$PG_BIN/pgbench" -i -q -s "$SCALE" \
	"host=127.0.0.1 port=$port user=pgadmin dbname=postgres sslmode=require" >>"$LOG" 2>&1
as_pg psql -h "$SHIELD/run/pg" -U postgres -Atc CHECKPOINT >>"$LOG"
log "pgshield: full backup"
s_backup=$(secs "$SHIELD_BIN" backup create --type full --data-dir "$SHIELD")
log "pgshield: restore into $RESTORED"
s_restore=$(secs "$SHIELD_BIN" backup restore --data-dir "$SHIELD" --target-data-dir "$RESTORED")
s_start=$(secs "$SHIELD_BIN" up --data-dir "$RESTORED" --timeout 20m)
n=$(as_pg psql -h "$RESTORED/run/pg" -U postgres -Atc 'SELECT count(*) FROM pgbench_accounts')
[[ $n == $((SCALE * 100000)) ]] || { log "restored pgshield server has $n accounts"; exit 1; }
"$SHIELD_BIN" backup list --data-dir "$SHIELD" >>"$LOG"
size_shield=$(du -sm "$SHIELD/backups" | cut -f1)

# ------------------------------------------------------------------ plain
log "plain: initdb, pgBackRest without encryption, in $PLAIN"
mkdir -p "$PLAIN"/{data,restored,restored2,repo,repo2,work/lock,work/log,work/spool,sock}
chown -R postgres "$PLAIN"
chmod 700 "$PLAIN"/data "$PLAIN"/restored "$PLAIN"/restored2
cat >"$PLAIN/pgbackrest.conf" <<EOF
[global]
repo1-path=$PLAIN/repo
repo2-path=$PLAIN/repo2
repo2-cipher-type=aes-256-cbc
repo2-cipher-pass=$(head -c 48 /dev/urandom | base64 -w0 | tr '+/' '-_')
compress-type=lz4
process-max=$PROCS
start-fast=y
archive-async=y
spool-path=$PLAIN/work/spool
lock-path=$PLAIN/work/lock
log-path=$PLAIN/work/log
log-level-console=warn
[pgshield]
pg1-path=$PLAIN/data
pg1-socket-path=$PLAIN/sock
pg1-port=5432
pg1-user=postgres
EOF
chown postgres "$PLAIN/pgbackrest.conf"
chmod 600 "$PLAIN/pgbackrest.conf"
BR=(pgbackrest "--config=$PLAIN/pgbackrest.conf" --stanza=pgshield)
as_pg "$PG_BIN/initdb" -D "$PLAIN/data" -U postgres --auth-local=trust --data-checksums >>"$LOG" 2>&1
cat >>"$PLAIN/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$PLAIN/sock'
archive_mode = on
archive_command = '${BR[*]} archive-push %p'
EOF
as_pg "$PG_BIN/pg_ctl" -D "$PLAIN/data" -l "$PLAIN/data.log" -w start >>"$LOG" 2>&1
as_pg "${BR[@]}" stanza-create >>"$LOG" 2>&1
log "plain: pgbench -i -s $SCALE"
as_pg "$PG_BIN/pgbench" -i -q -s "$SCALE" -h "$PLAIN/sock" -U postgres postgres >>"$LOG" 2>&1
as_pg psql -h "$PLAIN/sock" -U postgres -Atc CHECKPOINT >>"$LOG"
log "plain: full backups (repo1 plain, repo2 encrypted)"
p_backup=$(secs as_pg "${BR[@]}" --repo=1 --type=full backup)
e_backup=$(secs as_pg "${BR[@]}" --repo=2 --type=full backup)
as_pg "$PG_BIN/pg_ctl" -D "$PLAIN/data" -m fast -w stop >>"$LOG" 2>&1
log "plain: restores"
p_restore=$(secs as_pg "${BR[@]}" --repo=1 --pg1-path="$PLAIN/restored" restore)
e_restore=$(secs as_pg "${BR[@]}" --repo=2 --pg1-path="$PLAIN/restored2" restore)
t0=$(date +%s%N)
as_pg "$PG_BIN/pg_ctl" -D "$PLAIN/restored" -l "$PLAIN/restored.log" -w start >>"$LOG" 2>&1
wait_promoted "$PLAIN/sock" 5432
p_start=$(since "$t0")
size_plain=$(du -sm "$PLAIN/repo" | cut -f1)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
	echo "pgbench -i -s $SCALE ($(as_pg psql -h "$PLAIN/sock" -U postgres -Atc "SELECT pg_size_pretty(pg_database_size('postgres'))")), $(date -u +%F), $(nproc) cores, $(pgbackrest version), process-max=$PROCS, lz4"
	echo
	echo "| | pgshield | plain disk, encrypted repo | plain disk, plain repo | pgshield / plain |"
	echo "|---|---:|---:|---:|---:|"
	echo "| full backup | ${s_backup} s | ${e_backup} s | ${p_backup} s | $(ratio "$s_backup" "$p_backup")× |"
	echo "| restore (files) | ${s_restore} s | ${e_restore} s | ${p_restore} s | $(ratio "$s_restore" "$p_restore")× |"
	echo "| first start (WAL replay, promote) | ${s_start} s | | ${p_start} s | $(ratio "$s_start" "$p_start")× |"
	echo "| repository size | ${size_shield} MiB | $(du -sm "$PLAIN/repo2" | cut -f1) MiB | ${size_plain} MiB | |"
} | tee "$RESULT_FILE"
