#!/usr/bin/env bash
# Hospital: start this site's SuperNode (own key, the federation's CA, its site folder) and the
# warm executor that answers each message without re-importing torch/MONAI/peft.
# Runs in the foreground; SIGTERM stops both processes.
#
#   deploy/start_site.sh --superlink HOST:PORT --ca ca.crt --key node_key --site-dir DIR \
#       [--site-name NAME] [--state-dir DIR] [--port 9094] [--executor warm|flower]
#       [--device auto|cpu|cuda|cuda:N]   (this site's own GPU; wins over the run's train.device)
#       [--trusted-entities FILE]   (run only apps signed by these Ed25519 keys: deploy/sign_fab.py)
#   deploy/start_site.sh --insecure --superlink HOST:PORT --site-dir DIR ...  (warning; tests only)
#
# --port is the SuperNode's local Runtime API (127.0.0.1 only); each SuperNode on one machine
# needs its own. --executor flower uses Flower's default (a fresh process per message) and skips
# the site's own egress check (deploy/site_guard.py), which only the warm executor applies.
set -euo pipefail
source "$(dirname "$0")/common.sh"

superlink="" ca="" key="" site_dir="" site_name="" state_dir="" port="9094" executor="warm"
device="" trusted=""
insecure=0 retries="${MAX_RETRIES:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --site-dir) site_dir="$2"; shift 2 ;;
    --site-name) site_name="$2"; shift 2 ;;
    --state-dir) state_dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --executor) executor="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --trusted-entities) trusted="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done
[ -n "$superlink" ] || die "--superlink HOST:PORT is required"
[ -n "$site_dir" ] || die "--site-dir DIR is required"
site_dir="$(abs_path "$site_dir")"
[[ "$site_dir$site_name$state_dir" != *"'"* ]] || die "paths and names may not contain '"
config="site-dir='$site_dir'"
[ -z "$site_name" ] || config+=" site-name='$site_name'"
if [ -n "$device" ]; then
  [[ "$device" =~ ^(auto|cpu|cuda(:[0-9]+)?)$ ]] || die "--device must be auto, cpu, cuda or cuda:N"
  config+=" device='$device'"
fi
if [ -n "$state_dir" ]; then
  private_dir "$state_dir"  # privacy ledger, FABs: owner-only (umask 077 in common.sh)
  state_dir="$(abs_path "$state_dir")"
  config+=" state-dir='$state_dir'"
fi

# Flower keeps the apps (FABs) it receives under FLWR_HOME: in the state folder if one is given.
[ -n "${FLWR_HOME:-}" ] || [ -z "$state_dir" ] || export FLWR_HOME="$state_dir/flwr_home"
args=(--superlink "$superlink" --node-config "$config" --port "$port" --host 127.0.0.1)
[ -z "$retries" ] || args+=(--max-retries "$retries")
if [ "$insecure" = 1 ]; then
  warn_insecure "SuperNode"
  args+=(--insecure)
else
  [ -n "$ca" ] && [ -n "$key" ] || die "--ca and --key are required (or --insecure for tests)"
  args+=(--root-certificates "$(abs_path "$ca")" --auth-supernode-private-key "$(abs_path "$key")")
fi

executor_args=(--runtime-api-address "127.0.0.1:$port")
if [ -n "$trusted" ]; then
  # Flower's own --trusted-entities trusts only Flower Hub verification records (a FAB sent with
  # flwr run has none), so the site's executor checks the consortium's signature instead.
  [ "$executor" = warm ] || die "--trusted-entities needs the site's executor (--executor warm)"
  executor_args+=(--trusted-entities "$(abs_path "$trusted")")
fi
case "$executor" in
  flower)
    echo "WARNING: --executor flower: the site's own egress check does not run" >&2
    exec "$FLWR_BIN/flower-supernode" "${args[@]}" ;;
  warm) ;;
  *) die "--executor must be warm or flower, not $executor" ;;
esac

"$FLWR_BIN/flower-supernode" "${args[@]}" --isolation process &
supernode=$!
trap 'kill -TERM "$supernode" 2>/dev/null || true; wait "$supernode" 2>/dev/null || true' EXIT
trap 'exit 143' TERM INT
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"
cd "${state_dir:-/}"
"$PYTHON" "$UNICON_ROOT/deploy/warm_executor.py" "${executor_args[@]}" --parent-pid "$supernode" &
wait -n
