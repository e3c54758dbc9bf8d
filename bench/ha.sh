#!/usr/bin/env bash
# bench/ha.sh: high availability's figures (issue #18), in one run.
#
# Runs the real failover test (internal/cluster/link TestRealHAFailover: 3
# etcd members and 2 Patroni nodes in network namespaces on 10.77.40.0/24,
# PostgreSQL in empty namespaces, replication only through pgshield's
# mutual-TLS link) with KILLS kill -9 rounds of the primary's node, and
# reports, per timing set:
#   failover   kill -9 of the primary's whole node to the first acknowledged
#              write on the new primary: median, p95, min, max
#   lost       acknowledged rows missing from the new primary (must be 0)
#   TPC-B      pgbench TPC-B (8 clients, scale 10) on node 1 alone, then on
#              the synchronous pair, in the same run
# plus the partial failures the test runs after the kills (Patroni frozen,
# postmaster alone killed, etcd quorum lost, partitions), as it logs them.
#
# Run as root from the repository:   bash bench/ha.sh
# Environment (all optional):
#   KILLS=20        kill rounds per timing set (1-20)
#   TPCB=30         seconds of each TPC-B run (0: none)
#   TIMINGS=test    test (ttl/loop_wait/retry_timeout 10/2/4), default
#                   (Patroni's 30/10/10) or both
#   REUSE_LOG=1     no run: the table from the last run's log (one set)
#
# The table is printed and written to bench/results/ha-latest.md; the test's
# output goes to bench/results/ha-latest.log.

set -euo pipefail
export LC_ALL=C
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
	exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "bench/ha.sh must run as root (network namespaces)" >&2; exit 1; }
KILLS=${KILLS:-20}
TPCB=${TPCB:-30}
TIMINGS=${TIMINGS:-test}
[[ $KILLS =~ ^[0-9]+$ && $KILLS -ge 1 && $KILLS -le 20 ]] || { echo "KILLS must be 1-20" >&2; exit 2; }
[[ $TPCB =~ ^[0-9]+$ && $TPCB -le 600 ]] || { echo "TPCB must be 0-600" >&2; exit 2; }
case $TIMINGS in test) sets=(test) ;; default) sets=(default) ;; both) sets=(test default) ;;
*) echo "TIMINGS must be test, default or both" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
bash scripts/deps.sh >/dev/null
mkdir -p bench/results
log=bench/results/ha-latest.log
out=bench/results/ha-latest.md
[[ ${REUSE_LOG:-} == 1 ]] || : >"$log"

# stats "v1,v2,...": median p95 min max (seconds, 2 decimals).
stats() {
	tr ',' '\n' <<<"$1" | sort -n | awk '{v[NR]=$1} END {
		n=NR; m=(n%2)?v[(n+1)/2]:(v[n/2]+v[n/2+1])/2
		p=int(0.95*n+0.999); if (p<1) p=1; if (p>n) p=n
		printf "%.2f %.2f %.2f %.2f\n", m, v[p], v[1], v[n] }'
}

rows=()
notes=()
for set in "${sets[@]}"; do
	echo "[ha-bench $(date -u +%T)] $set timings, $KILLS kills, TPC-B ${TPCB}s" >&2
	env_timings=()
	[[ $set == default ]] && env_timings=(PGSHIELD_HA_TIMINGS=default)
	if [[ ${REUSE_LOG:-} == 1 ]]; then
		:
	elif ! env PGSHIELD_E2E=1 PGSHIELD_HA_KILLS="$KILLS" PGSHIELD_HA_TPCB="$TPCB" "${env_timings[@]}" \
		go test -count=1 -timeout 80m -run '^TestRealHAFailover$' -v ./internal/cluster/link/ >>"$log" 2>&1; then
		echo "the failover test failed; see $log" >&2
		exit 1
	fi
	line=$(grep -o 'HA-FIGURES .*' "$log" | tail -1)
	get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
	read -r med p95 lo hi < <(stats "$(get failover_s)")
	rows+=("| $(get timings) | $(get kills) | ${med} s | ${p95} s | ${lo}–${hi} s | $(get acked) | $(get lost) | $(get tpcb_single) | $(get tpcb_pair) |")
	while IFS= read -r l; do notes+=("- $set timings: ${l#*: }"); done < <(grep -E 'ha_real_test.go:[0-9]+: (Patroni of|freeze:|postmaster of|etcd quorum|quorum back|partition of)' "$log" | tail -9)
done

{
	echo "### pgshield high availability"
	echo
	echo "$(date -u '+%F %T UTC') | nproc $(nproc) | $(patroni --version 2>&1 | head -1) | $(etcd --version 2>/dev/null | head -1) | PostgreSQL $(/usr/lib/postgresql/15/bin/postgres --version | awk '{print $3}') | pgshield $(git rev-parse --short HEAD)"
	echo
	echo "| ttl/loop_wait/retry_timeout (s) | kills | failover median | p95 | min–max | acknowledged rows | lost | TPC-B node alone (tps) | TPC-B synchronous pair (tps) |"
	echo "|---|---:|---:|---:|---|---:|---:|---:|---:|"
	printf '%s\n' "${rows[@]}"
	echo
	echo "Failover: kill -9 of the primary node's whole process tree (Patroni, postmaster, link) to the first write acknowledged by the new primary. TPC-B: pgbench -c 8 -j 2, scale 10, ${TPCB} s, on node 1 before node 2 joins (synchronous_commit=local), then on the synchronous pair."
	echo
	printf '%s\n' "${notes[@]}"
} | tee "$out"
