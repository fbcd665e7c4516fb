"""Task metrics from kept libraries, in MONAI's protocol: ``update``, ``aggregate``, ``reset``.

Classification: ROC AUC and balanced accuracy (scikit-learn). Segmentation: Dice and HD95
(MONAI), foreground classes only. Survival: Harrell's C-index (scikit-survival). A metric that
is undefined on the data is reported as NaN, never guessed and never an error that stops a
round: AUC with one class present, a C-index without comparable pairs (or without events),
any metric of an empty split, and metrics of non-finite outputs (a diverged model).
"""

from __future__ import annotations

import math
import warnings
from typing import Protocol

import numpy as np
import torch

from unicon_core.config import TaskKind, TaskSpec
from unicon_core.keys import BatchKey

#: The metric each task kind is ranked by (higher is better for all three).
PRIMARY_METRIC: dict[TaskKind, str] = {
    TaskKind.CLASSIFICATION: "auc",
    TaskKind.SEGMENTATION: "dice",
    TaskKind.SURVIVAL: "c_index",
}


class TaskMetric(Protocol):
    """Accumulates a task's predictions batch by batch."""

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None: ...

    def aggregate(self) -> dict[str, float]: ...

    def reset(self) -> None: ...


class ClassificationMetric:
    """ROC AUC (one-vs-rest for several classes) and balanced accuracy."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self._probs.append(torch.softmax(output.detach().float(), dim=1).cpu().numpy())
        self._labels.append(batch[BatchKey.LABEL.value].detach().cpu().numpy().reshape(-1))

    def aggregate(self) -> dict[str, float]:
        from sklearn.metrics import balanced_accuracy_score, roc_auc_score

        if not self._labels:
            return {"auc": math.nan, "balanced_accuracy": math.nan, "num_examples": 0.0}
        probs, labels = np.concatenate(self._probs), np.concatenate(self._labels)
        if not np.isfinite(probs).all():  # a diverged model: no ranking, no argmax to trust
            return {"auc": math.nan, "balanced_accuracy": math.nan,
                    "num_examples": float(len(labels))}
        if len(np.unique(labels)) < 2:
            auc = math.nan
        elif self.num_classes == 2:
            auc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            auc = float(
                roc_auc_score(
                    labels, probs, multi_class="ovr", labels=list(range(self.num_classes))
                )
            )
        bacc = float(balanced_accuracy_score(labels, probs.argmax(axis=1)))
        return {"auc": auc, "balanced_accuracy": bacc, "num_examples": float(len(labels))}


class SegmentationMetric:
    """Mean Dice and 95th-percentile Hausdorff distance over foreground classes (MONAI).

    ``hd95=False`` computes Dice only: HD95's distance transforms cost more than the forward
    pass, and the continual matrix needs only the primary metric.
    """

    def __init__(self, num_classes: int, hd95: bool = True) -> None:
        from monai.metrics import DiceMetric, HausdorffDistanceMetric

        self.num_classes = num_classes
        self._dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        self._hd = (
            HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
            if hd95 else None
        )
        self.reset()

    def reset(self) -> None:
        self._dice.reset()
        if self._hd is not None:
            self._hd.reset()
        self._count = 0

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        from monai.networks.utils import one_hot

        pred = one_hot(output.detach().argmax(dim=1, keepdim=True), self.num_classes)
        target = one_hot(batch[BatchKey.MASK.value].detach().long(), self.num_classes)
        self._dice(pred, target)
        if self._hd is not None:
            with warnings.catch_warnings():  # empty masks are expected; they aggregate as NaN
                warnings.simplefilter("ignore", UserWarning)
                self._hd(pred, target)
        self._count += output.shape[0]

    def aggregate(self) -> dict[str, float]:
        if not self._count:
            out = {"dice": math.nan, "num_examples": 0.0}
            return out if self._hd is None else {**out, "hd95": math.nan}
        dice = self._dice.get_buffer().float()
        with warnings.catch_warnings():  # all-NaN (no foreground anywhere) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out = {"dice": float(np.nanmean(dice.cpu().numpy())),
                   "num_examples": float(self._count)}
            if self._hd is not None:
                hd = self._hd.get_buffer().float().cpu().numpy()
                out["hd95"] = float(np.nanmean(np.where(np.isinf(hd), np.nan, hd)))
            return out


class SurvivalMetric:
    """Harrell's concordance index of the predicted risk against (time, event)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._risk: list[np.ndarray] = []
        self._time: list[np.ndarray] = []
        self._event: list[np.ndarray] = []

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self._risk.append(output.detach().float().cpu().numpy().reshape(-1))
        self._time.append(batch[BatchKey.TIME.value].detach().cpu().numpy().reshape(-1))
        self._event.append(batch[BatchKey.EVENT.value].detach().cpu().numpy().reshape(-1))

    def aggregate(self) -> dict[str, float]:
        from sksurv.exceptions import NoComparablePairException
        from sksurv.metrics import concordance_index_censored

        if not self._risk:
            return {"c_index": math.nan, "num_examples": 0.0}
        risk, time = np.concatenate(self._risk), np.concatenate(self._time)
        event = np.concatenate(self._event).astype(bool)
        cindex = math.nan
        if event.any() and np.isfinite(risk).all():
            try:
                cindex = float(concordance_index_censored(event, time, risk)[0])
            except NoComparablePairException:  # e.g. the only event has the longest time
                cindex = math.nan
        return {"c_index": cindex, "num_examples": float(len(risk))}


def metric_for(spec: TaskSpec, primary_only: bool = False) -> TaskMetric:
    """The metric accumulator of a task kind (``primary_only``: skip costly secondary ones)."""
    if spec.kind is TaskKind.CLASSIFICATION:
        return ClassificationMetric(spec.num_classes)
    if spec.kind is TaskKind.SEGMENTATION:
        return SegmentationMetric(spec.num_classes, hd95=not primary_only)
    return SurvivalMetric()
