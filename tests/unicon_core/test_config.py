"""TaskSpec / LoRASpec / BackboneConfig validation: each bad field is named."""

from __future__ import annotations

import pytest

from unicon_core.config import BackboneConfig, LoRASpec, TaskSpec, TrainConfig


def _spec(**kw: object) -> TaskSpec:
    base: dict[str, object] = {
        "name": "t",
        "kind": "classification",
        "modality": "mri",
        "channels": 1,
        "spatial_dims": 2,
        "input_size": [16, 16],
        "patch_size": 4,
        "num_classes": 2,
    }
    base.update(kw)
    return TaskSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "field", "why"),
    [
        ({"name": "Bad.Name"}, "name", "must match"),
        ({"kind": "regression"}, "kind", "not one of"),
        ({"modality": "xray"}, "modality", "not one of"),
        ({"input_size": [16, 16, 16]}, "input_size", "needs 2 numbers"),
        ({"patch_size": 5}, "patch_size", "must divide"),
        ({"num_classes": 1}, "num_classes", ">= 2"),
        (
            {"modality": "ct", "spatial_dims": 3, "input_size": [8, 8, 8], "channels": 2},
            "channels",
            "needs 1",
        ),
        (
            {"modality": "ct+pet", "spatial_dims": 3, "input_size": [8, 8, 8], "channels": 1},
            "channels",
            "needs 2",
        ),
        ({"modality": "ct", "channels": 1}, "spatial_dims", "3D"),
        ({"spatial_dims": 4}, "spatial_dims", "2 or 3"),
        (
            {"kind": "segmentation", "patch_size": 3, "input_size": [9, 9], "num_classes": 2},
            "patch_size",
            "power of two",
        ),
        (
            {"modality": "clinical", "spatial_dims": 0, "feature_names": []},
            "feature_names",
            "at least one",
        ),
        (
            {"modality": "clinical", "spatial_dims": 0, "feature_names": ["a", "a"]},
            "feature_names",
            "duplicates",
        ),
        (
            {"modality": "clinical", "spatial_dims": 2, "feature_names": ["a"]},
            "spatial_dims",
            "spatial_dims 0",
        ),
        (
            {
                "kind": "segmentation",
                "modality": "clinical",
                "spatial_dims": 0,
                "feature_names": ["a"],
            },
            "kind",
            "image modality",
        ),
        ({"feature_names": ["a"]}, "feature_names", "only clinical"),
    ],
)
def test_bad_task_spec_names_field(kw: dict[str, object], field: str, why: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=rf"\.{field}: .*{why}"):
        _spec(**kw)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"targets": ["re:("]}, "targets"),
        ({"targets": [""]}, "targets"),
        ({"targets": []}, "targets"),
    ],
)
def test_bad_lora_spec(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"lora\.{field}"):
        LoRASpec(**kw)  # type: ignore[arg-type]


def test_bad_backbone_and_train_config() -> None:
    with pytest.raises(ValueError, match=r"backbone.hidden_size: .*not divisible"):
        BackboneConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match=r"backbone.num_layers"):
        BackboneConfig(num_layers=0)
    with pytest.raises(ValueError, match=r"train.optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"train.schedule"):
        TrainConfig(schedule="step")


def test_spec_dict_round_trip_and_unknown_keys() -> None:
    spec = _spec(lora={"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv"]})
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        TaskSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_clinical_spec_derives_input_size_and_stable_stem_key() -> None:
    spec = _spec(modality="clinical", spatial_dims=0, feature_names=["age", "size", "grade"])
    assert spec.input_size == [3]
    assert (
        spec.stem_key
        == _spec(
            name="other",
            modality="clinical",
            spatial_dims=0,
            feature_names=["age", "size", "grade"],
        ).stem_key
    )
