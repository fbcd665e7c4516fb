"""Tiny models and input files shared by the inference tests (no downloads, < 1 s to build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.inference.bundle import SiteRecord
from unicon_core.model import UniconModel

TINY = BackboneConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)

SPECS = [
    TaskSpec(
        name="ct_seg",
        kind="segmentation",
        modality="ct",
        channels=1,
        spatial_dims=3,
        input_size=[8, 8, 8],
        patch_size=4,
        num_classes=2,
    ),
    TaskSpec(
        name="ctpet_seg",
        kind="segmentation",
        modality="ct+pet",
        channels=2,
        spatial_dims=3,
        input_size=[8, 8, 8],
        patch_size=4,
        num_classes=2,
    ),
    TaskSpec(
        name="blob_cls",
        kind="classification",
        modality="mri",
        channels=1,
        spatial_dims=2,
        input_size=[16, 16],
        patch_size=4,
        num_classes=2,
    ),
    TaskSpec(
        name="tissue_seg",
        kind="segmentation",
        modality="mri",
        channels=1,
        spatial_dims=2,
        input_size=[16, 16],
        patch_size=4,
        num_classes=3,
    ),
    TaskSpec(
        name="surv",
        kind="survival",
        modality="clinical",
        spatial_dims=0,
        input_size=[3],
        feature_names=["age", "size", "grade"],
    ),
]
SYNTHETIC = {
    "ct_seg": True,
    "ctpet_seg": True,
    "blob_cls": False,
    "tissue_seg": False,
    "surv": False,
}


def tiny_model(specs: list[TaskSpec] | None = None, seed: int = 0) -> UniconModel:
    """A model with every task added and its skill perturbed away from the initial values
    (LoRA B starts at zero, which would hide adapter bugs)."""
    model = UniconModel(TINY, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for spec in specs or SPECS:
        model.add_task(spec)
        state = model.skill_state_dict(spec.name)
        model.load_skill_state_dict(
            spec.name,
            {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in state.items()},
        )
    return model.eval()


def trained_on(model: UniconModel) -> dict[str, list[SiteRecord]]:
    """One made-up site per task, flagged as in ``SYNTHETIC``."""
    return {t: [SiteRecord(f"{t}_site", SYNTHETIC.get(t, False), "test")] for t in model.tasks}


def example_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of 2 model inputs per task."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for spec in SPECS:
        shape = (
            (2, len(spec.feature_names))
            if spec.spatial_dims == 0
            else (2, spec.channels, *spec.input_size)
        )
        out[spec.name] = torch.randn(shape, generator=gen)
    return out


def blob_image(rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """A dark image with a few bright round blobs (the 'blob_cls' distribution)."""
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(0, 2, (size, size))
    for _ in range(3):
        cy, cx = rng.uniform(3, size - 3, 2)
        img += 200 * (((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(2, 6))
    return img.astype(np.float32)


def tissue_image(rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """A smooth bright disc with graded rings (the 'tissue_seg' distribution)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + rng.normal(), xx - size / 2 + rng.normal())
    img = np.where(r < size * 0.45, 100 + 5 * r, 0.0) + rng.normal(0, 1, (size, size))
    return img.astype(np.float32)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write a NIfTI file with a given (default: oblique, non-identity) affine."""
    import nibabel as nib

    if affine is None:
        affine = np.array(
            [
                [0.0, -1.5, 0.0, 10.0],
                [2.0, 0.0, 0.0, -5.0],
                [0.0, 0.0, 3.0, 7.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
    img = nib.Nifti1Image(array.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path
