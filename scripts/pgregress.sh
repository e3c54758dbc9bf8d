#!/usr/bin/env bash
# Runs pgshield_guard's pg_regress suite (pgext/pgshield_guard/sql and
# expected) on throwaway PostgreSQL 15 instances, as root: the library as
# installed, preloaded the way pgshield preloads it.
#   guard, reload_*  regress.conf: every refusal and every allowed action,
#                    then a reload to an unparsable list and back
#   failclosed       regress-broken.conf: the server starts with an
#                    unparsable list and refuses role management
#   clientid_untrusted  the gateway's parameter from the postgres OS user
#                    is refused (gateway_uid stays 0, root)
#   clientid         regress.conf with pgshield_guard.gateway_uid set to the
#                    postgres OS user, whose regress_client.pl then plays
#                    the gateway: the real client, rebinding, visibility
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "pgregress.sh must run as root" >&2; exit 1; }

pgbin=/usr/lib/postgresql/15/bin
src=pgext/pgshield_guard
# deps.sh builds and installs pgshield_guard when its source is newer.
libdir=$("$pgbin/pg_config" --pkglibdir 2>/dev/null || true)
if [ -z "$libdir" ] || [ ! -f "$libdir/pgshield_guard.so" ] || [ "$src/pgshield_guard.c" -nt "$libdir/pgshield_guard.so" ] ||
  [ "$src/Makefile" -nt "$libdir/pgshield_guard.so" ]; then
  scripts/deps.sh
  libdir=$("$pgbin/pg_config" --pkglibdir)
fi
regress=$libdir/pgxs/src/test/regress/pg_regress

# initdb refuses root: everything runs as postgres, in a directory of its own.
work=$(mktemp -d /tmp/pgshield-regress.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r "$src/sql" "$src/expected" "$src/regress.conf" "$src/regress-broken.conf" "$src/regress_client.pl" "$work/"
{ cat "$src/regress.conf"; echo "pgshield_guard.gateway_uid = $(id -u postgres)"; echo "log_connections = on"; } >"$work/regress-client.conf"
chown -R postgres:postgres "$work"

status=0
run() { # run NAME CONF TEST...
  local name=$1 conf=$2
  shift 2
  mkdir -p "$work/$name/sock" && chown -R postgres:postgres "$work/$name" && chmod 700 "$work/$name/sock"
  # listen_addresses stays empty; the socket lives in the temp directory.
  if ! runuser -u postgres -- env -i PATH=/usr/bin:/bin LANG=C PG_REGRESS_SOCK_DIR="$work/$name/sock" \
    "$regress" --bindir="$pgbin" --inputdir="$work" --outputdir="$work/$name" \
    --temp-instance="$work/$name/instance" --temp-config="$work/$conf" --port=54329 \
    --no-locale --encoding=UTF8 "$@"; then
    status=1
    cat "$work/$name/regression.diffs" 2>/dev/null || true
    tail -n 20 "$work/$name/log/postmaster.log" 2>/dev/null || true
  fi
}
run main regress.conf guard reload_break reload_broken reload_fixed clientid_untrusted handover
run broken regress-broken.conf failclosed
run client regress-client.conf clientid
exit $status
