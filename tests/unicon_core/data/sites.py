"""Tiny site folders written inside tests (no downloads, a few kilobytes each)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.manifest import SiteMetadata, write_site_json
from unicon_core.data.readers import write_nifti

CTPET_SPEC = TaskSpec(
    name="ctpet_seg",
    kind=TaskKind.SEGMENTATION,
    modality=Modality.CT_PET,
    channels=2,
    spatial_dims=3,
    input_size=[8, 8, 8],
    patch_size=8,
    num_classes=2,
)
CLS_SPEC = TaskSpec(
    name="tiny_cls",
    kind=TaskKind.CLASSIFICATION,
    modality=Modality.MRI,
    channels=1,
    spatial_dims=2,
    input_size=[16, 16],
    patch_size=8,
    num_classes=2,
)
SURV_SPEC = TaskSpec(
    name="tiny_surv",
    kind=TaskKind.SURVIVAL,
    modality=Modality.CLINICAL,
    spatial_dims=0,
    feature_names=["age", "size"],
)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def write_rows(
    site: Path, rows: list[dict[str, Any]], spec: TaskSpec, synthetic: bool = True
) -> Path:
    """Write ``manifest.csv`` and ``site.json``."""
    site.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with (site / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    write_site_json(site, SiteMetadata("tiny", synthetic, "tests", "SYNTHETIC test site", spec))
    return site


def ctpet_site(root: Path, n: int = 3, shape: tuple[int, ...] = (8, 8, 8)) -> Path:
    """A valid CT+PET segmentation site: one row per split (train, val, test, train ...)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        ct = rng.normal(40, 20, size=shape).astype(np.float32)
        pet = rng.uniform(0, 5, size=shape).astype(np.float32)
        mask = (rng.uniform(size=shape) > 0.8).astype(np.uint8)
        write_nifti(root / f"img/p{i}_ct.nii.gz", ct, AFFINE)
        write_nifti(root / f"img/p{i}_pet.nii.gz", pet, AFFINE)
        write_nifti(root / f"masks/p{i}.nii.gz", mask, AFFINE, dtype="uint8")
        rows.append(
            {
                "patient_id": f"p{i}",
                "split": ("train", "val", "test")[i % 3],
                "ct": f"img/p{i}_ct.nii.gz",
                "pet": f"img/p{i}_pet.nii.gz",
                "mask": f"masks/p{i}.nii.gz",
                "time": 100.0 + i,
                "event": i % 2,
            }
        )
    return write_rows(root, rows, CTPET_SPEC)


def cls_site(root: Path, n: int = 6, size: tuple[int, int] = (20, 24)) -> Path:
    """A valid 2D grayscale PNG classification site."""
    rng = np.random.default_rng(1)
    rows = []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 255, size=size, dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img/{i}.png")
        rows.append(
            {
                "patient_id": f"p{i}",
                "split": ("train", "val", "test")[i % 3],
                "image": f"img/{i}.png",
                "label": i % 2,
            }
        )
    return write_rows(root, rows, CLS_SPEC)


def surv_site(root: Path, n: int = 9) -> Path:
    """A valid clinical survival site."""
    rows = [
        {
            "patient_id": f"p{i}",
            "split": ("train", "val", "test")[i % 3],
            "age": 40.0 + 3 * i,
            "size": 10.0 + (i % 4),
            "time": 50.0 + i,
            "event": i % 2,
        }
        for i in range(n)
    ]
    return write_rows(root, rows, SURV_SPEC, synthetic=False)


def read_rows(site: Path) -> list[dict[str, str]]:
    """The manifest rows as strings."""
    with (site / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def rewrite(site: Path, rows: list[dict[str, Any]], spec: TaskSpec) -> None:
    """Replace the manifest (and site.json) of ``site``."""
    write_rows(site, rows, spec)


COHORT_SPEC = TaskSpec(
    name="cohort_surv",
    kind=TaskKind.SURVIVAL,
    modality=Modality.CLINICAL,
    spatial_dims=0,
    feature_names=["age", "smoker"],
)


def pandas_cohort(
    root: Path,
    n: int = 300,
    zero_times: tuple[int, ...] = (16, 120, 250),
    empty_ages: tuple[int, ...] = (3, 40, 41, 77),
) -> Path:
    """A clinical survival site as a new user exported it from pandas: the index written as an
    unnamed first column, ``smoker`` as 'no'/'yes' (``n`` non-numeric cells), NaN ages as empty
    cells and a survival time of 0 at the 0-based ``zero_times`` (manifest rows ``i + 1``)."""
    import pandas as pd

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(n)],
            "split": [("train", "train", "val", "test")[i % 4] for i in range(n)],
            "age": rng.normal(60, 10, n).round(1),
            "smoker": rng.choice(["no", "yes"], n),
            "time": rng.uniform(10, 1000, n).round(1),
            "event": rng.integers(0, 2, n),
        }
    )
    frame.loc[[i for i in empty_ages if i < n], "age"] = np.nan
    frame.loc[[i for i in zero_times if i < n], "time"] = 0.0
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "manifest.csv")  # index=True: the classic mistake
    write_site_json(root, SiteMetadata("cohort", False, "tests", "pandas export", COHORT_SPEC))
    return root
