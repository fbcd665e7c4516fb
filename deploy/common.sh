# Shared settings of the deploy scripts (sourced, not run).
# Flower must never install the app's dependencies at run time (that would uv-sync CUDA torch),
# never phone home, and never check for updates.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
# Everything the scripts and the processes they start create (state databases, logs, keys,
# FABs, run folders) is owner-only: files 0600, folders 0700.
umask 077

# The interpreter and Flower commands of this checkout's virtual environment unless given.
UNICON_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$UNICON_ROOT/.venv/bin/python}"
FLWR_BIN="${FLWR_BIN:-$(dirname "$PYTHON")}"
# Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name.
export PATH="$FLWR_BIN:$PATH"

die() { echo "error: $*" >&2; exit 2; }

warn_insecure() {
  echo "WARNING: INSECURE MODE ($1): traffic is NOT encrypted and SuperNodes are NOT" \
       "authenticated. Use only on a trusted test network, never with patient data." >&2
}

private_dir() {  # create a state folder, or close one an earlier version left open
  mkdir -p "$1"
  chmod -R go-rwx "$1"
}

abs_path() {  # absolute path of an existing file or folder
  [ -e "$1" ] || die "$1 does not exist"
  (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")")
}
