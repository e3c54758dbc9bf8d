#!/usr/bin/env bash
# Runs every Fuzz* target in the repository, one after another, for a set
# time each, and keeps what the fuzzer found under each package's
# testdata/fuzz/<Target>/ (where `go test`, and so scripts/test.sh, runs
# it as seeds from then on). Prints the executions per target.
#
#   scripts/fuzz.sh [TIME] [REGEXP]
#
# TIME is a go test -fuzztime value (default $PGSHIELD_FUZZ_TIME or 60s);
# REGEXP limits the targets by name (default all). Environment:
#   PGSHIELD_FUZZ_PARALLEL  fuzzing workers per target (default: nproc)
#   PGSHIELD_FUZZ_SAVE=0    do not copy the generated corpus into testdata
#   PGSHIELD_FUZZ_REPORT    also write "package target execs result" lines here
# A target that finds a failure stops there (its input is written to
# testdata/fuzz/<Target>/ by go test); the script goes on with the others
# and exits non-zero at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH

fuzztime=${1:-${PGSHIELD_FUZZ_TIME:-60s}}
filter=${2:-.}
parallel=${PGSHIELD_FUZZ_PARALLEL:-$(nproc)}
save=${PGSHIELD_FUZZ_SAVE:-1}
report=${PGSHIELD_FUZZ_REPORT:-}
cache=$(go env GOCACHE)/fuzz
module=$(go list -m)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Every "func FuzzX(f *testing.F)" in a _test.go file, as "dir target".
targets=$(git ls-files --cached --others --exclude-standard '*_test.go' 2>/dev/null || find . -name '*_test.go' -printf '%P\n')
targets=$(grep -H -o '^func Fuzz[A-Za-z0-9_]*(f \*testing\.F)' $targets |
	sed -E 's#^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*).*#\1 \2#; s#^[^/ ]*_test\.go:func (Fuzz[A-Za-z0-9_]*).*#. \1#' |
	awk -v re="$filter" '$2 ~ re' | sort -u)
if [ -z "$targets" ]; then echo "no fuzz targets match $filter" >&2; exit 1; fi

[ -n "$report" ] && : >"$report"
failed=0
printf '%-28s %-30s %12s  %s\n' package target execs result
while read -r dir target; do
	pkg=$module/${dir#./}
	[ "$dir" = . ] && pkg=$module
	if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -parallel "$parallel" "./$dir" >"$log" 2>&1; then
		result=ok
	else
		result=FAIL
		failed=1
	fi
	execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | awk '{print $2}')
	printf '%-28s %-30s %12s  %s\n' "${dir#./}" "$target" "${execs:-?}" "$result"
	[ -n "$report" ] && echo "${dir#./} $target ${execs:-0} $result" >>"$report"
	if [ "$result" = FAIL ]; then sed -n '/--- FAIL\|Failing input\|panic:/,+8p' "$log" | head -30 >&2; fi
	# Keep the corpus: what the fuzzer found interesting lives in the build
	# cache until copied here, next to the seeds.
	if [ "$save" = 1 ] && [ -d "$cache/$pkg/$target" ]; then
		mkdir -p "$dir/testdata/fuzz/$target"
		cp -n "$cache/$pkg/$target"/* "$dir/testdata/fuzz/$target/" 2>/dev/null || true
	fi
done <<<"$targets"
exit $failed
