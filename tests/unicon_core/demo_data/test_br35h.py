"""Prepared Br35H sites: one size, grayscale, no group across splits, no size shortcut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from unicon_core.data import open_site, validate_site
from unicon_core.data.manifest import read_site_json
from unicon_core.data.splits import assign_splits, leaked_groups
from unicon_core.demo_data.br35h import (
    EXTERNAL_SITE,
    MIN_HELD_OUT,
    MIN_PER_CLASS,
    SITE_TUMOUR_FRACTION,
    br35h_root,
    held_out_splits,
)

SITES = list(SITE_TUMOUR_FRACTION)  # the training sites
ALL_SITES = [*SITES, EXTERNAL_SITE]


def _size_features(width: np.ndarray, height: np.ndarray) -> np.ndarray:
    w, h = np.asarray(width, float), np.asarray(height, float)
    return np.c_[w, h, w / h, np.log(w * h)]


def _held_out_aucs(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> list[float]:
    """AUC on the rows outside ``train`` of two classifiers fitted on ``train``."""
    models = [
        make_pipeline(StandardScaler(), LogisticRegression()),
        DecisionTreeClassifier(max_depth=3, random_state=0),
    ]
    return [
        roc_auc_score(y[~train], m.fit(x[train], y[train]).predict_proba(x[~train])[:, 1])
        for m in models
    ]


def _manifest(demo_dir: Path, site: str) -> pd.DataFrame:
    return pd.read_csv(demo_dir / site / "manifest.csv")


@pytest.mark.parametrize("site", ALL_SITES)
def test_site_is_valid_real_grayscale_64(demo_dir: Path, site: str) -> None:
    assert validate_site(demo_dir / site) == []
    opened = open_site(demo_dir / site)
    assert not opened.synthetic and opened.task_spec.name == "tumour_cls"
    frame = _manifest(demo_dir, site)
    for rel in frame["image"].iloc[:50]:
        with Image.open(demo_dir / site / rel) as img:
            assert img.size == (64, 64) and img.mode == "L"
    split = "test" if site == EXTERNAL_SITE else "train"
    assert opened.dataset(split)[0]["input"].shape == (1, 64, 64)


def test_sites_differ_in_class_balance_and_size(demo_dir: Path) -> None:
    shares = {s: _manifest(demo_dir, s)["label"].mean() for s in SITES}
    for site, share in shares.items():
        assert abs(share - SITE_TUMOUR_FRACTION[site]) < 0.05
    assert sum(len(_manifest(demo_dir, s)) for s in ALL_SITES) > 1000


def test_no_source_or_duplicate_group_in_two_splits(demo_dir: Path) -> None:
    frames = pd.concat([_manifest(demo_dir, s).assign(site=s) for s in ALL_SITES])
    assert leaked_groups(list(frames["patient_id"]), list(frames["split"])) == []
    assert leaked_groups(list(frames["meta_dup_hash"]), list(frames["split"])) == []
    # the 16x16 average hash of the prepared 64x64 images too (issue #13: cropping made 4
    # groups alike that the original images' hashes kept apart)
    assert leaked_groups(list(frames["meta_prepared_hash"]), list(frames["split"])) == []
    assert leaked_groups(list(frames["meta_prepared_hash"]), list(frames["site"])) == []
    sizes = list(zip(frames["meta_orig_width"], frames["meta_orig_height"], strict=True))
    assert leaked_groups(sizes, list(frames["split"])) == []
    assert frames["meta_source_file"].is_unique  # no image in two sites


def test_raw_collection_has_a_size_shortcut() -> None:
    """Power check: on the unprocessed files, original size predicts the label well."""
    labels, widths, heights = [], [], []
    for label, folder in ((1, "yes"), (0, "no")):
        for path in sorted((br35h_root() / folder).glob("*.jpg")):
            with Image.open(path) as img:  # header only, no decoding
                labels.append(label)
                widths.append(img.width)
                heights.append(img.height)
    split = np.array(assign_splits(list(zip(widths, heights, strict=True)), seed=0))
    aucs = _held_out_aucs(_size_features(widths, heights), np.array(labels), split == "train")
    assert min(aucs) > 0.7, aucs


def test_prepared_sites_have_no_size_shortcut(demo_dir: Path) -> None:
    """A classifier on the recorded original size is near chance on each site's held-out rows,
    and so is one on what could survive in the pixels (foreground extent, padding)."""
    size_aucs, pixel_aucs = [], []
    for site in SITES:
        frame = _manifest(demo_dir, site)
        train = (frame["split"] == "train").to_numpy()
        y = frame["label"].to_numpy()
        x = _size_features(frame["meta_orig_width"], frame["meta_orig_height"])
        size_aucs += _held_out_aucs(x, y, train)
        pixels = np.stack([np.asarray(Image.open(demo_dir / site / p)) for p in frame["image"]])
        fg = pixels > 10
        extent = np.c_[fg.any(2).mean(1), fg.any(1).mean(1), fg.mean((1, 2))]
        pixel_aucs += _held_out_aucs(extent, y, train)
    assert 0.38 < np.mean(size_aucs) < 0.62 and max(size_aucs) < 0.75, size_aucs
    assert 0.38 < np.mean(pixel_aucs) < 0.62 and max(pixel_aucs) < 0.75, pixel_aucs


def test_external_site_holds_unseen_sources_and_held_out_splits_are_large(
    demo_dir: Path,
) -> None:
    """The headline site: whole sources no training site holds, test rows only, never trains;
    every held-out split has enough rows of each class."""
    ext = _manifest(demo_dir, EXTERNAL_SITE)
    assert read_site_json(demo_dir / EXTERNAL_SITE).evaluation_only
    assert set(ext["split"]) == {"test"} and len(ext) >= 200
    assert abs(ext["label"].mean() - 0.5) < 0.05
    training = pd.concat([_manifest(demo_dir, s) for s in SITES])
    assert not set(ext["patient_id"]) & set(training["patient_id"])
    sizes = set(zip(ext["meta_orig_width"], ext["meta_orig_height"], strict=True))
    assert not sizes & set(zip(training["meta_orig_width"], training["meta_orig_height"],
                               strict=True))
    for site in SITES:
        frame = _manifest(demo_dir, site)
        for split in ("val", "test"):
            labels = frame.loc[frame["split"] == split, "label"]
            assert len(labels) >= MIN_HELD_OUT and labels.value_counts().min() >= MIN_PER_CLASS
            assert frame.loc[frame["split"] == split, "patient_id"].nunique() >= 3


def test_held_out_splits_train_big_sources() -> None:
    # Prepare: one source of 60 rows, 40 sources of 1-2 rows, two labels
    groups = ["big"] * 60 + [f"s{i // 2}" for i in range(80)]
    labels = [0] * 60 + [i // 2 % 2 for i in range(80)]
    # Execute
    splits = held_out_splits(groups, labels, seed=0)
    # Assert: the big source trains, val and test are ~20 % each, of many sources
    assert set(splits[:60]) == {"train"}
    assert leaked_groups(groups, splits) == []
    for split in ("val", "test"):
        rows = [i for i, s in enumerate(splits) if s == split]
        assert 24 <= len(rows) <= 32 and len({groups[i] for i in rows}) >= 12
