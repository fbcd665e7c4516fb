#!/usr/bin/env bash
# Researcher / coordinator: write $FLWR_HOME/config.toml naming the federation's SuperLink.
#
#   deploy/flwr_home.sh FLWR_HOME NAME ADDRESS CA_CERT        e.g. ... hospitals host:9092 ca.crt
#   deploy/flwr_home.sh FLWR_HOME NAME ADDRESS --insecure     (prints a warning; tests only)
#
# Then: FLWR_HOME=... flwr run . NAME --run-config run.toml --stream
set -euo pipefail
source "$(dirname "$0")/common.sh"

[ $# -eq 4 ] || die "usage: $0 FLWR_HOME NAME ADDRESS (CA_CERT | --insecure)"
home="$1" name="$2" address="$3" ca="$4"
[[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || die "federation name '$name' must be [A-Za-z0-9_-]+"
mkdir -p "$home"
{
  echo "[superlink]"
  echo "default = \"$name\""
  echo
  echo "[superlink.$name]"
  echo "address = \"$address\""
  if [ "$ca" = "--insecure" ]; then
    warn_insecure "researcher connection"
    echo "insecure = true"
  else
    echo "root-certificates = \"$(abs_path "$ca")\""
  fi
} > "$home/config.toml"
echo "wrote $home/config.toml (federation '$name' at $address)"
