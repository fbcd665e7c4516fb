"""Loss per task kind: cross-entropy, MONAI's DiceCE, and the Cox partial likelihood (torchsurv)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from unicon_core.config import TaskKind, TaskSpec
from unicon_core.keys import BatchKey

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def loss_for(spec: TaskSpec) -> LossFn:
    """A callable ``(model output, batch) -> scalar loss`` for the task."""
    if spec.kind is TaskKind.CLASSIFICATION:
        ce = nn.CrossEntropyLoss()
        return lambda out, batch: ce(out, batch[BatchKey.LABEL.value].long().reshape(-1))
    if spec.kind is TaskKind.SEGMENTATION:
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda out, batch: dice_ce(out, batch[BatchKey.MASK.value].long())
    return cox_loss


def cox_loss(risk: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Efron ties) of log-hazards ``risk``.

    A batch without any event, or with a single subject (its partial likelihood is log 1 = 0),
    carries no information; it gives a zero loss (still connected to the graph) instead of NaN.
    """
    from torchsurv.loss.cox import neg_partial_log_likelihood

    event = batch[BatchKey.EVENT.value].reshape(-1).bool()
    time = batch[BatchKey.TIME.value].reshape(-1).float()
    if not event.any() or event.numel() < 2:
        return risk.sum() * 0.0
    return neg_partial_log_likelihood(risk.reshape(-1), event, time, ties_method="efron")
