#!/usr/bin/env bash
# bench/storage.sh: what encryption at rest costs PostgreSQL 15, in one run.
#
# One temporary PostgreSQL 15 cluster per backend (initdb as the postgres OS
# user, Unix socket only, shared_buffers=256MB, other settings default), its
# data directory on:
#
#   plain      the host's own filesystem (the one holding $BENCH_TMPDIR, as
#              /var/lib/postgresql would be): PostgreSQL without pgshield,
#              the "plain disk" the issue's targets are relative to
#   image      control: ext4 in a sparse image on a loop device, made exactly
#              like pgshield's volume (internal/storage) but WITHOUT
#              -O encrypt (mkfs.ext4 -q -b 4096 -I 256 -i 16384 -m 0
#              -E lazy_itable_init=0,lazy_journal_init=0; losetup
#              --direct-io=on --sector-size 4096; mount -o nosuid,nodev,
#              noexec,noatime,errors=remount-ro; <mount>/data, root 0711,
#              data 0700). fscrypt / image is the cost of encryption alone.
#   fscrypt    pgshield's own volume code (storage.Volume Provision+Unlock,
#              through bench/cmd/fscryptvol): the same image with -O encrypt,
#              <mount>/data under an fscrypt v2 policy (AES-256-XTS contents,
#              AES-256-CTS names, PAD_32) with a random 64-byte key that
#              never leaves the helper's memory and the kernel
#   gocryptfs  gocryptfs (Debian package, AES-256-GCM, FUSE) mounted with
#              pgshield's flags (-allow_other -nosuid -nodev -noexec
#              -kernel_cache), its cipher directory on the host filesystem
#              as pgshield keeps it (<data-dir>/storage/gocryptfs), the data
#              directory in the decrypted view; the password is random, in
#              a 0600 file passed with -passfile, never on argv
#
# Workloads on each backend, in this order, on a fresh cluster:
#   write probe  dd $PROBE_MB MiB of zeros + fsync into the (empty) data
#                directory, before initdb   (MiB/s: what the storage writes
#                at when encryption, not PostgreSQL, is the work)
#   bulk load    pgbench -i -s $SCALE                 (wall-clock seconds)
#   then VACUUM ANALYZE and CHECKPOINT
#   TPC-B        pgbench    -c $CLIENTS -j $THREADS -T $DURATION   (tps)
#   select-only  pgbench -S -c $CLIENTS -j $THREADS -T $DURATION   (tps)
#   (a CHECKPOINT before each of the two timed runs)
#
# Run as root from anywhere:   bash bench/storage.sh
# Environment (all optional):
#   DURATION=60           seconds per TPC-B / select-only run
#   SCALE=20              pgbench scale factor
#   BENCH_ONLY=plain,image,fscrypt,gocryptfs   a comma-separated subset to run
#   CLIENTS=8  THREADS=2  pgbench -c / -j
#   IMAGE_MB=             size of each sparse image (default max(4096, 2048+64*SCALE))
#   PROBE_MB=512          size of the write probe (0: skip it)
#   BENCH_TMPDIR=/var/tmp where the temporary directory (the plain cluster,
#                         the images, the gocryptfs cipher directory) goes;
#                         a disk filesystem, not tmpfs
#   PG_BIN=/usr/lib/postgresql/15/bin
#
# The table is printed on stdout and written to bench/results/storage-latest.md;
# raw pgbench output goes to bench/results/storage-latest.log. Progress goes to
# stderr. Exit status: 0 if every backend asked for was measured; 3 if the only
# problem is that the fscrypt helper did not build (that column is skipped);
# 1 on any other failure. On exit, also on error, Ctrl-C and SIGTERM, every
# cluster is stopped, gocryptfs unmounted, the fscrypt volume locked and
# detached, the control image unmounted and its loop device detached, and
# the temporary directory removed.

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
RESULT_FILE=$RESULTS_DIR/storage-latest.md
RAW_LOG=$RESULTS_DIR/storage-latest.log

DURATION=${DURATION:-60}
SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
BENCH_ONLY=${BENCH_ONLY:-plain,image,fscrypt,gocryptfs}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
IMAGE_MB=${IMAGE_MB:-}
PROBE_MB=${PROBE_MB:-512}

PG_OS_USER=postgres
DB=bench
PG_PORT=5432 # only names the Unix socket; each cluster has its own socket dir
TRIES=60     # every wait loop: at most TRIES x 0.5 s
BACKENDS=(plain image fscrypt gocryptfs)
WORKLOADS=(probe load tpcb select)

# ext4 exactly as internal/storage makes it, minus "-O encrypt".
# shellcheck disable=SC2054 # the comma is part of the -E argument
MKFS_ARGS=(-q -b 4096 -I 256 -i 16384 -m 0 -E lazy_itable_init=0,lazy_journal_init=0)
LOSETUP_ARGS=(--find --show --nooverlap --direct-io=on --sector-size 4096)
MOUNT_OPTS=nosuid,nodev,noexec,noatime,errors=remount-ro

