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
# raw pgbench output goes to bench/results/storage-latest.log (bench/results/
# is git-ignored: results are written, not committed). Progress goes to
# stderr. Exit status: 0 if every backend asked for was measured; 3 if the only
# problem is that the fscrypt helper did not build (that column is skipped);
# 1 on any other failure. On exit, also on error, Ctrl-C and SIGTERM, every
# cluster is stopped, gocryptfs unmounted, the fscrypt volume locked and
# detached, the control image unmounted and its loop device detached, and
# the temporary directory removed.

# shellcheck disable=SC2317,SC2119 # functions called indirectly (traps, phases); optional arguments
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init "$@"

RESULT_FILE=$RESULTS_DIR/storage-latest.md
RAW_LOG=$RESULTS_DIR/storage-latest.log
DURATION=${DURATION:-60}
BENCH_ONLY=${BENCH_ONLY:-plain,image,fscrypt,gocryptfs}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
IMAGE_MB=${IMAGE_MB:-}
PROBE_MB=${PROBE_MB:-512}

PG_PORT=5432 # only names the Unix socket; each cluster has its own socket dir
BACKENDS=(plain image fscrypt gocryptfs)
WORKLOADS=(probe load tpcb select)
LOG_FIND_OPTS=(-xdev) # dump_logs: not into (possibly hung) mounts

# ext4 exactly as internal/storage makes it, minus "-O encrypt".
# shellcheck disable=SC2054 # the comma is part of the -E argument
MKFS_ARGS=(-q -b 4096 -I 256 -i 16384 -m 0 -E lazy_itable_init=0,lazy_journal_init=0)
LOSETUP_ARGS=(--find --show --nooverlap --direct-io=on --sector-size 4096)
MOUNT_OPTS=nosuid,nodev,noexec,noatime,errors=remount-ro

# ---------------------------------------------------------------- checks ----

need_root
check_run_opts PROBE_MB
if [[ -z $IMAGE_MB ]]; then
	IMAGE_MB=$((2048 + 64 * SCALE))
	((IMAGE_MB >= 4096)) || IMAGE_MB=4096
fi
if ! is_uint "$IMAGE_MB" || ((IMAGE_MB < 64)); then
	die "IMAGE_MB must be an integer >= 64, got '$IMAGE_MB'"
fi
check_only backend "${BACKENDS[@]}"
check_pg
export PATH=$PATH:/usr/sbin:/sbin
need_cmds mkfs.ext4 losetup mount umount runuser timeout awk truncate openssl findmnt dd
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

FSCRYPTVOL=""

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

pid_is_gocryptfs() {
	local exe
	exe=$(readlink /proc/"$1"/exe 2>/dev/null) || return 1
	[[ ${exe##*/} == gocryptfs ]]
}
gocryptfs_pids() {
	local pid
	for pid in $(our_pids); do
		if pid_is_gocryptfs "$pid"; then echo "$pid"; fi
	done
}

# stop_backend BACKEND: stop its cluster (if its storage is there).
stop_backend() {
	[[ -n $WORK ]] || return 0
	if [[ $1 == gocryptfs ]] && ! is_mounted "$(GC_PLAIN)"; then return 0; fi
	stop_cluster "$(datadir_of "$1")"
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
			kill_leftovers pid_is_gocryptfs
			timeout --kill-after=10 150 "$FSCRYPTVOL" down -image "$img" -mount "$mnt" >>"$WORK/cleanup.log" 2>&1 ||
				log "WARNING: 'fscryptvol down' failed again (see cleanup.log); unmounting directly"
		fi
	fi
	# Without the helper (or if it failed): unmounting drops the key too.
	teardown_ext4 fscrypt
}

# teardown BACKEND: stop its cluster, then take its storage down.
teardown() {
	stop_backend "$1"
	case $1 in
	plain) ;;
	image) teardown_ext4 image ;;
	fscrypt) teardown_fscrypt ;;
	gocryptfs) teardown_gocryptfs ;;
	esac
}

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

# teardown_all: everything of this run, whatever state it is in; fails if
# something of $WORK is still in use.
teardown_all() {
	local b m dev
	for b in "${BACKENDS[@]}"; do stop_backend "$b"; done
	kill_leftovers pid_is_gocryptfs
	teardown_gocryptfs
	teardown_fscrypt
	teardown_ext4 image
	kill_leftovers
	# Anything still mounted or attached below $WORK (should be nothing).
	for m in $(mounts_under "$WORK"); do umount_dir "$m"; done
	for dev in $(loops_under "$WORK"); do
		timeout 30 losetup --detach "$dev" >/dev/null 2>&1 || log "WARNING: losetup -d $dev failed"
	done
	check_clean
}
install_cleanup

# ---------------------------------------------------------------- helpers ----

