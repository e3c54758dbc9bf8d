#!/usr/bin/env bash
# One command to a working, secure server with defaults (as root): installs
# PostgreSQL 15, builds and installs pgshield, creates the server on first
# run, starts it, and prints how to connect.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
[ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH

# PGSHIELD_FIPS=1 builds against Go's FIPS 140-3 module, which then runs in
# FIPS mode by default (GODEBUG=fips140=on); `pgshield status` says so.
if [ "${PGSHIELD_FIPS:-0}" = 1 ]; then export GOFIPS140=v1.26.0; fi
go build -o bin/pgshield ./cmd/pgshield
install -m 0755 bin/pgshield /usr/local/bin/pgshield

DATA_DIR=${PGSHIELD_DATA_DIR:-/var/lib/pgshield}
if [ ! -f "$DATA_DIR/pgshield.json" ]; then
  pgshield init --data-dir "$DATA_DIR" ${PGSHIELD_INIT_FLAGS:-}
fi
if pgshield status --data-dir "$DATA_DIR" -o json | grep -q '"state": "Stopped"'; then
  pgshield up --data-dir "$DATA_DIR"
else
  echo "pgshield is already running."
  pgshield connection-string --data-dir "$DATA_DIR"
fi
