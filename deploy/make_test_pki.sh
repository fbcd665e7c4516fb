#!/usr/bin/env bash
# Make a TEST certificate authority, the SuperLink's TLS certificate and one ECDSA P-384 key
# pair per site. For tests and pilots only: a production CA lives with the hospital network's
# security team, and each site makes its own key and sends only the public half.
#
#   deploy/make_test_pki.sh OUT_DIR SITE [SITE ...]
#
# Env: SERVER_SAN (default "IP:127.0.0.1,IP:::1,DNS:localhost") names the SuperLink's address(es)
# in its certificate; DAYS (default 30) is the validity.
# Writes: OUT_DIR/ca.crt ca.key server.crt server.key, OUT_DIR/sites/<site>/node_key{,.pub}.
set -euo pipefail
source "$(dirname "$0")/common.sh"

[ $# -ge 2 ] || die "usage: $0 OUT_DIR SITE [SITE ...]"
out="$1"; shift
san="${SERVER_SAN:-IP:127.0.0.1,IP:::1,DNS:localhost}"
days="${DAYS:-30}"
mkdir -p "$out/sites"
umask 077

if [ ! -f "$out/ca.crt" ]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days "$days" \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=unicon TEST CA" 2>/dev/null
fi
if [ ! -f "$out/server.crt" ]; then
  openssl req -newkey rsa:3072 -sha256 -nodes -keyout "$out/server.key" \
    -out "$out/server.csr" -subj "/CN=unicon SuperLink" 2>/dev/null
  printf 'subjectAltName = %s\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n' \
    "$san" > "$out/server.ext"
  openssl x509 -req -sha256 -days "$days" -in "$out/server.csr" -CA "$out/ca.crt" \
    -CAkey "$out/ca.key" -CAcreateserial -out "$out/server.crt" -extfile "$out/server.ext" \
    2>/dev/null
  rm -f "$out/server.csr" "$out/server.ext"
fi
for site in "$@"; do
  [[ "$site" =~ ^[A-Za-z0-9_.-]+$ ]] || die "site name '$site' must be [A-Za-z0-9_.-]+"
  mkdir -p "$out/sites/$site"
  key="$out/sites/$site/node_key"
  [ -f "$key" ] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "unicon-$site" -f "$key"
done
chmod 644 "$out/ca.crt" "$out/server.crt"
echo "test PKI in $out: CA, SuperLink certificate ($san), keys for: $*"
