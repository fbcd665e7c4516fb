#!/usr/bin/env bash
# Coordinator: start the SuperLink with TLS, SuperNode authentication and a persistent state
# database (registered sites survive a restart). Runs in the foreground; stop it with SIGTERM.
#
#   deploy/start_superlink.sh --certs DIR --state DIR [--host 0.0.0.0] [--port 9092]
#   deploy/start_superlink.sh --insecure --state DIR ...     (prints a warning; tests only)
#
# DIR (certs) holds ca.crt, server.crt, server.key (deploy/make_test_pki.sh makes test ones).
# The one port serves the Fleet API (sites), the Control API (researcher: flwr run, flwr
# supernode register) and the Runtime API (the ServerApp); see docs/deployment.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"

certs="" state="" host="127.0.0.1" port="9092" insecure=0
while [ $# -gt 0 ]; do
  case "$1" in
    --certs) certs="$2"; shift 2 ;;
    --state) state="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done
[ -n "$state" ] || die "--state DIR is required (the SuperLink's database lives there)"
private_dir "$state"  # database and log: owner-only (umask 077 in common.sh)
state="$(abs_path "$state")"

args=(--database "$state/superlink.db" --host "$host" --port "$port"
      --disable-runtime-dependency-installation --log-file "$state/superlink.log")
if [ "$insecure" = 1 ]; then
  warn_insecure "SuperLink"
  args+=(--insecure)
else
  [ -n "$certs" ] || die "--certs DIR is required (or --insecure for a test network)"
  certs="$(abs_path "$certs")"
  for f in ca.crt server.crt server.key; do [ -f "$certs/$f" ] || die "missing $certs/$f"; done
  args+=(--ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.crt"
         --ssl-keyfile "$certs/server.key" --enable-supernode-auth)
fi
# Flower keeps the apps (FABs) it runs under FLWR_HOME: inside the state folder unless given.
export FLWR_HOME="${FLWR_HOME:-$state/flwr_home}"
cd "$state"
exec "$FLWR_BIN/flower-superlink" "${args[@]}"