# Never let the caller's libpq environment leak into the measurements.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
	PGSERVICEFILE PGOPTIONS PGSSLMODE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGREQUIRESSL \
	PGGSSENCMODE PGCONNECT_TIMEOUT PGAPPNAME PGTARGETSESSIONATTRS PGCLIENTENCODING

log() { printf '[storage-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
want() { [[ ",$BENCH_ONLY," == *",$1,"* ]]; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

# ---------------------------------------------------------------- checks ----

[[ $(id -u) -eq 0 ]] || die "run as root (bash bench/storage.sh)"
for v in DURATION SCALE CLIENTS THREADS PROBE_MB; do
	is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
done
((DURATION > 0 && SCALE > 0 && CLIENTS > 0 && THREADS > 0)) || die "DURATION, SCALE, CLIENTS and THREADS must be > 0"
if [[ -z $IMAGE_MB ]]; then
	IMAGE_MB=$((2048 + 64 * SCALE))
	((IMAGE_MB >= 4096)) || IMAGE_MB=4096
fi
if ! is_uint "$IMAGE_MB" || ((IMAGE_MB < 64)); then
	die "IMAGE_MB must be an integer >= 64, got '$IMAGE_MB'"
fi
IFS=, read -r -a _only <<<"$BENCH_ONLY"
((${#_only[@]} > 0)) || die "BENCH_ONLY is empty"
for b in "${_only[@]}"; do
	[[ " ${BACKENDS[*]} " == *" $b "* ]] || die "BENCH_ONLY: unknown backend '$b' (known: ${BACKENDS[*]})"
done
id "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' does not exist (install postgresql-15)"
for b in initdb pg_ctl postgres psql; do
	[[ -x $PG_BIN/$b ]] || die "$PG_BIN/$b not found (install postgresql-15 or set PG_BIN)"
done
PSQL=$PG_BIN/psql
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
export PATH=$PATH:/usr/sbin:/sbin
for b in mkfs.ext4 losetup mount umount runuser timeout awk truncate openssl findmnt dd; do
	command -v "$b" >/dev/null || die "'$b' not found"
done
if want fscrypt; then
	[[ -e /sys/fs/ext4/features/encryption ]] ||
		log "note: the kernel does not advertise ext4 encryption; the fscrypt backend will probably fail"
fi

# ---------------------------------------------------------- state/cleanup ----
# Everything lives at fixed paths under $WORK so that cleanup finds it no
# matter which (sub)shell made it:
#   $WORK/plain/data             the plain cluster (host filesystem)
#   $WORK/<backend>/volume.img   sparse image (image, fscrypt)
#   $WORK/<backend>/mnt          its mount point
#   $WORK/gocryptfs/cipher       gocryptfs cipher directory (host filesystem)
#   $WORK/gocryptfs/plain        gocryptfs decrypted view (FUSE mount)
#   $WORK/<backend>/pg           the cluster's Unix socket and server log
#                                (owned by postgres; everything else is root's)

WORK=""
FSCRYPTVOL=""
LOGS_DUMPED=0

img_of() { echo "$WORK/$1/volume.img"; }
mnt_of() { echo "$WORK/$1/mnt"; }
GC_PLAIN() { echo "$WORK/gocryptfs/plain"; }
datadir_of() {
	case $1 in
	plain) echo "$WORK/plain/data" ;;
	gocryptfs) echo "$(GC_PLAIN)/data" ;;
	*) echo "$(mnt_of "$1")/data" ;;
	esac
}

# is_mounted DIR: DIR is a mount point (read from mountinfo, so a dead or
# hung FUSE mount cannot block us). Paths here contain no whitespace.
is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
	awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
# loops_of FILE: loop devices backed by FILE.
loops_of() {
	if [[ -e $1 ]]; then
		timeout 30 losetup --noheadings --output NAME --associated "$1" 2>/dev/null || true
	fi
}
# loops_under DIR: loop devices whose backing file is below DIR.
loops_under() {
	timeout 30 losetup --noheadings --raw --output NAME,BACK-FILE 2>/dev/null |
		awk -v d="$1/" 'index($2, d) == 1 { print $1 }' || true
}

# pid_is_ours PID: the process belongs to this run (its command line or cwd
# refers to our unique temporary directory).
pid_is_ours() {
	local pid=$1 args=() cwd
	[[ -n $WORK && -d /proc/$pid ]] || return 1
	mapfile -d '' -t args 2>/dev/null </proc/"$pid"/cmdline || return 1
	[[ " ${args[*]-} " == *"$WORK"* ]] && return 0
	cwd=$(readlink /proc/"$pid"/cwd 2>/dev/null) || cwd=""
	[[ $cwd == "$WORK" || $cwd == "$WORK"/* ]]
}
pid_is_gocryptfs() {
	local exe
	exe=$(readlink /proc/"$1"/exe 2>/dev/null) || return 1
	[[ ${exe##*/} == gocryptfs ]]
}
# our_pids [nofuse]: processes of this run (without gocryptfs daemons).
our_pids() {
	local p pid
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		[[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
		pid_is_ours "$pid" || continue
		[[ ${1:-} == nofuse ]] && pid_is_gocryptfs "$pid" && continue
		echo "$pid"
	done
}


gocryptfs_pids() {
	local pid
	for pid in $(our_pids); do
		if pid_is_gocryptfs "$pid"; then echo "$pid"; fi
	done
}

kill_leftovers() { # [nofuse]
	local pid pids
	pids=$(our_pids "${1:-}")
	[[ -n $pids ]] || return 0
	log "stopping leftover processes: $(echo "$pids" | tr '\n' ' ')"
	for pid in $pids; do stop_pid "$pid" TERM; done
}

as_pg() { (cd "$WORK" && runuser -u "$PG_OS_USER" -- "$@"); }

# stop_cluster BACKEND: pg_ctl -m fast, then signals as a last resort. The
# pid file is read with a bounded command (the data directory may sit on a
# FUSE mount).
stop_cluster() {
	local b=$1 data pid=""
	[[ -n $WORK ]] || return 0
	data=$(datadir_of "$b")
	[[ $b == gocryptfs ]] && { is_mounted "$(GC_PLAIN)" || return 0; }
	pid=$(timeout 10 head -n 1 "$data/postmaster.pid" 2>/dev/null) || return 0
	is_uint "${pid:-x}" || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	log "$b: stopping PostgreSQL (pid $pid)"
	timeout 90 runuser -u "$PG_OS_USER" -- "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop \
		>>"$WORK/cleanup.log" 2>&1 || stop_pid "$pid" INT QUIT
}

# umount_dir DIR: unmount (bounded); lazily as a last resort.
umount_dir() {
	local dir=$1
	is_mounted "$dir" || return 0
	timeout 60 umount "$dir" >>"$WORK/cleanup.log" 2>&1 && return 0
	log "WARNING: umount $dir failed; detaching it lazily"
	timeout 30 umount -l "$dir" >>"$WORK/cleanup.log" 2>&1 || log "WARNING: umount -l $dir failed"
}

detach_loops() { # IMAGE
	local dev
	for dev in $(loops_of "$1"); do
		timeout 30 losetup --detach "$dev" >>"$WORK/cleanup.log" 2>&1 || log "WARNING: losetup -d $dev failed"
	done
}

# teardown_ext4 BACKEND: unmount an image, detach its loop device.
teardown_ext4() {
	local b=$1
	umount_dir "$(mnt_of "$b")"
	detach_loops "$(img_of "$b")"
}

teardown_gocryptfs() {
	local plain pid i
	plain=$(GC_PLAIN)
	if is_mounted "$plain"; then
		log "gocryptfs: unmounting $plain"
		if [[ -n $FUSERMOUNT ]]; then
			timeout 30 "$FUSERMOUNT" -u "$plain" >>"$WORK/cleanup.log" 2>&1 || true
		fi
		umount_dir "$plain"
	fi
	# The daemon exits once unmounted; give it a bounded while, then kill it.
	for ((i = 0; i < 20; i++)); do
		[[ -n $(gocryptfs_pids) ]] || break
		sleep 0.5
	done
	for pid in $(gocryptfs_pids); do stop_pid "$pid" TERM; done
}

teardown_fscrypt() {
	local img mnt
	img=$(img_of fscrypt)
	mnt=$(mnt_of fscrypt)
	[[ -e $img ]] || is_mounted "$mnt" || return 0
	if [[ -n $FSCRYPTVOL && -x $FSCRYPTVOL ]]; then
		log "fscrypt: lock + detach"
		if ! timeout --kill-after=10 150 "$FSCRYPTVOL" down -image "$img" -mount "$mnt" >>"$WORK/cleanup.log" 2>&1; then
			log "fscrypt: 'fscryptvol down' failed; stopping leftovers and retrying"
			kill_leftovers nofuse
			timeout --kill-after=10 150 "$FSCRYPTVOL" down -image "$img" -mount "$mnt" >>"$WORK/cleanup.log" 2>&1 ||
				log "WARNING: 'fscryptvol down' failed again (see cleanup.log); unmounting directly"
		fi
	fi
	# Without the helper (or if it failed): unmounting drops the key too.
	teardown_ext4 fscrypt
}

# teardown BACKEND: stop its cluster, then take its storage down.
teardown() {
	stop_cluster "$1"
	case $1 in
	plain) ;;
	image) teardown_ext4 image ;;
	fscrypt) teardown_fscrypt ;;
	gocryptfs) teardown_gocryptfs ;;
	esac
}

