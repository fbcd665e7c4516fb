"""Run checkpoints: global skills, round number and resolved config in one file.

A file format of the run folder (like ``results.json``, :mod:`unicon_core.federation.outputs`),
not of Flower: the server writes it after every round, ``unicon export`` and resume read it.

One safetensors file per run folder (``checkpoint.safetensors``), rewritten after every round
via a temporary file and ``os.replace``, so a crash leaves either the previous round's checkpoint
or the new one, never a torn file; it is owner-only (0600, see
:func:`~unicon_core.files.write_atomic`). A damaged file still fails the resume
with an error naming it. Metadata (strings) carry the round, the foundation hash, the
resolved config and which sites stopped training.

The server's own state across rounds (``state``: per-task server optimiser moments, FedSA's
per-site B factors) travels in the same file under the key prefix ``server-state/``, which no
skill key can have (task names are ``[a-z][a-z0-9_]*``); ``arrays`` holds the skills only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unicon_core.files import write_atomic

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = "1"
STATE_PREFIX = "server-state/"


@dataclass
class Checkpoint:
    """What a resumed run needs: the union of global skills and where the run stood."""

    round: int
    arrays: dict[str, np.ndarray]
    foundation_hash: str
    config: dict[str, Any]
    stopped: dict[str, str] = field(default_factory=dict)
    #: the strategy's state (``PerTaskFedAvg.server_state``), empty when it keeps none
    state: dict[str, np.ndarray] = field(default_factory=dict)


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
    clash = sorted(k for k in ckpt.arrays if k.startswith(STATE_PREFIX))
    if clash:
        raise ValueError(f"skill keys {clash} use the reserved prefix {STATE_PREFIX!r}")
    arrays = {k: np.ascontiguousarray(v) for k, v in ckpt.arrays.items()}
    arrays.update({STATE_PREFIX + k: np.ascontiguousarray(v) for k, v in ckpt.state.items()})
    path = run_dir / CHECKPOINT_FILE
    write_atomic(path, save(arrays, metadata=metadata))
    return path


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from; the message names the file and what is wrong."""


_ADVICE = (
    "restore the file from a backup, or start a new run (without resume) to begin at round 1"
)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the run folder's checkpoint (``FileNotFoundError`` naming the folder if none).

    A damaged file (truncated, not safetensors, metadata missing or malformed) raises
    :class:`CheckpointError` naming the file and the field.
    """
    from safetensors import safe_open

    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from in {run_dir}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
            arrays = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # safetensors raises its own error type, and OSError
        raise CheckpointError(
            f"{path}: cannot resume: the checkpoint is truncated or corrupt ({exc}); {_ADVICE}"
        ) from exc
    if metadata.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format {metadata.get('format')!r}")

    def field_of(name: str, parse: Any, default: str | None = None) -> Any:
        text = metadata.get(name, default)
        if text is None:
            raise CheckpointError(
                f"{path}: cannot resume: metadata field {name!r} is missing; {_ADVICE}"
            )
        try:
            return parse(text)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: cannot resume: metadata field {name!r} is malformed ({exc}); {_ADVICE}"
            ) from exc

    state = {k.removeprefix(STATE_PREFIX): v for k, v in arrays.items()
             if k.startswith(STATE_PREFIX)}
    return Checkpoint(
        round=field_of("round", int),
        arrays={k: v for k, v in arrays.items() if not k.startswith(STATE_PREFIX)},
        foundation_hash=field_of("foundation_hash", str),
        config=field_of("config", json.loads),
        stopped=field_of("stopped", json.loads, "{}"),
        state=state,
    )
