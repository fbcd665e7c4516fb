"""What each adaptation strategy trains, on a tiny model."""

from __future__ import annotations

import pytest

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.continual.baselines import ADAPTATION_STRATEGIES
from unicon_core.continual.baselines.discriminative_lr import DECAY
from unicon_core.continual.baselines.gradual_unfreezing import unfrozen_from
from unicon_core.continual.fedloop import backbone_names, head_names, skill_names, stem_names
from unicon_core.model import UniconModel

TASK = "cls"


@pytest.fixture
def model() -> UniconModel:
    m = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    m.add_task(TaskSpec(name=TASK, input_size=[16, 16], patch_size=8))
    return m


def test_each_strategy_trains_its_parameter_set(model: UniconModel) -> None:
    # Execute
    plans = {k: set(f(model, TASK, 0, 3).names) for k, f in ADAPTATION_STRATEGIES.items()}
    # Assert
    full = set(stem_names(model, TASK) + backbone_names(model) + head_names(model, TASK))
    assert plans["linear_probe"] == set(head_names(model, TASK))
    assert plans["lora"] == set(skill_names(model, TASK))
    assert plans["full_finetune"] == full
    assert plans["discriminative_lr"] == full
    assert plans["gradual_unfreezing"] < full
    assert set(head_names(model, TASK)) <= plans["gradual_unfreezing"]


def test_gradual_unfreezing_reaches_everything_by_the_last_round(model: UniconModel) -> None:
    # Execute
    sizes = [len(ADAPTATION_STRATEGIES["gradual_unfreezing"](model, TASK, r, 4).names)
             for r in range(4)]
    # Assert
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert sizes[-1] == len(ADAPTATION_STRATEGIES["full_finetune"](model, TASK, 0, 4).names)
    assert [unfrozen_from(r, 4, 3) for r in range(4)] == [3, 2, 1, 0]
    assert unfrozen_from(0, 1, 3) == 0


def test_discriminative_lr_decays_with_depth(model: UniconModel) -> None:
    # Execute
    plan = ADAPTATION_STRATEGIES["discriminative_lr"](model, TASK, 0, 3)
    # Assert
    head = head_names(model, TASK)[0]
    stem = stem_names(model, TASK)[0]
    block0 = next(n for n in backbone_names(model) if ".blocks.0." in n)
    assert plan.lr_scale[head] == 1.0
    assert plan.lr_scale[block0] == pytest.approx(DECAY ** 2)
    assert plan.lr_scale[stem] == pytest.approx(DECAY ** 3)
