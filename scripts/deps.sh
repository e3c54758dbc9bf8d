#!/usr/bin/env bash
# Installs what pgshield needs on Debian 12 (as root): PostgreSQL 15 from
# Debian, its client, and the tools the tests and benchmarks use. Debian's
# packages would create and start a "15/main" cluster on TCP port 5432; we
# stop that from happening so pgshield's PostgreSQL is the only one and owns
# no TCP port.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "pgshield setup must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

want=(postgresql-15 postgresql-client-15 postgresql-contrib postgresql-15-pgaudit iproute2 nftables e2fsprogs mount util-linux ca-certificates)
[ "${PGSHIELD_DEPS_BENCH:-0}" = 1 ] && want+=(pgbouncer)

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  # Before the first PostgreSQL package: no default cluster.
  mkdir -p /etc/postgresql-common
  touch /etc/postgresql-common/createcluster.conf
  if grep -qE '^\s*create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    sed -i -E 's/^\s*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
  else
    echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
  fi
  echo "Installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A cluster Debian made earlier (before pgshield) must not listen on TCP:
# stop it and keep it from starting again. Its data is left untouched.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h 2>/dev/null | while read -r ver name port status _; do
    [ -n "$ver" ] || continue
    if [ "$status" = online ]; then
      echo "Stopping Debian's PostgreSQL cluster $ver/$name (port $port); pgshield owns PostgreSQL here."
      pg_ctlcluster "$ver" "$name" stop || true
    fi
    conf=/etc/postgresql/$ver/$name/start.conf
    if [ -f "$conf" ] && ! grep -qx disabled "$conf"; then
      echo disabled > "$conf"
    fi
  done
fi
# pgbouncer's Debian service is not ours either.
if command -v pgbouncer >/dev/null && [ -f /etc/init.d/pgbouncer ]; then
  /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
fi

# Go builds pgshield; these machines carry it in /usr/local/go.
if ! command -v go >/dev/null; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH=/usr/local/go/bin:$PATH
  else
    echo "Go 1.26 or newer is required to build pgshield (https://go.dev/dl); put it in /usr/local/go" >&2
    exit 1
  fi
fi
