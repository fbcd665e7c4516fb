"""Per-task coordinate-wise median: robust aggregation of each task's skill.

Same rounds, validation and per-task isolation as :class:`PerTaskFedAvg`; only the rule that
combines one task's site skills changes (the hook :meth:`aggregate_skills`): the median of
every coordinate over the task's sites (Flower's FedMedian rule, applied per task). A minority
of poisoned sites (sign-flipped or scaled updates) cannot drag the median far, whereas one such
site shifts a mean arbitrarily. Example counts are not used: a malicious site could inflate them.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO

import numpy as np
from flwr.supercore import log

from server.strategies.per_task_fedavg import PerTaskFedAvg
from unicon_core.federation.aggregation import coordinate_median


class PerTaskMedian(PerTaskFedAvg):
    """Per-task FedAvg with the weighted mean replaced by the coordinate-wise median."""

    def summary(self) -> None:
        """Log the rule, then the per-task layout."""
        log(INFO, "\t├──> Aggregation: coordinate-wise median per task")
        super().summary()

    def aggregate_skills(
        self, task: str, states: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
    ) -> dict[str, np.ndarray]:
        """The coordinate-wise median of the task's validated site skills."""
        return coordinate_median(states)
