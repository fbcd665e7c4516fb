"""Retrieval-guided distillation (after arXiv 2512.13072): a per-site memory of past tasks.

Each site keeps prototypes of the foundation features of the past tasks' data it holds (the data
and its prototypes never leave the site). While the foundation is refined, each training sample
retrieves its most similar prototype per feature level; that similarity weights the distillation
of the sample at that level (a sample resembling past data is distilled more), and a level's
weight is its mean similarity over the batch (levels where the new data resembles past data are
held closer to the teacher). Nothing relevant in memory (all similarities <= 0): no KD at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from unicon_core.continual.plugins.base import pooled
from unicon_core.continual.plugins.kd import KDPlugin, Level

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan


def prototypes(features: torch.Tensor, n: int, iterations: int = 10) -> torch.Tensor:
    """``n`` k-means centroids of ``(N, D)`` features (deterministic: evenly spaced start)."""
    f = features.detach().float()
    n = min(n, len(f))
    if n < 1:
        raise ValueError("need at least one feature row and n >= 1")
    centres = f[torch.linspace(0, len(f) - 1, n).round().long()].clone()
    for _ in range(iterations):
        assign = torch.cdist(f, centres).argmin(1)
        for c in range(n):
            members = f[assign == c]
            if len(members):
                centres[c] = members.mean(0)
    return centres


class ReferenceMemory:
    """site -> task -> per-level prototypes ``(M, D_l)`` (kept where the data lives)."""

    def __init__(self, per_task: int = 8) -> None:
        self.per_task = per_task
        self.items: dict[str, dict[str, list[torch.Tensor]]] = {}

    def add(self, site: str, task: str, features: Sequence[torch.Tensor]) -> None:
        """Store prototypes of a site's per-level pooled ``(N, D_l)`` features of ``task``."""
        self.items.setdefault(site, {})[task] = [prototypes(f, self.per_task) for f in features]

    def levels(self, site: str | None, exclude: str | None = None) -> list[torch.Tensor] | None:
        """All prototypes of a site's past tasks per level (``exclude``: the current task);
        ``site=None``: every site's (a consortium memory of prototypes)."""
        held = self.items.values() if site is None else [self.items.get(site, {})]
        tasks = [v for items in held for t, v in items.items() if t != exclude]
        if not tasks:
            return None
        return [torch.cat([t[level] for t in tasks]) for level in range(len(tasks[0]))]


def retrieval_weights(
    query: Sequence[torch.Tensor], memory: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample-and-level weights ``(B, L)`` and per-level weights ``(L,)``.

    ``w[i, l] = max(0, max_m cos(q_il, memory_lm))``; ``a_l = mean_i w[i, l]`` normalised to sum
    1 (all zero when nothing in memory resembles the batch).
    """
    if len(query) != len(memory):
        raise ValueError(f"query has {len(query)} levels, memory {len(memory)}")
    cols = []
    for q, m in zip(query, memory, strict=True):
        sim = F.normalize(q.detach().float(), dim=1) @ F.normalize(m.float(), dim=1).T
        cols.append(sim.max(1).values.clamp_min(0))
    w = torch.stack(cols, 1)
    level = w.mean(0)
    total = level.sum()
    return w, (level / total if total > 0 else level)


class RetrievalKDPlugin(KDPlugin):
    """:class:`KDPlugin` whose per-sample and per-level weights come from retrieval in the
    training site's memory of past tasks (the site comes from ``at_site``).

    ``remember``: after each stage, each joining site stores prototypes of its task's
    per-level features on the refined foundation (the strategy's ``site_levels(plan, ctx)``).
    ``shared``: a site retrieves from every site's prototypes, not only its own (k-means
    centroids, never samples, shared across the consortium like MDS's statistics): in the demo
    every site folder serves one task, so a site alone never remembers a past task.
    """

    name = "retrieval"

    def __init__(
        self, memory: ReferenceMemory | None = None, retention: float = 1.0,
        level: Level = "features", temperature: float = 2.0, remember: bool = False,
        shared: bool = False, per_task: int = 8, enabled: bool = True,
    ) -> None:
        super().__init__(retention, level, temperature, sample_mask=None, enabled=enabled)
        self.memory = memory or ReferenceMemory(per_task)
        self.remember, self.shared = remember, shared
        self._levels: torch.Tensor | None = None

    def on_after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """With ``remember``: store the joining sites' prototypes of their task."""
        if not self.remember:
            return
        levels = getattr(strategy, "site_levels", None)
        if not callable(levels):
            raise ValueError("retrieval: remember needs the strategy's site_levels(plan, ctx)")
        for site, feats in levels(plan, ctx).items():
            self.memory.add(site, plan.site_tasks[site], feats)

    def sample_weights(self, model: nn.Module, teacher: nn.Module, task: str,
                       teacher_features: Any) -> torch.Tensor | None:
        """``(B, L)`` retrieval weights; zeros when the site remembers no past task."""
        query = pooled(teacher_features)
        if self.shared:
            memory = self.memory.levels(None, exclude=task)
        else:
            memory = self.memory.levels(self.site, exclude=task) if self.site else None
        if memory is None:
            self._levels = torch.zeros(len(query))
            return torch.zeros(len(query[0]), len(query))
        w, self._levels = retrieval_weights(query, memory)
        return w

    def layer_weights(self, weights: torch.Tensor | None, levels: int) -> list[float] | None:
        """The per-level weights of the last retrieval."""
        assert self._levels is not None
        return [float(a) for a in self._levels]