sock_of() { echo "$WORK/$1/pg"; } # BACKEND: its cluster's socket directory
# pg BACKEND CMD...: a libpq client as postgres over the backend's socket.
pg() {
	local b=$1
	shift
	sock_run "$(sock_of "$b")" "$PG_PORT" "$@"
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
	local b=$1 data sock t0 t1 secs out w args rc w0 w1 conf
	data=$(datadir_of "$b")
	sock=$(sock_of "$b")
	probe "$b"
	chown "$PG_OS_USER": "$data"
	chmod 700 "$data"
	as_pg test -w "$data" || die "$b: $PG_OS_USER cannot write $data"
	mkdir -p "$sock"
	chown "$PG_OS_USER": "$sock"
	chmod 700 "$sock"
	step "$b: initdb in $data"
	pg_initdb "$data" reject "$WORK/$b/initdb.log"
	# As pgshield configures its cluster on the volume (internal/postgres): no
	# zero-filling of new WAL segments, which would be encrypted too.
	if [[ $b == plain ]]; then conf=(); else conf=("wal_init_zero = off"); fi
	pg_conf "$data" "" "$PG_PORT" "$sock" "${conf[@]}"
	pg_start "$data" "$sock/postgres.log" "$WORK/$b/pg_ctl.log" "$sock" "$PG_PORT"
	psql_sock "$sock" "$PG_PORT" postgres -c "CREATE DATABASE $DB"
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

	vacuum_checkpoint "$sock" "$PG_PORT" "$b"

	for w in tpcb select; do
		args=(-c "$CLIENTS" -j "$THREADS" -T "$DURATION")
		[[ $w == select ]] && args=(-S "${args[@]}")
		out=$WORK/$b/$w.out
		psql_sock "$sock" "$PG_PORT" "$DB" -c "CHECKPOINT"
		step "$b: pgbench ${args[*]}"
		pg "$b" timeout --kill-after=10 $((DURATION + 300)) "$PGBENCH" "${args[@]}" "$DB" >"$out" 2>&1 && rc=0 || rc=$?
		raw "$b / $w: pgbench ${args[*]}" "$out"
		record_tps "$b" "$w" "$out" "$rc" || die "$b: pgbench ${args[*]} failed"
	done

	step "$b: stopping PostgreSQL"
	as_pg timeout 120 "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >>"$WORK/$b/pg_ctl.log" 2>&1
}

phase() { # BACKEND
	"setup_$1"
	bench_cluster "$1"
}

# bench_backend BACKEND: measure it in a background subshell (run_phase),
# then take its storage down again.
bench_backend() {
	run_phase "$1" "$1" "$1" phase "$1"
	step "$1: tearing down"
	teardown "$1" || log "WARNING: $1: teardown failed; the exit trap tries again"
}

fusermount_bin() { command -v fusermount3 2>/dev/null || command -v fusermount 2>/dev/null || true; }

ensure_gocryptfs() {
	local pkgs=()
	command -v gocryptfs >/dev/null || pkgs+=(gocryptfs)
	[[ -n $(fusermount_bin) ]] || pkgs+=(fuse3)
	((${#pkgs[@]})) || return 0
	apt_install "${pkgs[@]}"
}

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

make_work pgshield-storage 755
[[ $WORK != *[[:space:]]* ]] || die "BENCH_TMPDIR must not contain whitespace"
case $(findmnt -rn -o FSTYPE -T "$WORK" 2>/dev/null) in
tmpfs | ramfs) die "BENCH_TMPDIR=$BENCH_TMPDIR is in memory (tmpfs): the plain column must be a disk filesystem; set BENCH_TMPDIR" ;;
esac
RAW_OUT=$WORK/raw.log # copied to $RAW_LOG with the table, so both are from one run
: >"$RAW_OUT"
log "work dir $WORK; DURATION=${DURATION}s scale=$SCALE clients=$CLIENTS threads=$THREADS backends=$BENCH_ONLY image=${IMAGE_MB}MiB"

XTS_DRIVER=$(xts_driver)
KERNEL=$(uname -r)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg) # other work on the machine skews everything

BUILD_NOTE=""
if want fscrypt; then
	log "fscrypt: go build -o \$WORK/fscryptvol ./bench/cmd/fscryptvol"
	if go_build "$WORK/fscryptvol" ./bench/cmd/fscryptvol; then
		FSCRYPTVOL=$WORK/fscryptvol
	else
		BUILD_NOTE="build failed"
		build_failed fscrypt ./bench/cmd/fscryptvol
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
	bench_backend "$b"
done

# ------------------------------------------------------------------ table ----

load_results

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
	else
		fmt1 "$v"
	fi
}
ratio() { ratio_of "${VAL[$1:$2]:-}" "${VAL[${3:-plain}:$2]:-}"; } # BACKEND WORKLOAD [BASE]: BACKEND / BASE (default plain)

render() {
	local w label
	printf '### pgshield storage benchmark: encryption at rest\n\n'
	printf '%s | load avg at start %s | kernel %s | xts(aes) driver: %s | PostgreSQL %s | gocryptfs %s | DURATION=%ss | scale %s, %s clients, %s threads | pgshield %s\n\n' \
		"$(stamp)" "$LOADAVG" "$KERNEL" "$XTS_DRIVER" "$PG_VERSION" \
		"${GOCRYPTFS_VERSION:-n/a}" "$DURATION" "$SCALE" "$CLIENTS" "$THREADS" "$(pgshield_rev)"
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
	print_notes
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
publish render
{ cat "$RESULT_FILE"; echo; cat "$RAW_OUT"; } >"$RAW_LOG"
finish "$BUILD_NOTE"