# dump_logs [BACKEND]: the tails of the logs of one backend (or all) and of
# the top-level logs.
dump_logs() {
	local f
	while IFS= read -r f; do
		printf '\n----- last lines of %s -----\n' "${f#"$WORK"/}" >&2
		tail -n 15 "$f" >&2 || true
	done < <({
		if [[ -n ${1:-} ]]; then
			find "$WORK" -maxdepth 1 -type f -size +0 \( -name '*.log' -o -name '*.out' \) -newer "$WORK/.start"
			find "$WORK/$1" -xdev -maxdepth 2 -type f -size +0 \( -name '*.log' -o -name '*.out' \) -newer "$WORK/.start"
		else
			find "$WORK" -xdev -maxdepth 3 -type f -size +0 \( -name '*.log' -o -name '*.out' \) -newer "$WORK/.start"
		fi
	} 2>/dev/null | sort -u)
}

# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

# check_clean: report anything of this run that survived cleanup.
check_clean() {
	local m l p
	m=$(mounts_under "$WORK")
	l=$(loops_under "$WORK")
	p=$(our_pids)
	if [[ -z $m$l$p ]]; then
		log "cleanup complete: no mounts, loop devices or processes of this run left"
		return 0
	fi
	[[ -n $m ]] && log "WARNING: still mounted: $(echo "$m" | tr '\n' ' ')"
	[[ -n $l ]] && log "WARNING: loop devices still attached: $(echo "$l" | tr '\n' ' ')"
	[[ -n $p ]] && log "WARNING: processes still running: $(echo "$p" | tr '\n' ' ')"
	return 1
}

