"""Local training and evaluation of one task's skill (the backbone stays frozen)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from unicon_core.config import TrainConfig
from unicon_core.data.epochs import set_epoch
from unicon_core.device import autocast, module_device, resolve_device, to_device
from unicon_core.keys import BatchKey
from unicon_core.metrics import metric_for
from unicon_core.model import UniconModel
from unicon_core.training.losses import loss_for
from unicon_core.training.optimizer_state import export_state, import_state, parameter_names
from unicon_core.training.scaffold import ControlVariates

#: Optional hook applied after the optimiser is built, e.g. opacus ``make_private``.
MakePrivate = Callable[
    [nn.Module, torch.optim.Optimizer, DataLoader],
    tuple[nn.Module, torch.optim.Optimizer, DataLoader],
]


@dataclass
class TrainResult:
    """What a local training run did; ``num_examples`` counts examples, not batches."""

    num_examples: int
    steps: int
    loss: float
    #: The optimiser's per-parameter state after the run (:mod:`optimizer_state` arrays;
    #: only with ``cfg.keep_optimizer_state``: a full fine-tune's moments are large).
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)
    #: Why a given ``optimizer_state`` was not resumed ("" when resumed or none was given).
    state_refused: str = ""


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    batch_sampler: Sampler[list[int]] | None = None,
) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed`` (workers and pinned memory for a
    GPU site; ``pin_memory`` only matters when batches go to CUDA). ``batch_sampler`` (a
    research batch order, e.g. :mod:`~unicon_core.data.site_batches`) draws the batches
    instead: it is seeded itself, and ``batch_size`` must be its own."""
    pin = pin_memory and torch.cuda.is_available()
    if batch_sampler is not None:
        own = getattr(batch_sampler, "batch_size", batch_size)
        if own != batch_size:
            raise ValueError(f"batch_sampler draws batches of {own}, not {batch_size}")
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                          pin_memory=pin, persistent_workers=num_workers > 0)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
    )


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """Optimiser named in the config (parameters or parameter groups; cfg.lr is the default)."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant or cosine decay to zero over ``total_steps``."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "cosine":
            span = max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_task(
    model: UniconModel,
    task: str,
    loader: DataLoader,
    cfg: TrainConfig,
    *,
    make_private: MakePrivate | None = None,
    params: list[nn.Parameter] | list[dict[str, Any]] | None = None,
    regulariser: Callable[[], torch.Tensor] | None = None,
    optimizer_state: Mapping[str, np.ndarray] | None = None,
    control: ControlVariates | None = None,
    logit_shift: torch.Tensor | None = None,
    first_epoch: int = 0,
) -> TrainResult:
    """Train ``task``'s skill on ``loader``; everything outside the skill stays frozen.

    ``params`` overrides what is trained (the adaptation-strategy baselines use it): parameters,
    or torch parameter groups (``{"params": [...], "lr": ...}``) for per-group learning rates;
    by default exactly the task's skill. Runs on ``cfg.device`` (the model is moved there and
    stays), with bf16 autocast on CUDA when ``cfg.amp``. Deterministic on the CPU under
    ``cfg.seed`` (global RNG state is restored). ``regulariser`` (e.g. FedProx's proximal
    term) is added to every step's loss; the reported loss is the task's loss alone.
    ``optimizer_state`` (a previous run's ``TrainResult.optimizer_state``, same parameters)
    resumes the optimiser's moments instead of starting them at zero. ``control`` (SCAFFOLD)
    corrects every step's gradients and records them (not with ``make_private``).
    ``logit_shift`` (one value per class, :func:`~unicon_core.training.losses.logit_prior_shift`)
    is added to a classification task's logits in its training loss only.
    ``first_epoch`` numbers the first pass over ``loader`` for seeded augmentation (a dataset's
    ``set_epoch``): a federated site passes one that differs every round, or each round would
    draw the same augmentation of every item again.
    """
    from tqdm.auto import tqdm

    spec = model.spec(task)
    device = resolve_device(cfg.device)
    model.to(device)
    if params is None:
        optimizer = build_optimizer(model.train_skill(task), cfg)
    else:
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        model.train_only(task, [p for g in groups for p in g["params"]])  # type: ignore[index]
        optimizer = build_optimizer(groups, cfg)  # type: ignore[arg-type]
    names = parameter_names(model)
    refused = import_state(optimizer, optimizer_state, names) if optimizer_state else ""
    module: nn.Module = model
    if make_private is not None and control is not None:
        raise ValueError("SCAFFOLD control variates are not combined with DP-SGD: the mean of "
                         "unclipped, un-noised gradients would leave the site")
    if make_private is not None:
        module, optimizer, loader = make_private(model, optimizer, loader)
    per_epoch = len(loader)
    total = (
        per_epoch * cfg.epochs
        if cfg.max_steps is None
        else min(per_epoch * cfg.epochs, cfg.max_steps)
    )
    schedule = build_schedule(optimizer, cfg, total)
    loss_fn = loss_for(spec)
    if logit_shift is not None:
        if spec.kind.value != "classification" or tuple(logit_shift.shape) != (
                spec.num_classes,):
            raise ValueError(f"logit_shift of shape {tuple(logit_shift.shape)} does not fit "
                             f"task {task!r} ({spec.kind.value}, {spec.num_classes} classes)")
        base_loss, shift = loss_fn, logit_shift.to(device)

        def loss_fn(out: torch.Tensor, batch: dict) -> torch.Tensor:
            return base_loss(out + shift, batch)
    steps, examples, loss_sum = 0, 0, 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        module.train()
        bar = tqdm(total=total, desc=f"train {task}", disable=not cfg.progress, leave=False)
        epoch = first_epoch
        while steps < total:
            set_epoch(loader.dataset, epoch)  # seeded augmentation differs per epoch
            epoch += 1
            for batch in loader:
                batch = to_device(batch, device)
                x = batch[BatchKey.INPUT.value]
                with autocast(device, cfg.amp):
                    out = module(x, task)
                # Opacus' Poisson sampling can draw an empty batch: a zero loss still makes the
                # optimiser step, which under DP is the noise-only step the accountant counts.
                loss = loss_fn(out.float(), batch) if len(x) else out.sum() * 0.0
                optimizer.zero_grad(set_to_none=True)
                (loss if regulariser is None else loss + regulariser()).backward()
                if control is not None:
                    control.correct()
                optimizer.step()
                schedule.step()
                steps += 1
                examples += len(x)
                value = float(loss.detach())
                loss_sum += value * len(x)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                if steps >= total:
                    break
        bar.close()
    model.eval()
    model.freeze_all()
    return TrainResult(num_examples=examples, steps=steps, loss=loss_sum / max(examples, 1),
                       optimizer_state=export_state(optimizer, names) if cfg.keep_optimizer_state
                       else {}, state_refused=refused)


@torch.no_grad()
def evaluate_task(
    model: UniconModel, task: str, loader: Iterable[dict], primary_only: bool = False
) -> dict[str, float]:
    """Metrics of ``task`` on ``loader`` (held-out data), plus ``num_examples``.

    ``primary_only`` skips secondary metrics that cost more than the forward pass (HD95).
    """
    metric = metric_for(model.spec(task), primary_only=primary_only)
    was_training = model.training
    model.eval()
    device = module_device(model)
    for batch in loader:
        x = batch[BatchKey.INPUT.value].to(device)
        with autocast(device):
            out = model(x, task)
        metric.update(out.float().cpu(), batch)
    model.train(was_training)
    return metric.aggregate()
