"""SCAFFOLD's server side (issue #14): one control variate ``c`` per task, the sites' changes
checked and added (the site side is :mod:`unicon_core.training.scaffold`).

``c`` covers the parameters a site trains: the whole skill, or under FFA-LoRA everything but
the frozen A factors. It starts at zero; after each round ``c += (1 / N) sum_i dc_i`` over the
sites whose update was accepted (``N``: every training site of the task, so with everyone
taking part ``c`` stays the mean of the sites' own ``c_i``). Every change a site sends is checked
like an update: the trained keys exactly, their shapes, floating point, finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Arrays = Mapping[str, np.ndarray]


def zero_control(trained: Arrays) -> dict[str, np.ndarray]:
    """A task's first ``c``: zeros shaped like the parameters its sites train."""
    return {k: np.zeros(np.shape(v), np.float32) for k, v in trained.items()}


def control_problem(change: Arrays, trained: Mapping[str, Any]) -> str:
    """Why ``change`` (a control variate or a site's ``c_i_new - c_i``) does not fit
    ``trained`` (arrays or parameters, by key and shape) ('' if it does)."""
    missing, extra = sorted(set(trained) - set(change)), sorted(set(change) - set(trained))
    if missing or extra:
        return (f"control variate change does not cover the trained parameters (missing "
                f"{missing[:4]}, extra {[k[:80] for k in extra[:4]]})")
    for key, value in change.items():
        arr = np.asarray(value)
        if arr.shape != np.shape(trained[key]):
            return f"control {key}: shape {arr.shape} != {np.shape(trained[key])}"
        if arr.dtype.kind != "f":
            return f"control {key}: dtype {arr.dtype.name}, not floating point"
        if not np.isfinite(arr).all():
            return f"control {key}: {int((~np.isfinite(arr)).sum())} non-finite values"
    return ""


def server_update(control: Arrays, changes: Sequence[Arrays], num_sites: int
                  ) -> dict[str, np.ndarray]:
    """The server's new ``c``: ``c + (1 / N) sum_i dc_i`` (``N = num_sites``, all the task's
    training sites; ``changes`` from those that answered this round)."""
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    if len(changes) > num_sites:
        raise ValueError(f"{len(changes)} control changes for a task of {num_sites} sites")
    out = {}
    for key, value in control.items():
        total = np.asarray(value, np.float64).copy()
        for change in changes:
            total += np.asarray(change[key], np.float64) / num_sites
        out[key] = total.astype(np.float32)
    return out