cleanup() {
	local rc=$? b m dev
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
		for b in "${BACKENDS[@]}"; do stop_cluster "$b"; done
		kill_leftovers nofuse
		teardown_gocryptfs
		teardown_fscrypt
		teardown_ext4 image
		kill_leftovers
		# Anything still mounted or attached below $WORK (should be nothing).
		for m in $(mounts_under "$WORK"); do umount_dir "$m"; done
		for dev in $(loops_under "$WORK"); do
			timeout 30 losetup --detach "$dev" >/dev/null 2>&1 || log "WARNING: losetup -d $dev failed"
		done
		if check_clean; then
			rm -rf --one-file-system -- "$WORK"
		else
			log "WARNING: keeping $WORK because something of it is still in use"
			((rc != 0)) || rc=1
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
trap 'exit 129' HUP


# ---------------------------------------------------------------- helpers ----

step() {
	printf '%s\n' "$*" >"$WORK/step"
	log "$*"
}
note() { printf '%s\n' "$*" >>"$WORK/notes"; }

# pg BACKEND CMD...: a libpq client as postgres over the backend's socket.
pg() {
	local b=$1
	shift
	as_pg env PGHOST="$WORK/$b/pg" PGPORT="$PG_PORT" PGUSER=postgres "$@"
}
psql_pg() { # BACKEND DB ARGS...
	local b=$1 db=$2
	shift 2
	pg "$b" timeout 1800 "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$WORK/results.tsv"; }

raw() { # TITLE FILE: append to the raw log
	{
		printf '===== %s\n' "$1"
		cat "$2"
		echo
	} >>"$WORK/raw.log"
}

# make_ext4 BACKEND: sparse image, ext4 without encryption, loop device with
# direct I/O, mounted like pgshield's volume; prints nothing.
make_ext4() {
	local b=$1 img mnt dev dio
	img=$(img_of "$b")
	mnt=$(mnt_of "$b")
	mkdir -p "$WORK/$b"
	truncate -s "${IMAGE_MB}M" "$img"
	chmod 600 "$img"
	timeout 300 mkfs.ext4 "${MKFS_ARGS[@]}" -L "bench-$b" "$img" >>"$WORK/$b/mkfs.log" 2>&1
	dev=$(timeout 60 losetup "${LOSETUP_ARGS[@]}" "$img")
	[[ $dev == /dev/loop* ]] || die "losetup printed '$dev'"
	mkdir -p "$mnt"
	chmod 700 "$mnt"
	timeout 60 mount -t ext4 -o "$MOUNT_OPTS" "$dev" "$mnt"
	chmod 711 "$mnt"
	dio=$(cat "/sys/block/${dev#/dev/}/loop/dio" 2>/dev/null) || dio="?"
	[[ $dio == 1 ]] || log "WARNING: $dev runs without direct I/O"
	note "$b: ${IMAGE_MB} MiB image on $dev (loop dio=$dio)"
}

# setup_BACKEND: make the storage and an empty data directory (prints nothing).
setup_plain() {
	step "plain: data directory on the host filesystem"
	mkdir -p "$WORK/plain"
	mkdir -m 700 "$(datadir_of plain)"
	note "plain: data directory on the host filesystem: $(findmnt -rn -o SOURCE,FSTYPE,OPTIONS -T "$WORK" 2>/dev/null || echo '?')"
}

setup_image() {
	step "image: ext4 image (no encryption)"
	make_ext4 image
	mkdir -m 700 "$(datadir_of image)"
}

setup_fscrypt() {
	local img mnt dev dio out
	img=$(img_of fscrypt)
	mnt=$(mnt_of fscrypt)
	step "fscrypt: provision + unlock with pgshield's internal/storage (fscryptvol up)"
	mkdir -p "$WORK/fscrypt"
	out=$(timeout --kill-after=10 180 "$FSCRYPTVOL" up -v -image "$img" -mount "$mnt" -size $((IMAGE_MB << 20)) 2>>"$WORK/fscrypt/fscryptvol.log")
	[[ $out == "$(datadir_of fscrypt)" ]] || die "fscryptvol up printed '$out', want $(datadir_of fscrypt)"
	dev=$(loops_of "$img" | head -n 1)
	dio=$(cat "/sys/block/${dev#/dev/}/loop/dio" 2>/dev/null) || dio="?"
	note "fscrypt: ${IMAGE_MB} MiB image on $dev (loop dio=$dio), policy v2 AES-256-XTS/AES-256-CTS PAD_32"
}

setup_gocryptfs() {
	local cipher plain pf
	step "gocryptfs: cipher directory on the host filesystem"
	mkdir -p "$WORK/gocryptfs"
	cipher=$WORK/gocryptfs/cipher
	plain=$(GC_PLAIN)
	pf=$WORK/gocryptfs/passfile
	# The cipher directory's mode becomes the mode of the decrypted view's
	# root: 0711 like pgshield's volume root, so postgres can traverse it.
	mkdir -m 711 "$cipher"
	mkdir -p "$plain"
	# A random password in a 0600 file; it goes to gocryptfs only as -passfile.
	(umask 077 && openssl rand -hex 32 >"$pf")
	step "gocryptfs: -init (scrypt) and mount with pgshield's flags"
	# -init prints the master key on stdout: discard it.
	timeout 120 gocryptfs -init -q -passfile "$pf" "$cipher" >/dev/null 2>>"$WORK/gocryptfs/gocryptfs.log"
	# The flags of internal/storage's gocryptfsMountArgs (minus -fg: here
	# gocryptfs daemonizes and the mount is waited for by its exit).
	timeout 120 gocryptfs -q -nosyslog -passfile "$pf" -allow_other -nosuid -nodev -noexec -kernel_cache "$cipher" "$plain" \
		>>"$WORK/gocryptfs/gocryptfs.log" 2>&1
	is_mounted "$plain" || die "gocryptfs did not mount $plain"
	mkdir -m 700 "$plain/data"
	note "gocryptfs: cipher dir on the host filesystem; $(awk -v m="$plain" '$5 == m { print "mount options " $6 "," $NF }' /proc/self/mountinfo)"
}

# dev_written_mib BACKEND: MiB written to the backend's loop device so far
# (nothing for backends without one).
dev_written_mib() {
	local dev
	case $1 in image | fscrypt) ;; *) return 0 ;; esac
	dev=$(loops_of "$(img_of "$1")" | head -n 1)
	[[ -n $dev ]] || return 0
	awk '{ printf "%d\n", $7 / 2048 }' "/sys/block/${dev#/dev/}/stat" 2>/dev/null || true
}

