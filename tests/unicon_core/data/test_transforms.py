"""Pipelines give the configured shapes and value ranges per modality, and seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.transforms import (
    GEOMETRY_KEY,
    PreprocessConfig,
    build_transforms,
    to_input_space,
    to_meta_tensor,
)

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


# ---------------------------------------------------------------- orientation and spacing
RAS_AFFINE = np.array([[2.0, 0, 0, -5], [0, 2.0, 0, 7], [0, 0, 3.0, 1], [0, 0, 0, 1]])


def _flip_to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored with its first two axes reversed (LPS-like), same world content."""
    n0, n1 = array.shape[1:3]
    flip = np.array([[-1.0, 0, 0, n0 - 1], [0, -1.0, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    return np.ascontiguousarray(array[:, ::-1, ::-1]), affine @ flip


def _swap_axes(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored with its first two axes swapped (affine columns swapped)."""
    swap = np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return np.ascontiguousarray(array.transpose(0, 2, 1, 3)), affine @ swap


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return (dist <= radius).astype(np.float32)[None]


CT_ODD = TaskSpec(
    name="ct_odd",
    kind=TaskKind.SEGMENTATION,
    modality=Modality.CT,
    spatial_dims=3,
    input_size=[6, 7, 5],
    patch_size=1,
    num_classes=2,
)


@pytest.mark.parametrize("restore", [_flip_to_lps, _swap_axes], ids=["lps", "swapped"])
def test_reoriented_volume_matches_ras_volume(restore) -> None:
    ct = _volume((6, 7, 5), -200, 300)
    mask = (ct > 50).astype(np.float32)
    other_ct, other_affine = restore(ct, RAS_AFFINE)
    other_mask, _ = restore(mask, RAS_AFFINE)
    cfg = PreprocessConfig(spatial="crop_pad")
    _, evaluation = build_transforms(CT_ODD, cfg)
    ras = evaluation(
        {"ct": to_meta_tensor(ct, RAS_AFFINE), "mask": to_meta_tensor(mask, RAS_AFFINE)}
    )
    moved = evaluation(
        {
            "ct": to_meta_tensor(other_ct, other_affine),
            "mask": to_meta_tensor(other_mask, other_affine),
        }
    )
    assert torch.equal(ras["input"], moved["input"]) and torch.equal(ras["mask"], moved["mask"])
    torch.testing.assert_close(moved[GEOMETRY_KEY]["affine"], torch.as_tensor(RAS_AFFINE))
    # without reorientation the stored layout shows through (the test can fail)
    _, keep = build_transforms(CT_ODD, PreprocessConfig(spatial="crop_pad", orientation=None))
    kept = keep({"ct": to_meta_tensor(other_ct, other_affine)})["input"]
    assert not torch.equal(kept, ras["input"])


def test_mask_stays_aligned_after_reorientation_and_spacing() -> None:
    shape = (12, 10, 6)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    mask = _ball(shape, (3.0, 6.0, 2.0), 2.6)  # off centre: a flip or swap would move it
    ct = np.where(mask > 0, 400.0, -400.0).astype(np.float32)
    ct_lps, aff_lps = _flip_to_lps(ct, affine)
    mask_lps, _ = _flip_to_lps(2 * mask, affine)  # label 2: interpolation would show as 1s
    spec = TaskSpec(
        name="ct_ball",
        kind=TaskKind.SEGMENTATION,
        modality=Modality.CT,
        spatial_dims=3,
        input_size=[6, 6, 11],
        patch_size=1,
        num_classes=3,
    )
    cfg = PreprocessConfig(spatial="crop_pad", spacing=(2.0, 2.0, 1.5))
    _, evaluation = build_transforms(spec, cfg)
    out = evaluation(
        {"ct": to_meta_tensor(ct_lps, aff_lps), "mask": to_meta_tensor(mask_lps, aff_lps)}
    )
    assert tuple(out[GEOMETRY_KEY]["shape"].tolist()) == (6, 6, 11)  # extents 11, 9, 15 mm
    assert out["mask"].dtype == torch.int64 and set(out["mask"].unique().tolist()) == {0, 2}
    inside = out["input"][0] > 0.5
    labelled = out["mask"][0] == 2
    dice = 2 * (inside & labelled).sum() / (inside.sum() + labelled.sum())
    assert dice > 0.85, f"image and mask drifted apart (dice {float(dice):.2f})"
    # the ball sits where it does in RAS (low x, high y), not mirrored
    centre = torch.nonzero(labelled).float().mean(0)
    assert centre[0] < 2.5 and centre[1] > 2.0


def test_spacing_sets_grid_shape_before_resize() -> None:
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    cfg = PreprocessConfig(spacing=(2.0, 2.0, 1.5))
    _, evaluation = build_transforms(CT, cfg)
    out = evaluation({"ct": to_meta_tensor(_volume((9, 9, 5), -100, 100), affine)})
    # extents 8, 8, 12 mm between voxel centres -> 8/2+1, 8/2+1, 12/1.5+1 voxels
    assert tuple(out[GEOMETRY_KEY]["shape"].tolist()) == (5, 5, 9)
    torch.testing.assert_close(
        torch.diagonal(out[GEOMETRY_KEY]["affine"])[:3], torch.tensor([2.0, 2.0, 1.5]).double()
    )
    assert out["input"].shape == (1, 16, 16, 8)  # then resized to the task size


def test_orientation_none_leaves_array_untouched() -> None:
    ct = _volume((16, 16, 8), -200, 300)
    lps_ct, lps_affine = _flip_to_lps(ct, RAS_AFFINE)
    _, keep = build_transforms(CT, PreprocessConfig(orientation=None))
    _, plain = build_transforms(CT)
    out = keep({"ct": to_meta_tensor(lps_ct, lps_affine)})
    assert GEOMETRY_KEY not in out
    expected = np.clip((lps_ct + 160.0) / 400.0, 0, 1)
    np.testing.assert_allclose(out["input"].numpy(), expected, atol=1e-6)
    # a plain array has no affine: used as it is, even with reorientation configured
    torch.testing.assert_close(plain({"ct": lps_ct})["input"], out["input"])


def test_to_input_space_restores_the_file_grid() -> None:
    mask = _ball((6, 7, 5), (1.0, 4.0, 2.0), 2.0)
    lps_mask, lps_affine = _flip_to_lps(mask, RAS_AFFINE)
    spec = TaskSpec(
        name="ct_up",
        kind=TaskKind.SEGMENTATION,
        modality=Modality.CT,
        spatial_dims=3,
        input_size=[12, 14, 10],
        patch_size=1,
        num_classes=2,
    )
    data = {
        "ct": to_meta_tensor(lps_mask, lps_affine),
        "mask": to_meta_tensor(lps_mask, lps_affine),
    }
    out = build_transforms(spec)[1](data)
    back = to_input_space(out["mask"], lps_affine, (6, 7, 5), out[GEOMETRY_KEY])
    np.testing.assert_array_equal(back.numpy(), lps_mask)
    # crop/pad with odd differences is undone exactly where the data survived
    crop_spec = TaskSpec(**{**spec.to_dict(), "input_size": [3, 10, 5]})
    out = build_transforms(crop_spec, PreprocessConfig(spatial="crop_pad"))[1](data)
    back = to_input_space(out["mask"], lps_affine, (6, 7, 5), out[GEOMETRY_KEY], "crop_pad")
    np.testing.assert_array_equal(back.numpy()[:, 1:4], lps_mask[:, 1:4])
    assert not back.numpy()[:, [0, 4, 5]].any()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"orientation": "RAX"},
        {"orientation": "RRS"},
        {"spacing": (1.0, 1.0)},
        {"spacing": (0, 1, 1)},
    ],
)
def test_bad_geometry_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="preprocess"):
        PreprocessConfig(**kwargs)


def test_geometry_config_is_normalised() -> None:
    cfg = PreprocessConfig(orientation="lps", spacing=[1, 2, 3])  # as read from YAML/JSON
    assert cfg.orientation == "LPS" and cfg.spacing == (1.0, 2.0, 3.0)
