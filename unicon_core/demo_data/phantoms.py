"""Seeded synthetic CT and CT+PET lesion phantoms (there is no real labelled CT/PET offline).

A body ellipsoid of soft tissue (HU) in air holds 0-3 spherical lesions that are *faint on CT*
(a few HU above tissue, under the noise) and *bright on PET* (SUV), with a lesion mask and a
survival time that falls with lesion burden (volume x uptake) plus noise, so PET carries real
signal for both segmentation and prognosis. Every site built here is marked synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.readers import write_nifti
from unicon_core.data.splits import assign_splits

SOURCE = "unicon_core.demo_data.phantoms (seeded generator)"


@dataclass
class PhantomConfig:
    """Appearance of one scanner/site's phantoms."""

    size: int = 32
    spacing_mm: float = 2.0
    air_hu: float = -1000.0
    tissue_hu: float = 40.0
    noise_hu: float = 20.0
    lesion_delta_hu: float = 8.0
    hu_offset: float = 0.0
    pet_background_suv: float = 1.0
    pet_noise_suv: float = 0.25
    lesion_suv: tuple[float, float] = (4.0, 8.0)
    lesion_radius: tuple[float, float] = (2.0, 4.0)
    max_lesions: int = 3
    median_survival_days: float = 1500.0
    burden_effect: float = 0.08
    censor_days: tuple[float, float] = (300.0, 3000.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"phantom.size: must be >= 16, got {self.size}")
        if self.noise_hu <= 0 or self.pet_noise_suv <= 0:
            raise ValueError("phantom noise levels must be > 0")
        if self.max_lesions < 0:
            raise ValueError(f"phantom.max_lesions: must be >= 0, got {self.max_lesions}")


def phantom_affine(cfg: PhantomConfig) -> np.ndarray:
    """Voxel-to-world affine: isotropic spacing, volume centred on the origin."""
    affine = np.diag([cfg.spacing_mm] * 3 + [1.0])
    affine[:3, 3] = -cfg.spacing_mm * (cfg.size - 1) / 2
    return affine


def make_phantom(rng: np.random.Generator, cfg: PhantomConfig) -> dict[str, Any]:
    """One synthetic case: ``ct`` (HU), ``pet`` (SUV), ``mask`` (0/1), ``time``, ``event``."""
    n = cfg.size
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), axis=-1).astype(np.float32)
    centre = (n - 1) / 2 + rng.uniform(-1.5, 1.5, size=3)
    axes = rng.uniform(0.34, 0.44, size=3) * n
    body = (((grid - centre) / axes) ** 2).sum(-1) <= 1.0
    mask = np.zeros((n,) * 3, dtype=np.uint8)
    uptake = np.zeros((n,) * 3, dtype=np.float32)
    burden = 0.0
    for _ in range(int(rng.integers(0, cfg.max_lesions + 1))):
        radius = rng.uniform(*cfg.lesion_radius)
        # centres well inside the body so the whole lesion is tissue
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        where = centre + direction * rng.uniform(0, 0.55) * axes
        ball = ((grid - where) ** 2).sum(-1) <= radius**2
        ball &= body
        suv = rng.uniform(*cfg.lesion_suv)
        mask[ball] = 1
        uptake[ball] = np.maximum(uptake[ball], suv)
        burden += ball.sum() * suv * (cfg.spacing_mm / 10) ** 3  # cm^3 x SUV
    lesion = mask.astype(bool)
    ct = np.where(body, cfg.tissue_hu, cfg.air_hu).astype(np.float32)
    ct[lesion] += cfg.lesion_delta_hu
    ct += rng.normal(0, cfg.noise_hu, size=ct.shape).astype(np.float32) + cfg.hu_offset
    pet = np.where(body, cfg.pet_background_suv, 0.0).astype(np.float32)
    pet[lesion] = uptake[lesion]
    pet += rng.normal(0, cfg.pet_noise_suv, size=pet.shape).astype(np.float32) * body
    pet = np.clip(pet, 0, None)
    event_time = cfg.median_survival_days * np.exp(-cfg.burden_effect * burden + rng.normal(0, 0.4))
    censor = rng.uniform(*cfg.censor_days)
    return {
        "ct": ct,
        "pet": pet,
        "mask": mask,
        "burden": float(burden),
        "time": float(max(min(event_time, censor), 1.0)),
        "event": int(event_time <= censor),
    }


def phantom_task(with_pet: bool, size: int = 32) -> TaskSpec:
    """``ct_seg`` (CT, 1 channel) or ``ctpet_seg`` (CT+PET, 2 channels) lesion segmentation."""
    return TaskSpec(
        name="ctpet_seg" if with_pet else "ct_seg",
        kind=TaskKind.SEGMENTATION,
        modality=Modality.CT_PET if with_pet else Modality.CT,
        channels=2 if with_pet else 1,
        spatial_dims=3,
        input_size=[size] * 3,
        patch_size=8,
        num_classes=2,
    )


def write_phantom_cases(
    site_dir: Path, site: str, n_cases: int, cfg: PhantomConfig, with_pet: bool, seed: int
) -> list[dict[str, Any]]:
    """Generate ``n_cases`` phantoms into ``site_dir`` and return their manifest rows."""
    rng = np.random.default_rng(seed)
    affine = phantom_affine(cfg)
    patients = [f"{site}_p{i:03d}" for i in range(n_cases)]
    splits = assign_splits(patients, seed=seed)
    rows = []
    for pid, split in zip(patients, splits, strict=True):
        case = make_phantom(rng, cfg)
        row: dict[str, Any] = {"id": pid, "patient_id": pid, "split": split}
        row["ct"] = f"images/{pid}_ct.nii.gz"
        write_nifti(site_dir / row["ct"], case["ct"], affine)
        if with_pet:
            row["pet"] = f"images/{pid}_pet.nii.gz"
            write_nifti(site_dir / row["pet"], case["pet"], affine)
        row["mask"] = f"masks/{pid}.nii.gz"
        write_nifti(site_dir / row["mask"], case["mask"], affine, dtype="uint8")
        row.update(time=round(case["time"], 1), event=case["event"])
        row["meta_lesion_burden"] = round(case["burden"], 4)
        rows.append(row)
    return rows
