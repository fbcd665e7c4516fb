"""UniconModel skills: isolation between tasks, exact skill key sets, strict loading."""

from __future__ import annotations

import pytest
import torch

from unicon_core.config import BackboneConfig, LoRASpec, TaskSpec
from unicon_core.model import SkillStateError, UniconModel
from unicon_core.model.foundation import load_foundation_into, save_foundation
from unicon_core.model.stems import StemSpec

TINY = BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)

CLS = TaskSpec(
    name="cls",
    kind="classification",
    modality="mri",
    channels=1,
    spatial_dims=2,
    input_size=[16, 16],
    patch_size=4,
    num_classes=2,
)
SEG2 = TaskSpec(
    name="seg2",
    kind="segmentation",
    modality="mri",
    channels=1,
    spatial_dims=2,
    input_size=[16, 16],
    patch_size=4,
    num_classes=3,
)
SEG3 = TaskSpec(
    name="seg3",
    kind="segmentation",
    modality="ct+pet",
    channels=2,
    spatial_dims=3,
    input_size=[8, 8, 8],
    patch_size=4,
    num_classes=2,
)
# the same tasks with a low-rank patch stem (TaskSpec.stem_rank)
CLS_LR = TaskSpec(**{**CLS.__dict__, "name": "cls_lr", "stem_rank": 4})
SEG3_LR = TaskSpec(**{**SEG3.__dict__, "name": "seg3_lr", "stem_rank": 8})
SURV = TaskSpec(
    name="surv",
    kind="survival",
    modality="clinical",
    spatial_dims=0,
    feature_names=["age", "size", "grade"],
    lora=LoRASpec(rank=2, targets=["qkv"]),
)
INPUTS = {
    "cls": torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)),
    "seg2": torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2)),
    "seg3": torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(3)),
    "surv": torch.randn(5, 3, generator=torch.Generator().manual_seed(4)),
}
INPUTS["cls_lr"], INPUTS["seg3_lr"] = INPUTS["cls"], INPUTS["seg3"]


def _model(*specs: TaskSpec, seed: int = 0) -> UniconModel:
    model = UniconModel(TINY, seed=seed)
    for spec in specs:
        model.add_task(spec)
    return model.eval()


def _train_a_little(model: UniconModel, task: str, steps: int = 3) -> None:
    params = model.train_skill(task)
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(steps):
        loss = model(INPUTS[task], task).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.freeze_all()


@pytest.mark.parametrize("new", [SEG2, SEG3, SURV, CLS_LR, SEG3_LR])
def test_adding_and_training_task_b_leaves_backbone_and_task_a_bit_identical(new: TaskSpec) -> None:
    # Prepare
    model = _model(CLS)
    _train_a_little(model, "cls")
    backbone_before = {k: v.clone() for k, v in model.backbone_state_dict().items()}
    hash_before = model.foundation_hash
    out_a_before = model(INPUTS["cls"], "cls").detach().clone()
    # Execute
    model.add_task(new)
    skill_b_before = model.skill_state_dict(new.name)
    _train_a_little(model, new.name)
    # Assert
    assert any(
        not torch.equal(skill_b_before[k], v) for k, v in model.skill_state_dict(new.name).items()
    )
    after = model.backbone_state_dict()
    assert backbone_before.keys() == after.keys()
    assert all(torch.equal(backbone_before[k], after[k]) for k in after)
    assert model.foundation_hash == hash_before
    assert torch.equal(model(INPUTS["cls"], "cls"), out_a_before)


def test_a_task_of_the_same_modality_gets_a_private_stem_unless_the_stem_is_foundation() -> None:
    # Two MRI 2D tasks without a foundation stem: training one must not move the other.
    model = _model(CLS, SEG2)
    out_seg = model(INPUTS["seg2"], "seg2").detach().clone()
    _train_a_little(model, "cls")
    assert torch.equal(model(INPUTS["seg2"], "seg2"), out_seg)
    assert model.task_stem["cls"] != model.task_stem["seg2"]
    assert any(k.startswith("stem.") for k in model.skill_keys("seg2"))


def test_foundation_stem_is_shared_frozen_and_outside_every_skill(tmp_path) -> None:
    # Prepare: a foundation with an MRI 2D stem
    base = UniconModel(TINY, seed=0)
    base.add_stem(StemSpec.from_task(CLS), owner=None)
    path = tmp_path / "foundation.safetensors"
    digest = save_foundation(base, path)
    # Execute
    model = UniconModel(BackboneConfig(**{**TINY.__dict__, "checkpoint": str(path)}), seed=7)
    model.add_task(CLS)
    model.add_task(SEG2)
    # Assert
    assert model.foundation_hash == digest
    assert model.task_stem["cls"] == model.task_stem["seg2"] == CLS.stem_key
    assert not any(
        k.startswith("stem.") for k in model.skill_keys("cls") | model.skill_keys("seg2")
    )
    out_seg = model(INPUTS["seg2"], "seg2").detach().clone()
    _train_a_little(model, "cls")
    assert torch.equal(model(INPUTS["seg2"], "seg2"), out_seg)
    assert model.foundation_hash == digest


