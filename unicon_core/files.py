"""Atomic file writes: a file is either its old content or its new one, never half-written.

Every state file the project rewrites (run outputs, the server checkpoint, a site's privacy
ledger, federated summaries, foundation checkpoints) goes through :func:`atomic_output`: the
content is written to a temporary file in the same folder (``.<name>-<random>.tmp``, the pattern
a resumed server clears), flushed to disk and renamed over the target with ``os.replace``.
State files are owner-only (0600) unless a caller asks for another mode.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Permissions of state files (owner only): ``mkstemp`` creates files so, whatever the umask.
PRIVATE_FILE_MODE = 0o600


@contextmanager
def atomic_output(path: Path | str, *, mode: int = PRIVATE_FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``.

    The temporary file lies in ``path``'s folder (so the rename is atomic), gets ``mode`` and is
    fsynced before the rename, the folder after it. On an error it is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode != PRIVATE_FILE_MODE:
            tmp.chmod(mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: Path | str, data: bytes | str, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically, owner-only by default.

    The mode holds also when the write replaces a more open file.
    """
    with atomic_output(path, mode=mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
