"""Loss per task kind: cross-entropy, MONAI's DiceCE, and the Cox partial likelihood (torchsurv)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
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


def logit_prior_shift(counts: Sequence[int]) -> torch.Tensor:
    """``log`` of a site's class prior (add-one smoothed), to add to the logits in training.

    Logit adjustment (Menon et al. 2021; in federated learning FedLC, Zhang et al. 2022):
    cross-entropy on ``logits + log prior`` is minimised by logits that estimate the
    prior-free (balanced) posterior, so sites with different label mixes aim for the same
    logits instead of each pulling the shared skill towards its own prior. Evaluation uses
    the logits as they are; AUC does not depend on a per-class offset anyway.
    """
    values = np.asarray(list(counts), dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or (values < 0).any():
        raise ValueError(f"class counts must be >= 0 for >= 2 classes, got {list(counts)}")
    return torch.as_tensor(np.log((values + 1) / (values.sum() + values.size)),
                           dtype=torch.float32)


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
