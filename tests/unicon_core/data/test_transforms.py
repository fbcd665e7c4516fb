"""Pipelines give the configured shapes and value ranges per modality, and seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.transforms import PreprocessConfig, build_transforms

CT = TaskSpec(
    name="ct",
    kind=TaskKind.SEGMENTATION,
    modality=Modality.CT,
    spatial_dims=3,
    input_size=[16, 16, 8],
    patch_size=8,
    num_classes=2,
)
CTPET = TaskSpec(
    name="ctpet",
    kind=TaskKind.SEGMENTATION,
    modality=Modality.CT_PET,
    channels=2,
    spatial_dims=3,
    input_size=[16, 16, 16],
    patch_size=8,
    num_classes=2,
)
MRI = TaskSpec(name="mri", modality=Modality.MRI, spatial_dims=2, input_size=[32, 32], patch_size=8)


def _volume(shape: tuple[int, ...], low: float, high: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=(1, *shape)).astype(np.float32)


def test_ct_window_scales_to_unit_range_and_resizes() -> None:
    _, evaluation = build_transforms(CT, PreprocessConfig(ct_window=(-100.0, 100.0)))
    ct = _volume((20, 12, 10), -1000, 1000)
    mask = (np.random.default_rng(1).uniform(size=(1, 20, 12, 10)) > 0.5).astype(np.float32)
    out = evaluation({"ct": ct, "mask": mask})
    assert out["input"].shape == (1, 16, 16, 8) and out["input"].dtype == torch.float32
    assert out["input"].min() >= 0 and out["input"].max() <= 1
    assert out["mask"].shape == (1, 16, 16, 8) and out["mask"].dtype == torch.int64
    assert set(out["mask"].unique().tolist()) <= {0, 1}
    # a voxel at 0 HU maps to the window centre
    centre = evaluation({"ct": np.zeros((1, 16, 16, 8), np.float32)})["input"]
    assert torch.allclose(centre, torch.full_like(centre, 0.5))


def test_ctpet_stacks_ct_then_pet_with_suv_scaling() -> None:
    _, evaluation = build_transforms(CTPET, PreprocessConfig(suv_max=5.0))
    shape = (16, 16, 16)
    out = evaluation(
        {
            "ct": np.full((1, *shape), 240.0, np.float32),
            "pet": np.full((1, *shape), 2.5, np.float32),
        }
    )
    assert out["input"].shape == (2, *shape)
    assert torch.allclose(out["input"][0], torch.ones(shape))  # top of the default window
    assert torch.allclose(out["input"][1], torch.full(shape, 0.5))  # 2.5 / 5


def test_mri_is_z_scored() -> None:
    _, evaluation = build_transforms(MRI)
    out = evaluation({"image": _volume((32, 32), 100, 900)})["input"]
    assert out.shape == (1, 32, 32)
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std(unbiased=False)) - 1) < 1e-3


def test_crop_pad_keeps_voxel_values() -> None:
    _, evaluation = build_transforms(CT, PreprocessConfig(spatial="crop_pad"))
    out = evaluation({"ct": np.full((1, 10, 20, 8), 240.0, np.float32)})["input"]
    assert out.shape == (1, 16, 16, 8)
    assert float(out.max()) == 1.0 and float(out.min()) == 0.0  # padding (0) lies inside the window


def test_training_augmentation_is_seeded() -> None:
    image = {"image": _volume((32, 32), 0, 1)}
    outs = []
    for seed in (3, 3, 4):
        train, _ = build_transforms(MRI, seed=seed)
        outs.append(torch.stack([train(dict(image))["input"] for _ in range(6)]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_flip_moves_image_and_mask_together() -> None:
    train, _ = build_transforms(CT, PreprocessConfig(flip_prob=1.0, intensity_jitter=0.0), seed=0)
    ct = np.full((1, 16, 16, 8), -1000.0, np.float32)
    ct[0, 0, 0, 0] = 1000.0
    mask = np.zeros((1, 16, 16, 8), np.float32)
    mask[0, 0, 0, 0] = 1
    out = train({"ct": ct, "mask": mask})
    assert out["input"][0, -1, -1, -1] == 1.0 and out["mask"][0, -1, -1, -1] == 1


@pytest.mark.parametrize(
    "kwargs", [{"ct_window": (10.0, 0.0)}, {"suv_max": 0.0}, {"spatial": "warp"}, {"flip_prob": 2}]
)
def test_bad_preprocess_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="preprocess"):
        PreprocessConfig(**kwargs)


def test_clinical_task_has_no_image_pipeline() -> None:
    spec = TaskSpec(
        name="c",
        kind=TaskKind.SURVIVAL,
        modality=Modality.CLINICAL,
        spatial_dims=0,
        feature_names=["a"],
    )
    with pytest.raises(ValueError, match="tabular"):
        build_transforms(spec)


def test_inputs_are_not_modified_in_place() -> None:
    image = _volume((32, 32), 0, 100)
    before = image.copy()
    train, evaluation = build_transforms(MRI)
    evaluation({"image": image})
    train({"image": image})
    np.testing.assert_array_equal(image, before)
