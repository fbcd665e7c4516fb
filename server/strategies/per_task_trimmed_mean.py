"""Per-task trimmed mean: robust aggregation of each task's skill.

Same rounds, validation and per-task isolation as :class:`PerTaskFedAvg`; only the rule that
combines one task's site skills changes (the hook :meth:`aggregate_skills`): for every
coordinate the ``floor(trim_fraction * n)`` largest and smallest values over the task's sites are
dropped and the rest averaged (Flower's FedTrimmedAvg rule, applied per task). With fewer sites
than ``1 / trim_fraction`` nothing is trimmed, which the summary warns about.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.supercore import log

from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
from unicon_core.federation.aggregation import trimmed_mean


class PerTaskTrimmedMean(PerTaskFedAvg):
    """Per-task FedAvg with the weighted mean replaced by a coordinate-wise trimmed mean.

    Parameters
    ----------
    nodes, **kwargs
        As for :class:`PerTaskFedAvg`.
    trim_fraction : float (default: 0.2)
        Fraction cut at each end of every coordinate, in ``[0, 0.5)``.
    """

    def __init__(
        self, nodes: Sequence[SiteNode], *, trim_fraction: float = 0.2, **kwargs: Any
    ) -> None:
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        super().__init__(nodes, **kwargs)
        self.trim_fraction = trim_fraction

    def summary(self) -> None:
        """Log the rule (and tasks too small to trim), then the per-task layout."""
        log(INFO, "\t├──> Aggregation: trimmed mean per task, trim_fraction=%s",
            self.trim_fraction)
        sizes: dict[str, int] = {}
        for node in self.nodes.values():
            sizes[node.task] = sizes.get(node.task, 0) + 1
        for task, n in sorted(sizes.items()):
            if int(self.trim_fraction * n) == 0:
                log(WARNING, "\t│\t task %s has %d site(s): nothing is trimmed (plain mean)",
                    task, n)
        super().summary()

    def aggregate_skills(
        self, task: str, states: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
    ) -> dict[str, np.ndarray]:
        """The coordinate-wise trimmed mean of the task's validated site skills."""
        return trimmed_mean(states, self.trim_fraction)
