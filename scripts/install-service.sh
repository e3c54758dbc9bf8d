#!/usr/bin/env bash
# Runs an initialized pgshield server as a hardened systemd service (as
# root): writes the unit with `pgshield service install` and, where systemd
# is the init system, hands the server over to it (`pgshield down` if it
# runs by hand, then `systemctl enable --now`). README "Running as a
# service" explains every directive of the unit.
#
#   scripts/install-service.sh [--data-dir DIR] [--name NAME] [--unit-dir DIR]
set -euo pipefail

BIN=/usr/local/bin/pgshield
if [ ! -x "$BIN" ]; then
  echo "install-service.sh: $BIN is missing; run scripts/run.sh first" >&2
  exit 1
fi
DATA_DIR=${PGSHIELD_DATA_DIR:-/var/lib/pgshield}
NAME=pgshield
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA_DIR=$2; shift 2 ;;
    --name) NAME=$2; ARGS+=(--name "$2"); shift 2 ;;
    --unit-dir) ARGS+=(--unit-dir "$2"); shift 2 ;;
    *) echo "install-service.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

"$BIN" service install --binary "$BIN" --data-dir "$DATA_DIR" "${ARGS[@]}"
if [ ! -d /run/systemd/system ]; then
  echo "systemd is not the init system here: start the server with 'pgshield up' instead."
  exit 0
fi
if ! "$BIN" status --data-dir "$DATA_DIR" -o json | grep -q '"state": "Stopped"'; then
  # The service must own the daemon: stop the one started by hand (its
  # sessions get pgshield.shutdown_grace).
  "$BIN" down --data-dir "$DATA_DIR"
fi
systemctl enable --now "$NAME.service"
systemctl --no-pager status "$NAME.service" || true
