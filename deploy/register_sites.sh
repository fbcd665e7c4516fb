#!/usr/bin/env bash
# Coordinator: register each site's public key with the SuperLink (SuperNode authentication).
# Only registered keys may connect; a site's node id stays the same across its restarts.
#
#   FLWR_HOME=DIR deploy/register_sites.sh NAME PUBLIC_KEY [PUBLIC_KEY ...]
#
# FLWR_HOME must hold the config.toml written by deploy/flwr_home.sh for federation NAME.
set -euo pipefail
source "$(dirname "$0")/common.sh"

[ $# -ge 2 ] || die "usage: FLWR_HOME=DIR $0 NAME PUBLIC_KEY [PUBLIC_KEY ...]"
[ -n "${FLWR_HOME:-}" ] || die "set FLWR_HOME to the folder holding config.toml"
name="$1"; shift
for key in "$@"; do
  [ -f "$key" ] || die "no public key at $key"
  site="$(basename "$(dirname "$(abs_path "$key")")")"
  "$FLWR_BIN/flwr" supernode register "$key" "$name" --name "$site"
done
