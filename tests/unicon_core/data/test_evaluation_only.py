"""Evaluation-only sites validate with test rows only; colour files go grey through the task's
declared ``to_gray`` step in validation, the datasets and predict's pipeline alike."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unicon_core.data.sites import CLS_SPEC, cls_site, read_rows, rewrite
from unicon_core.data import open_site
from unicon_core.data.manifest import SiteRole, read_site_json
from unicon_core.data.problems import ProblemKind
from unicon_core.data.transforms import build_transforms, rgb_to_gray
from unicon_core.data.validate import validate_site


def test_a_test_only_manifest_is_an_evaluation_site(tmp_path: Path) -> None:
    # Prepare
    site = cls_site(tmp_path / "ext")
    rows = [{**r, "split": "test"} for r in read_rows(site)]
    rewrite(site, rows, CLS_SPEC)
    # Execute / Assert
    assert validate_site(site) == []
    opened = open_site(site)
    assert opened.split_sizes() == {"train": 0, "val": 0, "test": 6}


def test_role_evaluation_with_train_rows_is_a_problem(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "ext")
    meta = json.loads((site / "site.json").read_text())
    (site / "site.json").write_text(json.dumps({**meta, "role": "evaluation"}))
    assert read_site_json(site).role is SiteRole.EVALUATION
    problems = validate_site(site)
    assert [p.kind for p in problems] == [ProblemKind.EMPTY_SPLIT]
    assert "test rows only" in problems[0].message and problems[0].row == 1


def test_unknown_role_is_refused(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "s")
    meta = json.loads((site / "site.json").read_text())
    (site / "site.json").write_text(json.dumps({**meta, "role": "spectator"}))
    assert "'role' must be one of" in validate_site(site)[0].message


@pytest.mark.parametrize("to_gray", [False, True])
def test_colour_files_need_to_gray(tmp_path: Path, to_gray: bool) -> None:
    # Prepare: one file of the site saved as real colour
    site = cls_site(tmp_path / "s")
    spec = replace(CLS_SPEC, preprocess={"to_gray": True} if to_gray else {})
    rewrite(site, read_rows(site), spec)
    rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(site / "img/0.png")
    # Execute
    problems = validate_site(site)
    # Assert
    if not to_gray:
        assert [p.kind for p in problems] == [ProblemKind.WRONG_CHANNELS]
        return
    assert problems == []
    item = open_site(site).dataset("train", train=False)[0]
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    _, evaluation = build_transforms(spec, None)
    direct = evaluation({"image": grey[None]})["input"]
    assert item["input"].shape == (1, 16, 16)
    # luma in float vs PIL's rounded 8-bit luma: equal up to rounding
    assert np.abs(item["input"].numpy() - direct.numpy()).max() < 0.05


def test_rgb_to_gray_weights() -> None:
    x = np.zeros((3, 2, 2), np.float32)
    x[0], x[1], x[2] = 100.0, 50.0, 10.0
    assert rgb_to_gray(x).shape == (1, 2, 2)
    assert float(rgb_to_gray(x)[0, 0, 0]) == pytest.approx(0.299 * 100 + 0.587 * 50 + 1.14)
    assert rgb_to_gray(x[:1]).shape == (1, 2, 2)  # one channel passes unchanged
