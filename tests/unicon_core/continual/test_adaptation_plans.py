"""What each plan (adaptation strategy) exchanges and trains, on a tiny model."""

from __future__ import annotations

import pytest
import torch

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.continual.baselines import ADAPTATION_STRATEGIES
from unicon_core.model import UniconModel
from unicon_core.training.plans import (
    DECAY,
    Plan,
    as_plan,
    backbone_names,
    load_plan_state,
    plan_keys,
    plan_state,
    round_plan,
    trained_parameters,
    unfrozen_from,
)

TASK = "cls"


@pytest.fixture
def model() -> UniconModel:
    m = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    m.add_task(TaskSpec(name=TASK, input_size=[16, 16], patch_size=8))
    return m


def _prefixed(model: UniconModel, prefix: str) -> set[str]:
    return {k for k in model.skill_keys(TASK) if k.startswith(prefix)}


def test_each_plan_exchanges_its_parameter_set(model: UniconModel) -> None:
    # Execute
    keys = {p: set(plan_keys(model, TASK, p)) for p in Plan}
    # Assert
    backbone = {n.replace(".base_layer", "") for n in backbone_names(model)}
    head, stem, adapter = (_prefixed(model, p) for p in ("head.", "stem.", "adapter."))
    assert keys[Plan.SKILL] == model.skill_keys(TASK) == head | stem | adapter
    assert keys[Plan.HEAD] == head and keys[Plan.ADAPTER] == adapter and keys[Plan.STEM] == stem
    assert keys[Plan.BACKBONE] == backbone and not any(".lora_" in k for k in backbone)
    assert keys[Plan.FULL] == backbone | model.skill_keys(TASK)
    for p in (Plan.FULL_FINETUNE, Plan.GRADUAL_UNFREEZING, Plan.DISCRIMINATIVE_LR):
        assert keys[p] == stem | backbone | head
    assert {k: v.value for k, v in ADAPTATION_STRATEGIES.items()} == {
        "linear_probe": "head", "full_finetune": "full_finetune", "lora": "skill",
        "gradual_unfreezing": "gradual_unfreezing", "discriminative_lr": "discriminative_lr"}
    with pytest.raises(ValueError, match="unknown plan 'everything'"):
        as_plan("everything")


def test_skill_plan_state_is_the_skill_state_dict(model: UniconModel) -> None:
    # Execute
    state = plan_state(model, TASK, Plan.SKILL)
    # Assert: today's bytes, key for key
    expected = model.skill_state_dict(TASK)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_plan_state_round_trips_and_refuses_a_wrong_layout(model: UniconModel) -> None:
    # Prepare: another model (other seed) gets this one's full state
    other = UniconModel(model.cfg, seed=1)
    other.add_task(model.spec(TASK))
    state = plan_state(model, TASK, Plan.FULL)
    # Execute
    load_plan_state(other, TASK, Plan.FULL, {k: v.numpy() for k, v in state.items()})
    # Assert
    again = plan_state(other, TASK, Plan.FULL)
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert other.foundation_hash == model.foundation_hash
    bad = dict(state)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="missing"):
        load_plan_state(other, TASK, Plan.FULL, bad)


def test_gradual_unfreezing_reaches_everything_by_the_last_round(model: UniconModel) -> None:
    # Execute
    sizes = [len(round_plan(model, TASK, Plan.GRADUAL_UNFREEZING, r, 4).keys) for r in range(4)]
    # Assert
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert sizes[-1] == len(plan_keys(model, TASK, Plan.FULL_FINETUNE))
    assert set(round_plan(model, TASK, Plan.GRADUAL_UNFREEZING, 0, 4).keys) == _prefixed(
        model, "head.") | {k for k in plan_keys(model, TASK, Plan.BACKBONE) if "norm" in k
                           and ".blocks." not in k}
    assert [unfrozen_from(r, 4, 3) for r in range(4)] == [3, 2, 1, 0]
    assert unfrozen_from(0, 1, 3) == 0


def test_discriminative_lr_decays_with_depth(model: UniconModel) -> None:
    # Execute
    plan = round_plan(model, TASK, Plan.DISCRIMINATIVE_LR, 0, 3)
    groups = trained_parameters(model, TASK, Plan.DISCRIMINATIVE_LR, 0, 3, lr=0.1)
    # Assert
    head = sorted(_prefixed(model, "head."))[0]
    stem = sorted(_prefixed(model, "stem."))[0]
    block0 = next(k for k in plan.keys if ".blocks.0." in k)
    assert plan.lr_scale[head] == 1.0
    assert plan.lr_scale[block0] == pytest.approx(DECAY ** 2)
    assert plan.lr_scale[stem] == pytest.approx(DECAY ** 3)
    assert sorted(g["lr"] for g in groups) == pytest.approx(
        sorted(0.1 * DECAY ** d for d in (3, 2, 1, 0)))
    assert sum(len(g["params"]) for g in groups) == len(plan.keys)