# probe BACKEND: PROBE_MB MiB of zeros written and fsynced into the empty
# data directory; records MiB/s. Encryption (not PostgreSQL) is the work.
probe() {
	local b=$1 data t0 t1 mibs
	((PROBE_MB > 0)) || return 0
	data=$(datadir_of "$b")
	step "$b: write probe, dd $PROBE_MB MiB + fsync"
	sync -f "$data"
	t0=$EPOCHREALTIME
	timeout 600 dd if=/dev/zero of="$data/probe" bs=1M count="$PROBE_MB" conv=fsync status=none
	t1=$EPOCHREALTIME
	rm -f "$data/probe"
	sync -f "$data"
	mibs=$(awk -v n="$PROBE_MB" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
	log "$b: write probe = $mibs MiB/s"
	record "$b" probe "$mibs"
}

# bench_cluster BACKEND: initdb in the backend's data directory, start, load,
# measure, stop.
bench_cluster() {
	local b=$1 data sock t0 t1 secs out w args tps w0 w1
	data=$(datadir_of "$b")
	sock=$WORK/$b/pg
	probe "$b"
	chown "$PG_OS_USER": "$data"
	chmod 700 "$data"
	as_pg test -w "$data" || die "$b: $PG_OS_USER cannot write $data"
	mkdir -p "$sock"
	chown "$PG_OS_USER": "$sock"
	chmod 700 "$sock"
	step "$b: initdb in $data"
	as_pg timeout 300 "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C \
		--auth-local=trust --auth-host=reject >>"$WORK/$b/initdb.log" 2>&1
	cat >>"$data/postgresql.conf" <<-EOF

		# bench/storage.sh
		listen_addresses = ''
		port = $PG_PORT
		unix_socket_directories = '$sock'
		shared_buffers = 256MB
	EOF
	if [[ $b != plain ]]; then
		# As pgshield configures its cluster on the volume (internal/postgres):
		# no zero-filling of new WAL segments, which would be encrypted too.
		echo "wal_init_zero = off" >>"$data/postgresql.conf"
	fi
	as_pg timeout 120 "$PG_BIN/pg_ctl" -D "$data" -l "$sock/postgres.log" -w -t 60 start >>"$WORK/$b/pg_ctl.log" 2>&1
	wait_until "$b cluster socket" pg "$b" "$PSQL" -X -At -d postgres -c 'select 1'
	psql_pg "$b" postgres -c "CREATE DATABASE $DB"
	note "$b: data directory \$WORK/${data#"$WORK"/} on $(findmnt -rn -o FSTYPE -T "$data" 2>/dev/null || echo '?')"

	step "$b: bulk load, pgbench -i -s $SCALE"
	out=$WORK/$b/load.out
	w0=$(dev_written_mib "$b")
	t0=$EPOCHREALTIME
	pg "$b" timeout 3600 "$PGBENCH" -i -s "$SCALE" "$DB" >"$out" 2>&1
	t1=$EPOCHREALTIME
	w1=$(dev_written_mib "$b")
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
	raw "$b / bulk load: pgbench -i -s $SCALE ($secs s wall clock)" "$out"
	log "$b: load = $secs s"
	record "$b" load "$secs"
	# What the load made the device write (WAL, its zero-filled segments,
	# the index builds' fsyncs): on fscrypt every byte went through AES.
	if is_uint "${w0:-x}" && is_uint "${w1:-x}"; then record "$b" loadmib $((w1 - w0)); fi

	step "$b: VACUUM ANALYZE; CHECKPOINT"
	psql_pg "$b" "$DB" -c "VACUUM ANALYZE"
	psql_pg "$b" "$DB" -c "CHECKPOINT"

	for w in tpcb select; do
		args=(-c "$CLIENTS" -j "$THREADS" -T "$DURATION")
		[[ $w == select ]] && args=(-S "${args[@]}")
		out=$WORK/$b/$w.out
		psql_pg "$b" "$DB" -c "CHECKPOINT"
		step "$b: pgbench ${args[*]}"
		tps=""
		if pg "$b" timeout --kill-after=10 $((DURATION + 300)) "$PGBENCH" "${args[@]}" "$DB" >"$out" 2>&1; then
			tps=$(sed -n 's/^tps = \([0-9][0-9.]*\) (.*/\1/p' "$out" | tail -n 1)
		fi
		raw "$b / $w: pgbench ${args[*]}" "$out"
		if [[ -n $tps ]]; then
			log "$b: $w = $tps tps"
			record "$b" "$w" "$tps"
		else
			log "$b: $w FAILED; pgbench said:"
			tail -n 5 "$out" >&2 || true
			die "$b: pgbench ${args[*]} failed"
		fi
	done

	step "$b: stopping PostgreSQL"
	as_pg timeout 120 "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >>"$WORK/$b/pg_ctl.log" 2>&1
}

phase() { # BACKEND
	"setup_$1"
	bench_cluster "$1"
}

# run_phase BACKEND: run it in a background subshell, then tear its storage
# down again; on failure mark its unmeasured workloads as errors.
FAILED=0
run_phase() {
	local b=$1 rc w
	set +e
	run_bg phase "$b"
	rc=$?
	set -e
	if ((rc != 0)); then
		FAILED=1
		log "$b failed (exit $rc) during: $(cat "$WORK/step" 2>/dev/null || echo '?')"
		note "FAILED ($b): $(cat "$WORK/step" 2>/dev/null || echo '?')"
		for w in "${WORKLOADS[@]}"; do
			grep -q "^$b	$w	" "$WORK/results.tsv" 2>/dev/null || record "$b" "$w" error
		done
		dump_logs "$b"
		LOGS_DUMPED=1
	fi
	step "$b: tearing down"
	teardown "$b" || log "WARNING: $b: teardown failed; the exit trap tries again"
}

fusermount_bin() { command -v fusermount3 2>/dev/null || command -v fusermount 2>/dev/null || true; }

ensure_gocryptfs() {
	local pkgs=()
	command -v gocryptfs >/dev/null || pkgs+=(gocryptfs)
	[[ -n $(fusermount_bin) ]] || pkgs+=(fuse3)
	((${#pkgs[@]})) || return 0
	log "apt-get install ${pkgs[*]}"
	{ timeout 600 apt-get update && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y "${pkgs[@]}"; } \
		>"$WORK/apt.log" 2>&1 || {
		tail -n 20 "$WORK/apt.log" >&2
		return 1
	}
}

build_fscryptvol() { cd "$REPO" && timeout 600 go build -o "$WORK/fscryptvol" ./bench/cmd/fscryptvol; }

# xts_driver: the kernel's xts(aes) implementation with the highest priority.
xts_driver() {
	awk 'BEGIN { RS = ""; FS = "\n"; best = -1 }
	{
		name = drv = ""; pri = -1
		for (i = 1; i <= NF; i++) {
			k = v = $i
			sub(/[ \t]*:.*/, "", k); sub(/^[^:]*:[ \t]*/, "", v)
			if (k == "name") name = v; else if (k == "driver") drv = v; else if (k == "priority") pri = v + 0
		}
		if (name == "xts(aes)" && pri > best) { best = pri; bd = drv }
	}
	END { if (best >= 0) printf "%s (priority %d)\n", bd, best; else print "none" }' /proc/crypto 2>/dev/null || echo "?"
}

# ------------------------------------------------------------------- main ----

umask 022
mkdir -p "$BENCH_TMPDIR"
WORK=$(mktemp -d "$(cd "$BENCH_TMPDIR" && pwd -P)/pgshield-storage.XXXXXX")
[[ $WORK != *[[:space:]]* ]] || die "BENCH_TMPDIR must not contain whitespace"
chmod 755 "$WORK" # the postgres OS user must traverse it
case $(findmnt -rn -o FSTYPE -T "$WORK" 2>/dev/null) in
tmpfs | ramfs) die "BENCH_TMPDIR=$BENCH_TMPDIR is in memory (tmpfs): the plain column must be a disk filesystem; set BENCH_TMPDIR" ;;
esac
touch "$WORK/.start" "$WORK/results.tsv" "$WORK/notes"
mkdir -p "$RESULTS_DIR"
: >"$WORK/raw.log" # copied to $RAW_LOG with the table, so both are from one run
log "work dir $WORK; DURATION=${DURATION}s scale=$SCALE clients=$CLIENTS threads=$THREADS backends=$BENCH_ONLY image=${IMAGE_MB}MiB"

PG_VERSION=$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')
XTS_DRIVER=$(xts_driver)
KERNEL=$(uname -r)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg) # other work on the machine skews everything

BUILD_NOTE=""
if want fscrypt; then
	log "fscrypt: go build -o \$WORK/fscryptvol ./bench/cmd/fscryptvol"
	if command -v go >/dev/null && run_bg build_fscryptvol >"$WORK/go-build.log" 2>&1; then
		FSCRYPTVOL=$WORK/fscryptvol
	else
		command -v go >/dev/null || echo "go: command not found" >>"$WORK/go-build.log"
		BUILD_NOTE="build failed"
		note "fscrypt skipped: \`go build ./bench/cmd/fscryptvol\` failed"
		log "fscryptvol did NOT build; skipping the fscrypt column. go said:"
		tail -n 20 "$WORK/go-build.log" >&2 || true
	fi
fi

GOCRYPTFS_VERSION=""
FUSERMOUNT=$(fusermount_bin)
GC_NOTE=""
if want gocryptfs; then
	if run_bg ensure_gocryptfs; then
		FUSERMOUNT=$(fusermount_bin)
		GOCRYPTFS_VERSION=$(gocryptfs -version 2>/dev/null | head -n 1 | cut -d';' -f1 | sed 's/^gocryptfs //')
		# Which AES-GCM implementation gocryptfs picks (Go or OpenSSL).
		timeout 60 gocryptfs -speed >"$WORK/gocryptfs-speed.out" 2>&1 || true
		raw "gocryptfs -speed" "$WORK/gocryptfs-speed.out"
		sel=$(awk '/AES-GCM-256/ && /selected/ { print $1 }' "$WORK/gocryptfs-speed.out" | head -n 1)
		note "gocryptfs: ${GOCRYPTFS_VERSION:-?}, AES-256-GCM via ${sel:-?} (gocryptfs -speed, auto mode)"
	else
		GC_NOTE="not installed"
		FAILED=1
		note "gocryptfs skipped: apt-get install gocryptfs failed"
	fi
fi

for b in "${BACKENDS[@]}"; do
	want "$b" || continue
	[[ $b == fscrypt && -n $BUILD_NOTE ]] && continue
	[[ $b == gocryptfs && -n $GC_NOTE ]] && continue
	run_phase "$b"
done

# ------------------------------------------------------------------ table ----

declare -A VAL=()
while IFS=$'\t' read -r b w v; do
	[[ -n $b ]] && VAL[$b:$w]=$v
done <"$WORK/results.tsv"

cell() { # BACKEND WORKLOAD
	local b=$1 w=$2 v
	v=${VAL[$b:$w]:-}
	if ! want "$b"; then
		echo "not run"
	elif [[ $b == fscrypt && -n $BUILD_NOTE ]]; then
		echo "$BUILD_NOTE"
	elif [[ $b == gocryptfs && -n $GC_NOTE ]]; then
		echo "$GC_NOTE"
	elif [[ $w == probe ]] && ((PROBE_MB == 0)); then
		echo "skipped"
	elif is_num "$v"; then
		printf '%.1f' "$v"
	else
		echo error
	fi
}
ratio() { # BACKEND WORKLOAD [BASE]: BACKEND / BASE (default plain)
	local a=${VAL[$1:$2]:-} p=${VAL[${3:-plain}:$2]:-}
	if is_num "$a" && is_num "$p"; then
		awk -v a="$a" -v b="$p" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'
	else
		echo "n/a"
	fi
}

REV=$(git -C "$REPO" describe --always --dirty 2>/dev/null) || REV="no commit"
render() {
	local w label
	printf '### pgshield storage benchmark: encryption at rest\n\n'
	printf '%s | nproc %s | load avg at start %s | kernel %s | xts(aes) driver: %s | PostgreSQL %s | gocryptfs %s | DURATION=%ss | scale %s, %s clients, %s threads | pgshield %s\n\n' \
		"$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(nproc)" "$LOADAVG" "$KERNEL" "$XTS_DRIVER" "$PG_VERSION" \
		"${GOCRYPTFS_VERSION:-n/a}" "$DURATION" "$SCALE" "$CLIENTS" "$THREADS" "$REV"
	printf '| workload | plain ext4 (host fs) | ext4 image, no encryption | fscrypt | gocryptfs | fscrypt / plain | gocryptfs / plain | fscrypt / image |\n'
	printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
	for w in "${WORKLOADS[@]}"; do
		case $w in
		probe) label="write probe \`dd\` $PROBE_MB MiB + fsync (MiB/s)" ;;
		load) label="bulk load \`pgbench -i -s $SCALE\` (s, lower is better)" ;;
		tpcb) label="TPC-B \`-c $CLIENTS -j $THREADS -T $DURATION\` (tps)" ;;
		select) label="select-only \`-S -c $CLIENTS -j $THREADS -T $DURATION\` (tps)" ;;
		esac
		printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
			"$(cell plain "$w")" "$(cell image "$w")" "$(cell fscrypt "$w")" "$(cell gocryptfs "$w")" \
			"$(ratio fscrypt "$w")" "$(ratio gocryptfs "$w")" "$(ratio fscrypt "$w" image)"
	done
	# shellcheck disable=SC2016 # backticks are Markdown
	printf '\nOne fresh cluster per backend (`shared_buffers=256MB`, Unix socket only, other settings default, except `wal_init_zero = off` on the image, fscrypt and gocryptfs columns as pgshield sets it on its volume); after the load `VACUUM ANALYZE` + `CHECKPOINT`, and a `CHECKPOINT` before each timed run. Ratios are backend / plain (the host filesystem, PostgreSQL without pgshield) or fscrypt / image (the same loop image without encryption: the cost of encryption alone); for the load, > 1x means slower. Images: %s MiB sparse files in %s, `mkfs.ext4 %s` (fscrypt adds `-O encrypt`), `losetup %s`, mounted `%s`.\n' \
		"$IMAGE_MB" "$BENCH_TMPDIR" "${MKFS_ARGS[*]}" "${LOSETUP_ARGS[*]}" "$MOUNT_OPTS"
	if [[ -s $WORK/notes ]]; then
		sed 's/^/- /' "$WORK/notes"
	fi
	local b mib mibs
	for b in image fscrypt; do
		mib=${VAL[$b:loadmib]:-}
		is_uint "$mib" || continue
		mibs=${VAL[$b:probe]:-}
		if [[ $b == fscrypt ]] && is_num "$mibs"; then
			printf -- '- fscrypt: the load wrote %s MiB to its loop device; at the write probe'"'"'s %s MiB/s, encrypting that alone takes %s s\n' \
				"$mib" "$mibs" "$(awk -v m="$mib" -v r="$mibs" 'BEGIN { printf "%.1f", m / r }')"
		else
			printf -- '- %s: the load wrote %s MiB to its loop device\n' "$b" "$mib"
		fi
	done
}
render | tee "$RESULT_FILE"
{ cat "$RESULT_FILE"; echo; cat "$WORK/raw.log"; } >"$RAW_LOG"
log "table written to ${RESULT_FILE#"$REPO"/}; raw pgbench output in ${RAW_LOG#"$REPO"/}"

if ((FAILED)); then
	exit 1
elif [[ -n $BUILD_NOTE ]]; then
	exit 3
fi
exit 0
