"""Plans: what a site trains and what travels per task, in one federated round.

A plan names a parameter set of a task's model. ``skill`` is the product's default (the task's
LoRA adapter, head and own stem, under the skill's portable keys): exactly what a site sends
today. Every other plan is a research plan (baselines and studies): it moves more than a skill
off a site, so a site only runs it when its own node config allows it (see the Flower layer).

Keys on the wire ("plan keys"): a skill tensor keeps its skill key (``adapter.*``, ``head.*``,
``stem.*``); any other parameter travels under its ``named_parameters`` name (``backbone.*``,
``stems.*`` for a shared foundation stem; peft's ``.base_layer`` left out). What travels is the
same every round (the whole plan set); what *trains* may change per round (:func:`round_plan`:
gradual unfreezing) and may carry a learning-rate factor per key (discriminative learning
rates).

Pure model logic: no Flower, no server or client code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from unicon_core.model import UniconModel


class Plan(StrEnum):
    """The parameter sets a federated run can train and exchange."""

    SKILL = "skill"  # the task's skill (adapter + head + own stem): the product's default
    HEAD = "head"  # the head only (linear probing)
    ADAPTER = "adapter"  # the LoRA adapter only (what a shared adapter moves)
    STEM = "stem"  # the stem the task reads through
    BACKBONE = "backbone"  # the backbone's own weights (no LoRA)
    FULL = "full"  # backbone + skill: full-model FedAvg
    FULL_FINETUNE = "full_finetune"  # stem + backbone + head, no adapter
    GRADUAL_UNFREEZING = "gradual_unfreezing"  # full_finetune, unfrozen from the top per round
    DISCRIMINATIVE_LR = "discriminative_lr"  # full_finetune, lr decaying with depth


#: Every plan name (``federation.plan`` is checked against these).
PLAN_NAMES: tuple[str, ...] = tuple(p.value for p in Plan)
#: Key prefixes of research plans beyond a skill's (``adapter.``/``head.``/``stem.``): the
#: main backbone, a modality's own backbone, shared stems.
RESEARCH_PREFIXES = ("backbone.", "modality_backbones.", "stems.")
#: Learning-rate factor per layer below the top in ``discriminative_lr`` (ULMFiT: 1/2.6).
DECAY = 1 / 2.6


@dataclass(frozen=True)
class RoundPlan:
    """What trains in one round: plan keys, and an optional lr factor per key (default 1)."""

    keys: tuple[str, ...]
    lr_scale: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a round plan needs at least one parameter to train")


def as_plan(name: str | Plan) -> Plan:
    """The plan called ``name`` (a ``ValueError`` listing the plans otherwise)."""
    try:
        return Plan(str(name))
    except ValueError:
        raise ValueError(f"unknown plan {name!r}; plans: {list(PLAN_NAMES)}") from None


def backbone_prefix(model: UniconModel, task: str | None = None) -> str:
    """Parameter-name prefix of the backbone serving ``task`` (the main backbone for ``None``
    or a task on slot ""; ``modality_backbones.<slot>.`` for a modality's own network)."""
    slot = "" if task is None else model.task_slot[model.spec(task).name]
    return "backbone." if slot == "" else f"modality_backbones.{slot}."


def backbone_names(model: UniconModel, task: str | None = None) -> list[str]:
    """``named_parameters`` names of the own (non-LoRA) weights of the backbone that serves
    ``task`` (the main backbone when ``None``): a plan that trains "the backbone" trains the
    network the task runs on, also when its modality has a backbone of its own."""
    prefix = backbone_prefix(model, task)
    return [n for n, _ in model.named_parameters()
            if n.startswith(prefix) and ".lora_" not in n]


def plain(name: str) -> str:
    """A parameter name without peft's ``.base_layer`` (the same weight whether or not some
    task put a LoRA adapter on its layer)."""
    return name.replace(".base_layer", "")


def plan_parameters(model: UniconModel, task: str, plan: str | Plan) -> dict[str, nn.Parameter]:
    """Plan key -> parameter of everything ``plan`` exchanges for ``task`` (model order)."""
    plan = as_plan(plan)
    skill = model.skill_parameters(task)
    if plan is Plan.SKILL:
        return skill
    named = dict(model.named_parameters())
    stem_prefix = f"stems.{model.task_stem[task]}."
    own_stem = {k: p for k, p in skill.items() if k.startswith("stem.")}
    stem = own_stem or {n: p for n, p in named.items() if n.startswith(stem_prefix)}
    backbone = {plain(n): named[n] for n in backbone_names(model, task)}
    head = {k: p for k, p in skill.items() if k.startswith("head.")}
    if plan is Plan.HEAD:
        return head
    if plan is Plan.ADAPTER:
        return {k: p for k, p in skill.items() if k.startswith("adapter.")}
    if plan is Plan.STEM:
        return stem
    if plan is Plan.BACKBONE:
        return backbone
    if plan is Plan.FULL:
        return {**backbone, **skill}
    return {**stem, **backbone, **head}  # full fine-tuning and its two schedules


def plan_keys(model: UniconModel, task: str, plan: str | Plan) -> list[str]:
    """The plan keys of ``task`` (what travels every round)."""
    return list(plan_parameters(model, task, plan))


def plan_state(model: UniconModel, task: str, plan: str | Plan) -> dict[str, torch.Tensor]:
    """Copies (on the CPU) of what ``plan`` exchanges; the skill's own copy for ``skill``."""
    if as_plan(plan) is Plan.SKILL:
        return model.skill_state_dict(task)
    return {k: p.detach().cpu().clone() for k, p in plan_parameters(model, task, plan).items()}


def load_plan_state(
    model: UniconModel, task: str, plan: str | Plan, state: Mapping[str, Any]
) -> None:
    """Load ``state`` (tensors or arrays) into ``plan``'s parameters; keys and shapes must match
    exactly (a ``ValueError`` naming them; nothing loads on error)."""
    import numpy as np
    import torch

    if as_plan(plan) is Plan.SKILL:
        model.load_skill_state_dict(task, state)
        return
    params = plan_parameters(model, task, plan)
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    problems = [f"missing {missing[:5]}"] if missing else []
    problems += [f"unexpected {extra[:5]}"] if extra else []
    tensors = {}
    for key in sorted(set(params) & set(state)):
        value = state[key]
        tensor = torch.from_numpy(np.array(value)) if not isinstance(value, torch.Tensor) \
            else value.detach()
        if tuple(tensor.shape) != tuple(params[key].shape):
            problems.append(f"{key}: shape {tuple(tensor.shape)} != {tuple(params[key].shape)}")
        tensors[key] = tensor
    if problems:
        raise ValueError(f"plan {str(plan)!r} state for task {task!r} does not fit: "
                         + "; ".join(problems))
    with torch.no_grad():
        for key, tensor in tensors.items():
            params[key].copy_(tensor.to(params[key].device, params[key].dtype))


def as_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state as numpy arrays (what the federation's initial skills take)."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


# ---------------------------------------------------------------------------- depth
def num_layers(model: UniconModel, task: str | None = None) -> int:
    """Blocks of the backbone serving ``task`` (the main backbone when ``None``)."""
    core = model.core_backbone if task is None else model.backbone_for(task)
    return len(core.block_names())


def depth(key: str, model: UniconModel, task: str | None = None) -> int:
    """Layer index of a plan key: 0 the stem (or a CNN's first convolution), 1..L the backbone's
    blocks in order, L+1 the top (a transformer's final norm and the head); the backbone is
    the one serving ``task`` (the main backbone when ``None``)."""
    core = model.core_backbone if task is None else model.backbone_for(task)
    top = len(core.block_names()) + 1
    if key.startswith(("stems.", "stem.")):
        return 0
    if key.startswith(("backbone.", "modality_backbones.", "adapter.")):
        for index, block in enumerate(core.block_names()):
            if f".{block}." in key:
                return index + 1
        # outside every block: a CNN's input convolution (bottom) or a transformer's final norm
        return 0 if core.input_kind != "tokens" else top
    return top


def unfrozen_from(r: int, rounds: int, top: int) -> int:
    """Lowest depth trained in round ``r`` (0-based) of ``rounds`` under gradual unfreezing;
    ``top`` is the head's depth. The first round trains the top only, the last everything."""
    if rounds == 1:
        return 0
    return max(0, top - math.floor(r * top / (rounds - 1)))


def round_plan(model: UniconModel, task: str, plan: str | Plan, r: int, rounds: int) -> RoundPlan:
    """What trains in round ``r`` (0-based) of ``rounds``: the whole plan set, except under
    gradual unfreezing (the depths from the top down to this round's lowest) and with an lr
    factor per depth under discriminative learning rates (``lr * DECAY ** (top - depth)``)."""
    plan = as_plan(plan)
    keys = plan_keys(model, task, plan)
    top = num_layers(model, task) + 1
    if plan is Plan.GRADUAL_UNFREEZING:
        lowest = unfrozen_from(r, rounds, top)
        return RoundPlan(tuple(k for k in keys if depth(k, model, task) >= lowest))
    if plan is Plan.DISCRIMINATIVE_LR:
        return RoundPlan(tuple(keys), {k: DECAY ** (top - depth(k, model, task)) for k in keys})
    return RoundPlan(tuple(keys))


def lr_groups(
    params: Mapping[str, torch.nn.Parameter], scales: Mapping[str, float], lr: float
) -> list[dict[str, Any]]:
    """Parameter groups with ``lr x scale`` per parameter name (scale 1 when not given)."""
    by_scale: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in params.items():
        by_scale.setdefault(scales.get(name, 1.0), []).append(param)
    return [{"params": ps, "lr": lr * s} for s, ps in sorted(by_scale.items())]


def trained_parameters(
    model: UniconModel, task: str, plan: str | Plan, r: int, rounds: int, lr: float,
    backbone_lr_scale: float = 1.0,
) -> list[Any]:
    """What ``train_task(params=...)`` takes for round ``r``: parameters, or lr groups;
    backbone weights (main or a modality's own) at ``lr x backbone_lr_scale`` on top of the
    plan's own per-depth factors."""
    step = round_plan(model, task, plan, r, rounds)
    params = plan_parameters(model, task, plan)
    chosen = {k: params[k] for k in step.keys}
    scales = dict(step.lr_scale)
    if backbone_lr_scale != 1.0:
        for key in chosen:
            if key.startswith(("backbone.", "modality_backbones.")):
                scales[key] = scales.get(key, 1.0) * backbone_lr_scale
    return lr_groups(chosen, scales, lr) if scales else list(chosen.values())
