"""Client sampling per round and task: a seeded choice that never starves a task.

Each round, each task trains on ``max(min_sites, ceil(fraction * n))`` of its ``n`` available
sites (all of them when that exceeds ``n``), drawn without replacement by a generator seeded
from ``(seed, round, task)``: the same seed gives the same choice, a resumed run draws the same
sites, and tasks draw independently. Sites not drawn get no message at all (they cost nothing).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    """Fraction of a task's sites drawn per round and the fewest drawn (validated)."""

    fraction: float = 1.0
    min_sites: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if isinstance(self.min_sites, bool) or not isinstance(self.min_sites, int) or (
            self.min_sites < 1
        ):
            raise ValueError(f"min_sites must be an integer >= 1, got {self.min_sites}")

    @property
    def everyone(self) -> bool:
        """Whether every site trains every round (today's behaviour)."""
        return self.fraction >= 1.0


def sample_size(n: int, cfg: SamplingConfig) -> int:
    """How many of ``n`` sites a task draws: ``min(n, max(min_sites, ceil(fraction * n)))``."""
    return min(n, max(cfg.min_sites, math.ceil(cfg.fraction * n - 1e-12)))


def sample_sites(
    sites_by_task: Mapping[str, Sequence[str]],
    configs: Mapping[str, SamplingConfig],
    *,
    seed: int,
    server_round: int,
) -> dict[str, list[str]]:
    """Task -> the sites drawn this round (sorted). A task without a config draws everyone."""
    out: dict[str, list[str]] = {}
    for task, sites in sites_by_task.items():
        pool = sorted(sites)
        cfg = configs.get(task, SamplingConfig())
        k = sample_size(len(pool), cfg)
        if k >= len(pool):
            out[task] = pool
            continue
        rng = np.random.default_rng(
            [int(seed) % 2**32, int(server_round), zlib.crc32(task.encode())]
        )
        chosen = rng.choice(len(pool), size=k, replace=False)
        out[task] = sorted(pool[i] for i in chosen)
    return out
