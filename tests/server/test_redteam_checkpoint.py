"""Red team, surface "checkpoint": resuming from a damaged checkpoint, and who may read run state.

Each case failed before the fix (see ``docs/security.md``, "Files and outputs"). Outcomes:
``clear_error`` (the error names the checkpoint file and what is wrong) and ``private`` (state
files are created owner-only, 0600; run folders 0700).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from unicon_core.federation.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from unicon_core.federation.outputs import append_jsonl, new_run_dir, write_json

CHECKPOINT = "checkpoint"


def _saved(run_dir: Path) -> Path:
    ckpt = Checkpoint(3, {"t.lora.A": np.ones((4, 2), np.float32)}, "abc123", {"seed": 1})
    return save_checkpoint(run_dir, ckpt)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.redteam(surface=CHECKPOINT, outcome="clear_error")
def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=rf"{CHECKPOINT_FILE}: .*truncated or corrupt"):
        load_checkpoint(tmp_path)


@pytest.mark.redteam(surface=CHECKPOINT, outcome="clear_error")
def test_checkpoint_that_is_not_safetensors_names_the_file(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match=rf"{tmp_path}/{CHECKPOINT_FILE}: "):
        load_checkpoint(tmp_path)


@pytest.mark.redteam(surface=CHECKPOINT, outcome="clear_error")
@pytest.mark.parametrize(
    ("key", "value", "what"),
    [("round", "three", "round"), ("config", "{not json", "config"), ("round", None, "round")],
)
def test_damaged_checkpoint_metadata_names_the_file_and_the_field(
    tmp_path: Path, key: str, value: str | None, what: str
) -> None:
    from safetensors.numpy import save

    metadata = {"format": "1", "round": "3", "foundation_hash": "abc", "config": "{}"}
    if value is None:
        metadata.pop(key)
    else:
        metadata[key] = value
    (tmp_path / CHECKPOINT_FILE).write_bytes(save({"x": np.zeros(2)}, metadata=metadata))
    with pytest.raises(ValueError, match=rf"{CHECKPOINT_FILE}: .*{what}"):
        load_checkpoint(tmp_path)


@pytest.mark.redteam(surface=CHECKPOINT, outcome="private")
def test_round_log_is_created_owner_only(tmp_path: Path) -> None:
    append_jsonl(tmp_path / "rounds.jsonl", {"round": 1})
    assert _mode(tmp_path / "rounds.jsonl") == 0o600


@pytest.mark.redteam(surface=CHECKPOINT, outcome="private")
def test_run_folders_are_owner_only(tmp_path: Path) -> None:
    run = new_run_dir(tmp_path / "runs", "exp")
    assert _mode(run) == 0o700


@pytest.mark.redteam(surface=CHECKPOINT, outcome="private")
def test_a_named_run_folder_the_run_creates_is_owner_only(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from server.federation import resolve_run_dir

    settings = SimpleNamespace(federation=SimpleNamespace(run_dir=str(tmp_path / "runs" / "r1")))
    assert _mode(resolve_run_dir(settings)) == 0o700  # type: ignore[arg-type]


def test_atomic_writes_are_owner_only_and_a_good_checkpoint_loads(tmp_path: Path) -> None:
    """Not a red-team case (already true): checkpoints and JSON replace files as 0600."""
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "results.json").chmod(0o644)
    write_json(tmp_path / "results.json", {"a": 1})
    assert _mode(_saved(tmp_path)) == _mode(tmp_path / "results.json") == 0o600
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt.round, ckpt.foundation_hash, ckpt.config, ckpt.stopped) == (3, "abc123",
                                                                             {"seed": 1}, {})
