#!/usr/bin/env bash
# Installs what pgshield needs on Debian 12 (as root): PostgreSQL 15 from
# Debian, its client, and the tools the tests and benchmarks use. Debian's
# packages would create and start a "15/main" cluster on TCP port 5432; we
# stop that from happening so pgshield's PostgreSQL is the only one and owns
# no TCP port.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "pgshield setup must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

want=(postgresql-15 postgresql-client-15 postgresql-contrib postgresql-15-pgaudit pgbackrest iproute2 nftables e2fsprogs mount util-linux ca-certificates
  gocryptfs fuse  # the --storage gocryptfs backend (FUSE; fuse brings fusermount, which gocryptfs runs), for kernels without fscrypt
  postgresql-server-dev-15 gcc make libc6-dev  # these four build pgshield_guard
  patroni etcd-server etcd-client)  # high availability (internal/cluster); pgshield runs them itself, never as services
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
  # etcd-server's and patroni's postinst would start etcd.service (client
  # port 2379 and peer port 2380 on the host) and patroni.service: Debian's
  # policy-rc.d convention (exit 101) keeps every postinst from starting a
  # service. One already there (containers carry one) is left as it is.
  policy_rc=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy_rc=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy_rc"
    chmod 0755 "$policy_rc"
    trap 'rm -f "$policy_rc"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$policy_rc" ]; then rm -f "$policy_rc"; trap - EXIT; fi
fi

# Debian's etcd and Patroni services are not ours: pgshield runs etcd and
# Patroni as its own children, with TLS, inside namespaces. Under systemd,
# stop and disable the packaged units (a no-op when they are not running);
# without systemd nothing starts them. An etcd still listening on the host
# (started by hand or before this script) is reported, not killed: it may
# be someone's.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  for unit in etcd.service patroni.service; do
    if systemctl list-unit-files "$unit" >/dev/null 2>&1; then
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
  done
fi
if command -v ss >/dev/null && ss -Hltn 'sport = :2379 or sport = :2380' 2>/dev/null | grep -q .; then
  echo "warning: something listens on TCP port 2379 or 2380 on this host (an etcd not started by pgshield?); stop it" >&2
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
# pgshield_guard (pgext/pgshield_guard), the PostgreSQL library that keeps the
# administrator from becoming a superuser; pgshield refuses to run without it.
# Built again when its source is newer than the installed copy (PostgreSQL's
# minor releases keep the server's ABI).
guard_src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../pgext/pgshield_guard" && pwd)
guard_so=$(/usr/lib/postgresql/15/bin/pg_config --pkglibdir)/pgshield_guard.so
if [ ! -f "$guard_so" ] || [ "$guard_src/pgshield_guard.c" -nt "$guard_so" ] || [ "$guard_src/Makefile" -nt "$guard_so" ]; then
  echo "Building pgshield_guard"
  guard_build=$(mktemp -d)
  cp "$guard_src/pgshield_guard.c" "$guard_src/Makefile" "$guard_build/"
  if ! make -s -C "$guard_build" >/dev/null || ! make -s -C "$guard_build" install >/dev/null; then
    rm -rf "$guard_build"
    echo "building pgshield_guard failed" >&2
    exit 1
  fi
  rm -rf "$guard_build"
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
