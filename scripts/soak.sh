#!/usr/bin/env bash
# The long version of the fault suite (issue #17): the commit ledger under
# kill -9 with 200 postmaster kills (and a daemon or whole-tree kill,
# alternately, after every second one: 100 more), then every fuzz target.
# Figures go to stdout and to $PGSHIELD_SOAK_DIR (default ./soak-<time>).
#
#   scripts/soak.sh [POSTMASTER_KILLS] [FUZZTIME]
#
# Runs as root, like scripts/test.sh; holds /tmp/e2e.lock while the e2e part
# runs, so it never shares the machine's loop devices and ports with another
# e2e run. PGSHIELD_LEDGER_SEED replays a schedule of kills.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH

kills=${1:-200}
fuzztime=${2:-60s}
out=${PGSHIELD_SOAK_DIR:-soak-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

echo "== commit ledger: $kills postmaster kills, $((kills / 2)) daemon and whole-tree kills"
# About 4 s a postmaster kill and 6 s a daemon or tree kill on 2 cores.
status=0
flock /tmp/e2e.lock env PGSHIELD_E2E=1 PGSHIELD_LEDGER_CYCLES="$kills" PGSHIELD_LEDGER_REPORT="$out/ledger.json" \
	go test -count=1 -timeout 6h -run '^TestLedgerKill9$' -v ./e2e/ >"$out/ledger.log" 2>&1 || status=1
grep -E '^(--- |PASS|FAIL|ok )|ledger: ' "$out/ledger.log" || true

echo "== fuzzing: every target for $fuzztime"
PGSHIELD_FUZZ_REPORT="$out/fuzz.txt" scripts/fuzz.sh "$fuzztime" || status=1

echo "== figures ($out)"
cat "$out/ledger.json" 2>/dev/null || echo "no ledger figures (see $out/ledger.log)"
cat "$out/fuzz.txt"
exit "$status"
