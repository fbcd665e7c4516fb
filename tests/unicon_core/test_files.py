"""Atomic writes: owner-only by default, never half-written, no temp file left behind."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from unicon_core.files import atomic_output, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_is_owner_only_also_over_an_open_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o644)

    # Execute
    write_atomic(path, "new")

    # Assert
    assert path.read_text() == "new"
    assert _mode(path) == 0o600
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_write_keeps_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "checkpoint.bin"
    write_atomic(path, b"round 1")

    # Execute
    with pytest.raises(RuntimeError, match="killed"), atomic_output(path) as tmp:
        tmp.write_bytes(b"round 2, half")
        raise RuntimeError("killed mid-write")

    # Assert
    assert path.read_bytes() == b"round 1"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_output_takes_another_mode_and_creates_the_folder(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "weights" / "foundation.safetensors"

    # Execute
    with atomic_output(path, mode=0o644) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".foundation.safetensors-")
        tmp.write_bytes(b"w")

    # Assert
    assert path.read_bytes() == b"w"
    assert _mode(path) == 0o644
