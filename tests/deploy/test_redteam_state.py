"""Red team, surface "state": SuperLink/SuperNode state and logs must not be world-readable.

Flower's commands are stubs (as in ``test_scripts.py``) that create the files a real SuperLink
creates (its database and log), so these tests start no server. Each case failed before the
fix (see ``docs/security.md``, "Files and outputs"); outcome ``private``: folders 0700, files
0600, whatever the caller's umask.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
STATE = "state"


@pytest.fixture
def touching_bin(tmp_path: Path) -> Path:
    """A FLWR_BIN whose flower-superlink creates its --database and --log-file, as Flower does,
    and whose flower-supernode writes a file into the current folder (its state folder)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    superlink = folder / "flower-superlink"
    superlink.write_text(
        "#!/usr/bin/env bash\n"
        'while [ $# -gt 0 ]; do case "$1" in --database|--log-file) echo x > "$2"; shift 2;;'
        " *) shift;; esac; done\n"
    )
    supernode = folder / "flower-supernode"
    supernode.write_text('#!/usr/bin/env bash\necho x > "$FLWR_HOME.touched"\n')
    for path in (superlink, supernode):
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run(args: list[str], bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_BIN": str(bin_dir)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False,
                          preexec_fn=lambda: os.umask(0o022))


@pytest.mark.redteam(surface=STATE, outcome="private")
def test_superlink_database_log_and_state_folder_are_owner_only(
    tmp_path: Path, touching_bin: Path
) -> None:
    # Prepare: a state folder left world-readable by an earlier version
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    # Execute
    res = _run([str(DEPLOY / "start_superlink.sh"), "--insecure", "--state", str(state)],
               touching_bin)
    # Assert
    assert res.returncode == 0, res.stderr
    assert _mode(state) == 0o700
    assert _mode(state / "superlink.db") == _mode(state / "superlink.log") == 0o600


@pytest.mark.redteam(surface=STATE, outcome="private")
def test_site_state_folder_is_owner_only(tmp_path: Path, touching_bin: Path) -> None:
    state = tmp_path / "site_state"
    site = tmp_path / "site"
    site.mkdir()
    res = _run([str(DEPLOY / "start_site.sh"), "--insecure", "--superlink", "127.0.0.1:1",
                "--site-dir", str(site), "--state-dir", str(state), "--executor", "flower"],
               touching_bin)
    assert res.returncode == 0, res.stderr
    assert _mode(state) == 0o700
    assert _mode(state / "flwr_home.touched") == 0o600


@pytest.mark.redteam(surface=STATE, outcome="private")
def test_loopback_logs_are_owner_only(tmp_path: Path) -> None:
    from unicon_flower.loopback import LoopbackFederation

    loop = LoopbackFederation(tmp_path / "loop", sites={})
    proc = loop.start("echo", ["true"])
    proc.wait(timeout=30)
    assert _mode(tmp_path / "loop" / "echo.log") == 0o600
    assert _mode(tmp_path / "loop") == 0o700
