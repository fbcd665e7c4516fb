"""Seeded synthetic CT and CT+PET lesion phantoms (there is no real labelled CT/PET offline).

Physical story (a caricature of hypervascular liver lesions on arterial-phase CT and tracer PET):
a body ellipsoid of soft tissue (HU) in air holds 0-3 *lesions* (malignant, the segmentation
target) and 0-3 *mimics* (benign hyper-enhancing look-alikes such as haemangiomas, focal nodular
hyperplasia or arterio-portal shunts). On CT both enhance: they are spheres of the same size
range and the same density range (``lesion_delta_hu`` above the tissue, a contrast-to-noise
ratio of about 7-12 per voxel), so CT shows clearly where the candidates are and where their
edges lie, but not which of them are malignant: a CT-only model can at best segment every
candidate. On PET only the lesions take up the tracer (SUV ``lesion_suv`` over the background
``pet_background_suv``), mimics do not; the PET image is blurred by a Gaussian point-spread
function (``pet_fwhm_mm``: real PET is low-resolution, which also lowers small lesions' peak SUV
by partial volume) and noisy, so PET tells *which* candidates are lesions while CT gives their
boundaries. Adding PET therefore improves lesion Dice over CT alone by a margin the network has
to learn from the images; nothing is hard-coded.

Survival time falls with lesion burden (lesion volume x SUV; mimics are benign and do not
count) plus noise, so the time/event columns carry signal for a prognosis task. Every site
built here is marked synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from unicon_core.config import TaskSpec
from unicon_core.data.readers import write_nifti
from unicon_core.data.splits import assign_splits

#: Bumped whenever the generator's output changes, so ``prepare_demo`` rebuilds stale sites.
GENERATOR_VERSION = 2
SOURCE = f"unicon_core.demo_data.phantoms (seeded generator v{GENERATOR_VERSION})"


@dataclass
class PhantomConfig:
    """Appearance of one scanner/site's phantoms."""

    size: int = 32
    spacing_mm: float = 2.0
    air_hu: float = -1000.0
    tissue_hu: float = 60.0
    noise_hu: float = 12.0
    lesion_delta_hu: tuple[float, float] = (90.0, 140.0)
    hu_offset: float = 0.0
    pet_background_suv: float = 1.0
    pet_noise_suv: float = 0.25
    pet_fwhm_mm: float = 6.0
    lesion_suv: tuple[float, float] = (4.0, 8.0)
    lesion_radius: tuple[float, float] = (2.0, 4.0)
    max_lesions: int = 3
    max_mimics: int = 3
    median_survival_days: float = 1500.0
    burden_effect: float = 0.08
    censor_days: tuple[float, float] = (300.0, 3000.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"phantom.size: must be >= 16, got {self.size}")
        if self.noise_hu <= 0 or self.pet_noise_suv <= 0:
            raise ValueError("phantom noise levels must be > 0")
        if self.max_lesions < 0 or self.max_mimics < 0:
            raise ValueError(
                f"phantom.max_lesions/max_mimics: must be >= 0, got "
                f"{self.max_lesions}/{self.max_mimics}"
            )
        if self.pet_fwhm_mm < 0:
            raise ValueError(f"phantom.pet_fwhm_mm: must be >= 0, got {self.pet_fwhm_mm}")
        low, high = self.lesion_delta_hu
        if low > high:
            raise ValueError(f"phantom.lesion_delta_hu: low > high in {self.lesion_delta_hu}")


def phantom_affine(cfg: PhantomConfig) -> np.ndarray:
    """Voxel-to-world affine: isotropic spacing, volume centred on the origin."""
    affine = np.diag([cfg.spacing_mm] * 3 + [1.0])
    affine[:3, 3] = -cfg.spacing_mm * (cfg.size - 1) / 2
    return affine


def _ball(
    rng: np.random.Generator,
    grid: np.ndarray,
    centre: np.ndarray,
    axes: np.ndarray,
    cfg: PhantomConfig,
    body: np.ndarray,
) -> np.ndarray:
    """A sphere of random radius with its centre well inside the body (clipped to the body)."""
    radius = rng.uniform(*cfg.lesion_radius)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    where = centre + direction * rng.uniform(0, 0.55) * axes
    return (((grid - where) ** 2).sum(-1) <= radius**2) & body


def make_phantom(rng: np.random.Generator, cfg: PhantomConfig) -> dict[str, Any]:
    """One synthetic case: ``ct`` (HU), ``pet`` (SUV), ``mask`` (0/1 lesions), ``mimic``
    (0/1 benign look-alikes, not in the mask), ``burden``, ``time``, ``event``."""
    n = cfg.size
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), axis=-1).astype(np.float32)
    centre = (n - 1) / 2 + rng.uniform(-1.5, 1.5, size=3)
    axes = rng.uniform(0.34, 0.44, size=3) * n
    body = (((grid - centre) / axes) ** 2).sum(-1) <= 1.0
    ct = np.where(body, cfg.tissue_hu, cfg.air_hu).astype(np.float32)
    lesion = np.zeros((n,) * 3, dtype=bool)
    uptake = np.zeros((n,) * 3, dtype=np.float32)
    burden = 0.0
    for _ in range(int(rng.integers(0, cfg.max_lesions + 1))):
        ball = _ball(rng, grid, centre, axes, cfg, body)
        suv = rng.uniform(*cfg.lesion_suv)
        lesion |= ball
        uptake[ball] = np.maximum(uptake[ball], suv)
        ct[ball] = cfg.tissue_hu + rng.uniform(*cfg.lesion_delta_hu)
        burden += ball.sum() * suv * (cfg.spacing_mm / 10) ** 3  # cm^3 x SUV
    mimic = np.zeros((n,) * 3, dtype=bool)
    for _ in range(int(rng.integers(0, cfg.max_mimics + 1))):
        ball = _ball(rng, grid, centre, axes, cfg, body) & ~lesion
        mimic |= ball
        ct[ball] = cfg.tissue_hu + rng.uniform(*cfg.lesion_delta_hu)
    ct += rng.normal(0, cfg.noise_hu, size=ct.shape).astype(np.float32) + cfg.hu_offset
    activity = np.where(body, cfg.pet_background_suv, 0.0).astype(np.float32)
    activity[lesion] = uptake[lesion]
    sigma = cfg.pet_fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / cfg.spacing_mm
    pet = gaussian_filter(activity, sigma) if sigma > 0 else activity
    pet += rng.normal(0, cfg.pet_noise_suv, size=pet.shape).astype(np.float32) * (pet > 0.05)
    pet = np.clip(pet, 0, None).astype(np.float32)
    event_time = cfg.median_survival_days * np.exp(-cfg.burden_effect * burden + rng.normal(0, 0.4))
    censor = rng.uniform(*cfg.censor_days)
    return {
        "ct": ct,
        "pet": pet,
        "mask": lesion.astype(np.uint8),
        "mimic": mimic.astype(np.uint8),
        "burden": float(burden),
        "time": float(max(min(event_time, censor), 1.0)),
        "event": int(event_time <= censor),
    }


def phantom_task(with_pet: bool) -> TaskSpec:
    """``ct_seg`` (CT, 1 channel) or ``ctpet_seg`` (CT+PET, 2 channels) lesion segmentation, as
    ``configs/task/{ct_seg,ctpet_seg}.yaml`` declare them."""
    from unicon_core.hydra_config import task_file_spec

    return task_file_spec("ctpet_seg" if with_pet else "ct_seg")


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
