"""Sign a Flower app (FAB) for the sites of a consortium, in the format Flower verifies.

Flower 1.41 verifies FAB signatures (``flower-supernode --trusted-entities``) only for apps
fetched from Flower Hub, whose verification records come from the Hub; a FAB submitted with
``flwr run`` carries none, and its only signing command (``flwr app review``) signs Hub apps
online. This script signs offline with the same key type, message and encoding (Ed25519 over
8-byte big-endian signing time + SHA-256 of the FAB, base64url), and the site's executor checks
it (``deploy/site_guard.py``) against the same trusted-entities YAML file.

``flwr build`` is deterministic (fixed zip dates, ``.gitignore`` applied), so the FAB signed here
from a reviewed source tree is byte for byte the one ``flwr run`` submits from that tree.

Usage::

    ssh-keygen -t ed25519 -f consortium_key -C unicon-consortium       # once, offline
    python deploy/sign_fab.py entity --key-id consortium --public-key consortium_key.pub \\
        >> trusted_entities.yaml                                         # to every site
    python deploy/sign_fab.py sign --key consortium_key --key-id consortium --app . \\
        --out signature.toml                                             # per reviewed release
    flwr run . <federation> --run-config signature.toml                  # the researcher

A passphrase-protected key is read with the passphrase in ``$UNICON_SIGNING_PASSPHRASE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__:
    from deploy.site_guard import SIGNATURE_KEY, sign_fab
else:  # run as a script: this folder is sys.path[0]
    from site_guard import SIGNATURE_KEY, sign_fab


def fab_bytes(app: Path | None = None, fab: Path | None = None) -> bytes:
    """The FAB to sign: a built ``.fab`` file, or the one ``flwr run`` builds from ``app``."""
    if (app is None) == (fab is None):
        raise ValueError("give exactly one of --app DIR and --fab FILE")
    if fab is not None:
        return Path(fab).read_bytes()
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(Path(app))


def load_private_key(path: Path) -> object:
    """An Ed25519 private key from an OpenSSH key file (``ssh-keygen -t ed25519``)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    secret = os.environ.get("UNICON_SIGNING_PASSPHRASE")
    try:
        key = load_ssh_private_key(Path(path).read_bytes(),
                                   password=secret.encode() if secret else None)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a readable OpenSSH private key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key (make one with ssh-keygen -t ed25519)")
    return key


def entity_line(key_id: str, public_key: Path) -> str:
    """One line of a trusted-entities YAML file: ``<key id>: '<ssh-ed25519 ...>'``."""
    text = Path(public_key).read_text(encoding="utf-8").strip()
    if not text.startswith("ssh-ed25519 "):
        raise ValueError(f"{public_key}: not an ssh-ed25519 public key")
    return f"{json.dumps(key_id)}: {json.dumps(text)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see module doc); 0 on success, 2 with a message on a bad argument."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sign = sub.add_parser("sign", help="sign a FAB; prints the run-config line")
    sign.add_argument("--key", type=Path, required=True, help="OpenSSH Ed25519 private key")
    sign.add_argument("--key-id", required=True, help="the key's name in trusted_entities.yaml")
    sign.add_argument("--app", type=Path, default=None, help="app folder (what flwr run builds)")
    sign.add_argument("--fab", type=Path, default=None, help="a FAB file from flwr build")
    sign.add_argument("--out", type=Path, default=None, help="write the run-config TOML here")
    entity = sub.add_parser("entity", help="print a trusted-entities YAML line")
    entity.add_argument("--key-id", required=True)
    entity.add_argument("--public-key", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "entity":
            print(entity_line(args.key_id, args.public_key))
            return 0
        content = fab_bytes(args.app, args.fab)
        signature = sign_fab(content, load_private_key(args.key), args.key_id)
        line = f"{SIGNATURE_KEY} = {json.dumps(signature)}"
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"signed FAB sha256 {hashlib.sha256(content).hexdigest()}", file=sys.stderr)
    if args.out is not None:
        args.out.write_text(line + "\n", encoding="utf-8")
    else:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
