"""K&G RFT-style distillation from the previous foundation (MedSeqFT, arXiv 2509.06096).

MedSeqFT's Knowledge and Generalization Retention Fine-Tuning refines the model for a new task
through LoRA while distilling from the previous model on the MDS-selected samples, so that task
adaptation is balanced against retention of what the foundation knew. Here that is a loss term:
``retention * KD(student, teacher)`` added to the task loss, where the teacher is a frozen copy
of the model taken before the stage (previous backbone, merged adapters included) and the
student is the model being refined. KD compares the backbone features (``encode``), the task's
outputs, or both, per sample; samples outside the MDS selection get weight 0. Exactly 0 when the
student equals the teacher. The paper's two-phase schedule (full fine-tuning, then the LoRA
distillation phase) is not reproduced: the term is applied wherever the strategy trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from unicon_core.continual.plugins.base import (
    ContinualPlugin,
    frozen_copy,
    pooled,
    strategy_model,
)
from unicon_core.keys import BatchKey

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan

Level = Literal["features", "logits", "both"]
#: ``(B, D)`` pooled teacher features -> bool ``(B,)``: which samples are distilled.
SampleMask = Callable[[torch.Tensor], torch.Tensor]


def as_levels(features: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """An ``encode`` output as a list of levels (tokens: one level)."""
    return [features] if isinstance(features, torch.Tensor) else list(features)


def per_sample_feature_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per sample ``(B,)`` over every non-batch axis."""
    return (student.float() - teacher.float()).pow(2).flatten(1).mean(1)