def test_backbone_plans_train_the_network_the_task_runs_on() -> None:
    """A task whose modality has a backbone of its own: every backbone plan exchanges and
    trains that network (not the main backbone it never runs on), with its own depths."""
    # Prepare: the transformer for MRI, a tiny I3ResNet for CT
    cnn = {"name": "i3resnet", "options": {"blocks": [1, 1, 1, 1], "width": 8}}
    model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
                                       modalities={"ct": cnn}), seed=0)
    model.add_task(TaskSpec(name=TASK, input_size=[16, 16], patch_size=8))
    model.add_task(TaskSpec(name="ct_cls", modality="ct", spatial_dims=3,
                            input_size=[16, 16, 16], patch_size=8))
    main = set(backbone_names(model, TASK))
    ct = set(backbone_names(model, "ct_cls"))
    # Assert: disjoint networks; the default is the main backbone
    assert main == set(backbone_names(model)) and all(n.startswith("backbone.") for n in main)
    assert ct and all(n.startswith("modality_backbones.ct.") for n in ct) and not main & ct
    for plan in (Plan.BACKBONE, Plan.FULL, Plan.FULL_FINETUNE):
        keys = set(plan_keys(model, "ct_cls", plan))
        assert {n.replace(".base_layer", "") for n in ct} <= keys
        assert not any(k.startswith("backbone.") for k in keys)
    # depths follow the CNN's blocks: gradual unfreezing opens its input conv last
    top = len(model.backbone_for("ct_cls").block_names()) + 1
    first = round_plan(model, "ct_cls", Plan.GRADUAL_UNFREEZING, 0, 3).keys
    last = round_plan(model, "ct_cls", Plan.GRADUAL_UNFREEZING, 2, 3).keys
    def stem_conv(k: str) -> bool:  # the CNN's input convolution (names may carry peft's wrap)
        return k.startswith("modality_backbones.ct.") and ".conv1." in k and ".layer" not in k

    assert not any(stem_conv(k) for k in first) and any(stem_conv(k) for k in last)
    assert any(".layer4." in k for k in
               round_plan(model, "ct_cls", Plan.GRADUAL_UNFREEZING, 1, 3).keys)
    scales = round_plan(model, "ct_cls", Plan.DISCRIMINATIVE_LR, 0, 1).lr_scale
    conv1 = next(k for k in scales if stem_conv(k))
    assert scales[conv1] == pytest.approx(DECAY ** top)
    # training the CT task's full plan moves the CNN and leaves the main backbone bit-identical
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 1, 16, 16, 16)
    params = trained_parameters(model, "ct_cls", Plan.FULL, 0, 1, 0.01)
    opt = torch.optim.SGD(params, lr=0.1)
    model.train_only("ct_cls", params)
    model(x, "ct_cls").sum().backward()
    opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in main)
    assert any(not torch.equal(before[n], after[n]) for n in ct)


def test_backbone_lr_scale_slows_backbone_weights_only(model: UniconModel) -> None:
    from unicon_core.config import TrainConfig

    # Execute
    plain = trained_parameters(model, TASK, Plan.FULL, 0, 1, 0.01)
    groups = trained_parameters(model, TASK, Plan.FULL, 0, 1, 0.01, backbone_lr_scale=0.1)
    decayed = trained_parameters(model, TASK, Plan.DISCRIMINATIVE_LR, 0, 1, 0.01,
                                 backbone_lr_scale=0.1)
    # Assert: without a scale, one group of every plan parameter (today's behaviour)
    assert not isinstance(plain[0], dict)
    params = dict(model.named_parameters())
    backbone = {id(params[n]) for n in backbone_names(model, TASK)}
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(by_id) == len(plain)
    assert all(lr == pytest.approx(0.001 if pid in backbone else 0.01)
               for pid, lr in by_id.items())
    # discriminative lr: the depth factor and the backbone factor multiply
    plain_decay = {id(p): g["lr"] for g in trained_parameters(
        model, TASK, Plan.DISCRIMINATIVE_LR, 0, 1, 0.01) for p in g["params"]}
    both = {id(p): g["lr"] for g in decayed for p in g["params"]}
    assert all(both[i] == pytest.approx(plain_decay[i] * (0.1 if i in backbone else 1.0))
               for i in both)
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        TrainConfig(backbone_lr_scale=0)
