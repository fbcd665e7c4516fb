"""The site's local objective under issue-#14 instructions: FFA-LoRA freezes every A factor,
FedProx pulls the skill towards the global one (the training loop's ``regulariser`` hook)."""

from __future__ import annotations

import pytest
import torch

from client.site_runner import local_objective
from tests.unicon_core.training.test_learning import TINY, DictDataset, _squares
from unicon_core.config import TaskSpec, TrainConfig
from unicon_core.federation.lora_rules import a_keys
from unicon_core.model import UniconModel
from unicon_core.training import make_loader, train_task


def _trained(options: dict, steps: int = 4) -> tuple[dict, dict]:
    spec = TaskSpec(name="cls", kind="classification", modality="mri", channels=1,
                    spatial_dims=2, input_size=[16, 16], patch_size=4, num_classes=2)
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    before = {k: v.clone() for k, v in model.skill_state_dict("cls").items()}
    x, _, y = _squares(16, (16, 16), seed=0)
    params, regulariser = local_objective(model, "cls", options, private=False)
    cfg = TrainConfig(max_steps=steps, batch_size=8, lr=0.05, optimizer="sgd", momentum=0.0,
                      progress=False)
    train_task(model, "cls", make_loader(DictDataset(input=x, label=y), 8, shuffle=False), cfg,
               params=params, regulariser=regulariser)
    return before, model.skill_state_dict("cls")


def _drift(before: dict, after: dict) -> float:
    return float(sum(((after[k] - before[k]) ** 2).sum() for k in before))


def test_ffa_trains_everything_but_a() -> None:
    before, after = _trained({"lora-rule": "ffa"})
    frozen = a_keys(list(before))
    assert frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in frozen)


def test_fedprox_pulls_towards_the_global_skill() -> None:
    free = _drift(*_trained({}))
    prox = _drift(*_trained({"prox-mu": 5.0}))
    assert 0 < prox < free


def test_defaults_are_todays_objective() -> None:
    model = UniconModel(TINY, seed=0)
    assert local_objective(model, "cls", {}, private=False) == (None, None)


def test_fedprox_is_not_combined_with_dp() -> None:
    spec = TaskSpec(name="cls", kind="classification", modality="mri", channels=1,
                    spatial_dims=2, input_size=[16, 16], patch_size=4, num_classes=2)
    model = UniconModel(TINY, seed=0)
    model.add_task(spec)
    with pytest.raises(ValueError, match="DP"):
        local_objective(model, "cls", {"prox-mu": 0.1}, private=True)