def test_skill_state_dict_holds_exactly_the_tasks_trainable_tensors() -> None:
    model = _model(CLS, SEG3, SURV, SEG3_LR)
    for task in model.tasks:
        keys = model.skill_keys(task)
        trainable = model.train_skill(task)
        # exactly what train_skill makes trainable, nothing else requires grad
        assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}
        assert len(keys) == len(trainable)
        assert all(k.split(".")[0] in {"adapter", "head", "stem"} for k in keys)
        assert not any(other in k for k in keys for other in model.tasks if other != task)
    # adapters of different tasks have separate tensors under the same portable keys
    assert model.skill_keys("cls") & model.skill_keys("seg3")
    backbone_ids = {id(p) for p in model.core_backbone.parameters()}
    assert (
        not {id(p) for p in model.skill_parameters("seg3").values()}
        - backbone_ids
        - {id(p) for p in model.heads.parameters()}
        - {id(p) for p in model.stems.parameters()}
    )
    adapter_ids = {
        id(p) for k, p in model.skill_parameters("cls").items() if k.startswith("adapter.")
    }
    assert adapter_ids <= backbone_ids
    assert (
        not {id(p) for n, p in model.core_backbone.named_parameters() if ".lora_" not in n}
        & adapter_ids
    )


@pytest.mark.parametrize("task", ["cls", "seg2", "seg3", "surv", "cls_lr", "seg3_lr"])
def test_skill_round_trip_reproduces_outputs(task: str, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    # Prepare: a trained skill in one model
    source = _model(CLS, SEG2, SEG3, SURV, CLS_LR, SEG3_LR, seed=0)
    _train_a_little(source, task)
    expected = source(INPUTS[task], task).detach()
    save_file(source.skill_state_dict(task), str(tmp_path / "skill.safetensors"))
    # Execute: load into a fresh model built the same way (another process would do the same)
    target = _model(CLS, SEG2, SEG3, SURV, CLS_LR, SEG3_LR, seed=0)
    assert not torch.equal(target(INPUTS[task], task), expected)
    target.load_skill_state_dict(task, load_file(str(tmp_path / "skill.safetensors")))
    # Assert
    assert torch.equal(target(INPUTS[task], task), expected)


def test_load_skill_rejects_missing_extra_and_misshapen_tensors_and_loads_nothing() -> None:
    model = _model(CLS, SEG2)
    good = model.skill_state_dict("cls")
    key = sorted(good)[0]
    before = model.skill_state_dict("cls")
    cases = {
        "missing keys": {k: v for k, v in good.items() if k != key},
        "unexpected keys": {**good, "head.extra.weight": torch.zeros(1)},
        "shape": {**good, key: torch.zeros(good[key].shape[0] + 1, *good[key].shape[1:])},
        "not floating": {**good, key: torch.zeros_like(good[key], dtype=torch.int64)},
    }
    for why, state in cases.items():
        poisoned = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
        with pytest.raises(SkillStateError, match=why) as err:
            model.load_skill_state_dict("cls", poisoned)
        assert "'cls'" in str(err.value)
        assert all(torch.equal(before[k], v) for k, v in model.skill_state_dict("cls").items())
    with pytest.raises(SkillStateError, match="unexpected keys"):
        model.load_skill_state_dict("seg2", good)  # another task's skill


def test_unknown_task_duplicate_task_and_wrong_input_shape_are_clear() -> None:
    model = _model(CLS)
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        model(INPUTS["cls"], "nope")
    with pytest.raises(ValueError, match="task 'cls' exists already"):
        model.add_task(CLS)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 16, 16\)"):
        model(torch.zeros(2, 3, 16, 16), "cls")


def test_initial_skills_are_identical_across_builds_and_depend_on_the_seed() -> None:
    a, b, c = _model(CLS, seed=3), _model(CLS, seed=3), _model(CLS, seed=4)
    sa, sb, sc = (m.skill_state_dict("cls") for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.foundation_hash == b.foundation_hash != c.foundation_hash
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_foundation_checkpoint_detects_corruption_and_size_mismatch(tmp_path) -> None:
    path = tmp_path / "f.safetensors"
    save_foundation(UniconModel(TINY), path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        load_foundation_into(UniconModel(TINY), bad)
    with pytest.raises(ValueError, match=r"backbone\.hidden_size=64 but checkpoint"):
        UniconModel(BackboneConfig(checkpoint=str(path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        UniconModel(BackboneConfig(**{**TINY.__dict__, "checkpoint": str(tmp_path / "none")}))
