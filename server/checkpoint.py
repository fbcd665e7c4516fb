"""Server checkpoints: global skills, round number and resolved config in one file.

One safetensors file per run folder (``checkpoint.safetensors``), rewritten after every round
via a temporary file and ``os.replace``, so a crash leaves either the previous round's checkpoint
or the new one, never a torn file. Metadata (strings) carry the round, the foundation hash, the
resolved config and which sites stopped training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unicon_core.federation.outputs import write_atomic

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = "1"


@dataclass
class Checkpoint:
    """What a resumed run needs: the union of global skills and where the run stood."""

    round: int
    arrays: dict[str, np.ndarray]
    foundation_hash: str
    config: dict[str, Any]
    stopped: dict[str, str] = field(default_factory=dict)


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``run_dir/checkpoint.safetensors`` atomically and return its path."""
    from safetensors.numpy import save

    metadata = {
        "format": FORMAT_VERSION,
        "round": str(ckpt.round),
        "foundation_hash": ckpt.foundation_hash,
        "config": json.dumps(ckpt.config, sort_keys=True, default=str),
        "stopped": json.dumps(ckpt.stopped, sort_keys=True),
    }
    arrays = {k: np.ascontiguousarray(v) for k, v in ckpt.arrays.items()}
    path = run_dir / CHECKPOINT_FILE
    write_atomic(path, save(arrays, metadata=metadata))
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the run folder's checkpoint (``FileNotFoundError`` naming the folder if none)."""
    from safetensors import safe_open

    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from in {run_dir}")
    with safe_open(str(path), framework="numpy") as fh:
        metadata = fh.metadata() or {}
        arrays = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - not a dict
    if metadata.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown checkpoint format {metadata.get('format')!r}")
    return Checkpoint(
        round=int(metadata["round"]),
        arrays=arrays,
        foundation_hash=metadata["foundation_hash"],
        config=json.loads(metadata["config"]),
        stopped=json.loads(metadata.get("stopped", "{}")),
    )
