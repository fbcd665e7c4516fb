"""Held-out evaluation of a task at its sites, as the continual strategies measure it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from unicon_core.metrics import PRIMARY_METRIC
from unicon_core.model import UniconModel


@dataclass
class EvalSite:
    """Where a task is evaluated: a site's held-out split, optionally through an input view."""

    name: str
    data: Dataset


def evaluate_sites(
    model: UniconModel, task: str, sites: Sequence[EvalSite], batch_size: int
) -> dict[str, tuple[float, int]]:
    """``site -> (primary metric, examples)`` on each site's held-out data."""
    from unicon_core.training import evaluate_task, make_loader

    metric = PRIMARY_METRIC[model.spec(task).kind]
    out = {}
    for site in sites:
        result = evaluate_task(model, task, make_loader(site.data, batch_size, shuffle=False),
                               primary_only=True)
        out[site.name] = (float(result[metric]), int(result["num_examples"]))
    return out


def weighted_value(per_site: dict[str, tuple[float, int]]) -> float:
    """Example-weighted mean of the finite per-site values (NaN if none)."""
    pairs = [(v, n) for v, n in per_site.values() if np.isfinite(v) and n > 0]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else float("nan")