def per_sample_logit_distance(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Per-sample ``(B,)`` output distillation: Hinton's ``T^2 KL(p_T^teacher || p_T^student)``
    over axis 1 when it has several classes (averaged over any spatial axes), else the squared
    difference (risk scores, one-channel logits)."""
    s, t = student.float(), teacher.float()
    if s.ndim >= 2 and s.shape[1] > 1:
        log_q = F.log_softmax(s / temperature, dim=1)
        log_p = F.log_softmax(t / temperature, dim=1)
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(1)
        return kl.flatten(1).mean(1) * temperature**2 if kl.ndim > 1 else kl * temperature**2
    return (s - t).pow(2).reshape(len(s), -1).mean(1)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum(w v) / B`` (plain mean without weights); zero weights drop samples."""
    if weights is None:
        return values.mean()
    return (values * weights.to(values)).sum() / max(len(values), 1)


def feature_kd(
    student: torch.Tensor | Sequence[torch.Tensor], teacher: torch.Tensor | Sequence[torch.Tensor],
    sample_weights: torch.Tensor | None = None, layer_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Feature distillation over levels: ``sum_l a_l mean_i w_il d(s_il, t_il)``.

    ``sample_weights`` is ``(B,)`` (every level) or ``(B, L)``; ``layer_weights`` defaults to
    uniform (summing to 1).
    """
    s_levels, t_levels = as_levels(student), as_levels(teacher)
    if len(s_levels) != len(t_levels):
        raise ValueError(f"student has {len(s_levels)} levels, teacher {len(t_levels)}")
    n = len(s_levels)
    alphas = list(layer_weights) if layer_weights is not None else [1.0 / n] * n
    total = s_levels[0].new_zeros((), dtype=torch.float32)
    for level, (s, t, a) in enumerate(zip(s_levels, t_levels, alphas, strict=True)):
        w = sample_weights
        if w is not None and w.ndim == 2:
            w = w[:, level]
        total = total + a * weighted_mean(per_sample_feature_distance(s, t), w)
    return total


class KDPlugin(ContinualPlugin):
    """Distil the refined model towards the model as it was before the stage.

    ``retention`` balances retention against adaptation (total loss: task + retention x KD).
    ``sample_mask`` (e.g. an MDS threshold on the teacher's pooled features) restricts KD to
    the selected samples; ``use_mds`` takes it from the run's enabled ``mds`` plugin. The
    teacher is snapshot from the strategy's model before each stage, or set with
    :meth:`set_teacher`.
    """

    name = "kd"

    def __init__(
        self, retention: float = 1.0, level: Level = "features", temperature: float = 2.0,
        sample_mask: SampleMask | None = None, use_mds: bool = False, enabled: bool = True,
    ) -> None:
        super().__init__(enabled)
        self.use_mds = use_mds
        #: the site training now (``at_site``); per-site MDS thresholds and memories use it
        self.site: str | None = None
        if retention < 0:
            raise ValueError(f"retention must be >= 0, got {retention}")
        if level not in ("features", "logits", "both"):
            raise ValueError(f"unknown KD level {level!r}")
        self.retention, self.level, self.temperature = retention, level, temperature
        self.sample_mask = sample_mask
        self.teacher: nn.Module | None = None

    def on_site(self, site: str) -> None:
        """Remember the training site."""
        self.site = site

    def set_teacher(self, model: nn.Module) -> None:
        """Freeze a copy of ``model`` as the teacher."""
        self.teacher = frozen_copy(model)

    def on_before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Snapshot the model as it is before the stage trains (and find the MDS plugin)."""
        if self.use_mds:
            from unicon_core.continual.plugins.mds import MDSPlugin

            found = [p for p in (ctx.plugins if ctx is not None else [])
                     if isinstance(p, MDSPlugin)]
            if not found:
                raise ValueError("kd: use_mds needs the mds plugin enabled in the same run")
            mds = found[0]
            self.sample_mask = lambda f: (mds.mask(self.site, f) if self.site in mds.threshold
                                          else mds.mask_any(f))
        model = strategy_model(strategy, ctx)
        if model is not None:
            self.set_teacher(model)

    def teacher_for(self, model: nn.Module, task: str) -> nn.Module:
        """The teacher, holding ``task`` (a task new this stage is copied in with its start
        skill: the previous backbone with the task's initial adapter, head and stem)."""
        assert self.teacher is not None
        teacher: Any = self.teacher
        if task not in teacher.specs:
            teacher.add_task(model.spec(task))  # type: ignore[operator]
            teacher.load_skill_state_dict(task, model.skill_state_dict(task))  # type: ignore[operator]
            teacher.eval()
        return teacher

    def sample_weights(self, model: nn.Module, teacher: nn.Module, task: str,
                       teacher_features: Any) -> torch.Tensor | None:
        """``(B,)`` weights (1 selected, 0 not), or ``None`` for every sample."""
        if self.sample_mask is None:
            return None
        return self.sample_mask(pooled(teacher_features)[-1]).float()

    def layer_weights(self, weights: torch.Tensor | None, levels: int) -> list[float] | None:
        """Per-level weights (``None``: uniform)."""
        return None

    def compute_loss(
        self, model: nn.Module, task: str, batch: dict[str, Any], outputs: torch.Tensor
    ) -> torch.Tensor | None:
        """``retention x KD`` on this batch (``None`` before a teacher exists)."""
        if self.teacher is None or self.retention == 0:
            return None
        x = batch[BatchKey.INPUT.value]
        teacher = self.teacher_for(model, task).to(x.device)
        with torch.no_grad():
            t_feats = teacher.encode(x, task)  # type: ignore[operator]
            t_out = teacher(x, task) if self.level != "features" else None
        weights = self.sample_weights(model, teacher, task, t_feats)
        loss = outputs.new_zeros((), dtype=torch.float32)
        if self.level in ("features", "both"):
            s_feats = model.encode(x, task)  # type: ignore[operator]
            levels = len(as_levels(s_feats))
            loss = loss + feature_kd(s_feats, t_feats, weights,
                                     self.layer_weights(weights, levels))
        if self.level in ("logits", "both"):
            assert t_out is not None
            w = weights if weights is None or weights.ndim == 1 else weights.mean(1)
            loss = loss + weighted_mean(
                per_sample_logit_distance(outputs, t_out, self.temperature), w)
        return self.retention * loss
