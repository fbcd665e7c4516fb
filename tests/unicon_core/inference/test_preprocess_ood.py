"""Issue #13: the skill's preprocessing travels in the bundle, and predictions carry OOD flags.

Predict on the raw files a site started from must give the numbers the site's evaluation
computed on the same rows; OOD thresholds come from the validation split only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.unicon_core.data.sites import SURV_SPEC, surv_site, write_rows
from tests.unicon_core.inference._tiny import blob_image, tiny_model, trained_on
from unicon_core.config import TaskSpec
from unicon_core.data import open_site
from unicon_core.data.site import Site
from unicon_core.data.transforms import foreground_square, task_preprocess
from unicon_core.inference.bundle import load_bundle, save_bundle
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.inputs import collect_inputs, load_input
from unicon_core.inference.ood import CALIBRATION_SPLIT, OODCalibration, calibrate_ood
from unicon_core.inference.predict import Predictor
from unicon_core.inference.prototypes import Prototype, site_prototype
from unicon_core.keys import BatchKey

#: The Br35H demo builder's step, declared instead of baked into the files.
SQUARE = {"crop_foreground": 0.1, "foreground_floor": 10.0, "pad_square": True}
RAW_SPEC = TaskSpec(
    name="raw_cls",
    kind="classification",
    modality="mri",
    channels=1,
    spatial_dims=2,
    input_size=[16, 16],
    patch_size=4,
    num_classes=2,
    preprocess=SQUARE,
)
SPLITS = ("train", "train", "val", "test")


def raw_png_site(root: Path, n: int = 16, seed: int = 0) -> Path:
    """Raw-ish grey PNGs of varying size and aspect ratio, a bright blob scene off-centre on a
    dark margin (what crop-to-foreground + pad-to-square removes)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        h, w = int(rng.integers(24, 40)), int(rng.integers(24, 48))
        canvas = np.zeros((h, w), dtype=np.float32)
        top, left = int(rng.integers(0, h - 18)), int(rng.integers(0, w - 18))
        canvas[top : top + 18, left : left + 18] = 30 + blob_image(rng, 18).clip(0, 200)
        Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(root / f"img/{i}.png")
        rows.append({"split": SPLITS[i % 4], "image": f"img/{i}.png", "label": i % 2})
    return write_rows(root, rows, RAW_SPEC, synthetic=True)


def _saved(tmp_path: Path, specs: list[TaskSpec], **kwargs: Any) -> Predictor:
    model = tiny_model(specs)
    bundle = bundle_from_model(model, trained_on(model), **kwargs)
    return Predictor(load_bundle(save_bundle(bundle, tmp_path / "bundle")), device="cpu")


def _evaluation_outputs(site: Site, predictor: Predictor, split: str) -> list[torch.Tensor]:
    model = predictor.bundle.model
    with torch.no_grad():
        return [
            model(item[BatchKey.INPUT.value].unsqueeze(0), site.task_spec.name)
            for item in site.dataset(split)
        ]


# ------------------------------------------------------------------------------ preprocessing
def test_declared_crop_pad_travels_and_predict_matches_evaluation(tmp_path: Path) -> None:
    site = open_site(raw_png_site(tmp_path / "site"))
    predictor = _saved(tmp_path, [RAW_SPEC])
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["tasks"]["raw_cls"]["spec"]["preprocess"]["pad_square"] is True
    assert predictor.preprocess_of("raw_cls").crop_foreground == 0.1
    evaluated = _evaluation_outputs(site, predictor, "test")
    files = [site.root / site.rows[i]["image"] for i in site.split_rows("test")]
    assert len(files) == len(evaluated) == 4
    for path, expected in zip(files, evaluated, strict=True):
        pred = predictor.predict(load_input(collect_inputs([path])[0]), task="raw_cls")
        torch.testing.assert_close(pred.output, expected, rtol=1e-5, atol=1e-6)
    # the step matters: the same raw file without it gives other numbers
    plain = TaskSpec(**{**RAW_SPEC.__dict__, "preprocess": None})
    bare = Predictor(bundle_from_model(tiny_model([plain]), trained_on(tiny_model([plain]))))
    out = bare.predict(load_input(collect_inputs([files[0]])[0]), task="raw_cls").output
    assert not torch.allclose(out, evaluated[0], atol=1e-4)


def test_foreground_square_is_the_demo_builders_step() -> None:
    from unicon_core.demo_data.br35h import square_gray

    rng = np.random.default_rng(3)
    arr = np.zeros((30, 44), dtype=np.uint8)
    arr[5:25, 9:30] = rng.integers(0, 255, (20, 21), dtype=np.uint8)
    out = foreground_square({"image": torch.as_tensor(arr[None], dtype=torch.float32)},
                            ["image"], crop=0.1, floor=10.0, square=True)["image"]
    side = out.shape[-1]
    baked = square_gray(Image.fromarray(arr), side)  # a resize to its own size changes nothing
    np.testing.assert_array_equal(out[0].numpy().astype(np.uint8), baked)


@pytest.mark.parametrize(
    ("preprocess", "match"),
    [
        ({"crop_foregound": 0.1}, "unknown keys"),
        ({"crop_foreground": 1.5}, "crop_foreground"),
        ({"pad_square": "yes"}, "pad_square"),
    ],
)
def test_declared_preprocessing_is_validated(preprocess: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskSpec(**{**RAW_SPEC.__dict__, "preprocess": preprocess})


def test_crop_pad_refused_for_segmentation_and_spec_unchanged_without_it() -> None:
    with pytest.raises(ValueError, match="2D classification"):
        TaskSpec(name="seg", kind="segmentation", input_size=[16, 16], patch_size=4,
                 num_classes=2, preprocess={"pad_square": True})
    assert "preprocess" not in SURV_SPEC.to_dict()  # older site.json/bundles stay identical
    assert TaskSpec.from_dict(RAW_SPEC.to_dict()) == RAW_SPEC
    assert task_preprocess(SURV_SPEC).crop_foreground is None


def test_old_bundle_without_task_preprocessing_uses_its_global_section(tmp_path: Path) -> None:
    predictor = _saved(tmp_path, [SURV_SPEC])
    manifest_path = tmp_path / "bundle" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("crop_foreground", "foreground_floor", "pad_square"):
        manifest["preprocess"].pop(key)  # as written before these fields existed
    for info in manifest["tasks"].values():
        info.pop("ood")
    manifest_path.write_text(json.dumps(manifest))
    old = load_bundle(tmp_path / "bundle")
    assert old.preprocess.crop_foreground is None and old.tasks["tiny_surv"].ood is None
    assert predictor.bundle.tasks["tiny_surv"].spec == old.tasks["tiny_surv"].spec


# ------------------------------------------------------------------------------ clinical
def test_clinical_predict_on_site_rows_matches_evaluation(tmp_path: Path) -> None:
    site = open_site(surv_site(tmp_path / "site", n=12))
    pooled = (np.array([0.0, 0.0]), np.array([1.0, 1.0]))  # deliberately not the site's
    predictor = _saved(tmp_path, [SURV_SPEC], feature_stats={"tiny_surv": pooled})
    evaluated = _evaluation_outputs(site, predictor, "test")
    refs = [r for r in collect_inputs([site.root / "manifest.csv"]) if r.row["split"] == "test"]
    assert len(refs) == len(evaluated) == 4
    for ref, expected in zip(refs, evaluated, strict=True):
        pred = predictor.predict(load_input(ref), task="tiny_surv")
        assert pred.extra["standardisation"] == "site train split"
        torch.testing.assert_close(pred.output, expected, rtol=1e-5, atol=1e-6)
    summary = predictor.write(pred, tmp_path / "out")
    assert summary["result"]["standardisation"] == "site train split"


def test_clinical_rows_without_their_site_use_pooled_statistics(tmp_path: Path) -> None:
    pooled = (np.array([50.0, 11.0]), np.array([10.0, 2.0]))
    predictor = _saved(tmp_path, [SURV_SPEC], feature_stats={"tiny_surv": pooled})
    csv = tmp_path / "rows.csv"
    csv.write_text("age,size\n60,13\n")
    pred = predictor.predict(load_input(collect_inputs([csv])[0]), task="tiny_surv")
    assert pred.extra["standardisation"] == "pooled (bundle)"
    with torch.no_grad():
        x = torch.tensor([[1.0, 1.0]])
        torch.testing.assert_close(pred.output, predictor.bundle.model(x, "tiny_surv"))


# ------------------------------------------------------------------------------ OOD
def _ood_predictor(tmp_path: Path) -> tuple[Predictor, Site]:
    site = open_site(raw_png_site(tmp_path / "site", n=40))
    model = tiny_model([RAW_SPEC])
    proto = Prototype.from_vector(*site_prototype(model, site.dataset("train")))
    ood = calibrate_ood({"raw_cls": proto}, [site])
    bundle = bundle_from_model(model, trained_on(model), router={"raw_cls": proto}, ood=ood)
    return Predictor(load_bundle(save_bundle(bundle, tmp_path / "bundle")), "cpu"), site


def _noise_pngs(folder: Path, n: int = 6) -> list[Path]:
    rng = np.random.default_rng(9)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"noise{i}.png")
        paths.append(folder / f"noise{i}.png")
    return paths


def test_ood_flags_held_out_true_and_noise_false(tmp_path: Path) -> None:
    predictor, site = _ood_predictor(tmp_path)
    test_files = [site.root / site.rows[i]["image"] for i in site.split_rows("test")]
    held_out = [
        predictor.predict(load_input(collect_inputs([p])[0]), task="raw_cls").extra["ood"]
        for p in test_files
    ]
    assert np.mean([f["in_distribution"] for f in held_out]) >= 0.8
    foreign = [
        predictor.predict(load_input(collect_inputs([p])[0]), task="raw_cls").extra["ood"]
        for p in _noise_pngs(tmp_path / "noise")
    ]
    assert not any(f["in_distribution"] for f in foreign)
    assert min(f["score"] for f in foreign) > max(f["score"] for f in held_out)
    summary = predictor.write(
        predictor.predict(load_input(collect_inputs([test_files[0]])[0])), tmp_path / "out"
    )
    assert summary["in_distribution"] is held_out[0]["in_distribution"]
    assert summary["ood"]["threshold"] == pytest.approx(held_out[0]["threshold"])


def test_clinical_ood_flags_foreign_statistics(tmp_path: Path) -> None:
    site = open_site(surv_site(tmp_path / "site", n=30))
    model = tiny_model([SURV_SPEC])
    proto = Prototype.from_vector(*site_prototype(model, site.dataset("train")))
    ood = calibrate_ood({"tiny_surv": proto}, [site])
    predictor = Predictor(
        bundle_from_model(model, trained_on(model), router={"tiny_surv": proto}, ood=ood,
                          feature_stats={"tiny_surv": (np.zeros(2), np.ones(2))})
    )
    csv = tmp_path / "foreign.csv"
    csv.write_text("age,size\n4000,-900\n0.001,55000\n")
    flags = [predictor.predict(load_input(r), task="tiny_surv").extra["ood"]
             for r in collect_inputs([csv])]
    assert [f["in_distribution"] for f in flags] == [False, False]
    own = [r for r in collect_inputs([site.root / "manifest.csv"]) if r.row["split"] == "test"]
    inside = [predictor.predict(load_input(r), task="tiny_surv").extra["ood"] for r in own]
    assert np.mean([f["in_distribution"] for f in inside]) >= 0.8


def test_calibration_reads_the_validation_split_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = open_site(raw_png_site(tmp_path / "site", n=20))
    proto = Prototype.from_vector(*site_prototype(tiny_model([RAW_SPEC]), site.dataset("train")))
    read: list[str] = []
    original = Site.dataset

    def spy(self: Site, split: str, *args: Any, **kwargs: Any) -> Any:
        read.append(split)
        return original(self, split, *args, **kwargs)

    monkeypatch.setattr(Site, "dataset", spy)
    calibration = calibrate_ood({"raw_cls": proto}, [site])["raw_cls"]
    assert read == [CALIBRATION_SPLIT] == ["val"]
    assert calibration.split == "val" and calibration.count == len(site.split_rows("val"))
    with pytest.raises(ValueError, match="only 'val'"):
        OODCalibration(threshold=1.0, split="test")


def test_bundle_without_calibration_says_so(tmp_path: Path) -> None:
    site = open_site(raw_png_site(tmp_path / "site", n=8))
    predictor = _saved(tmp_path, [RAW_SPEC])
    path = site.root / site.rows[0]["image"]
    flag = predictor.predict(load_input(collect_inputs([path])[0]), task="raw_cls").extra["ood"]
    assert flag["in_distribution"] is None and "no OOD calibration" in flag["reason"]


def test_refuse_ood_skips_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from unicon_core.commands.inference import predict_command

    _, site = _ood_predictor(tmp_path)
    good = site.root / site.rows[site.split_rows("val")[0]]["image"]
    noise = _noise_pngs(tmp_path / "noise", n=2)
    out = tmp_path / "out"
    code = predict_command(tmp_path / "bundle", out, [good, *noise], "raw_cls", None, "cpu",
                           refuse_ood=True)
    assert code == 0
    run = json.loads((out / "summary.json").read_text())
    refused = run["refused_out_of_distribution"]
    assert sorted(Path(r["input"]).name for r in refused) == ["noise0.png", "noise1.png"]
    assert all(r["ood"]["in_distribution"] is False for r in refused)
    assert [p["name"] for p in run["predictions"]] == [good.stem]
    assert not list(out.glob("noise*"))
    assert "2 refused as out of distribution" in capsys.readouterr().out
    # without the flag they are predicted, and flagged
    code = predict_command(tmp_path / "bundle", tmp_path / "out2", noise, "raw_cls", None, "cpu")
    run = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert code == 0 and [p["in_distribution"] for p in run["predictions"]] == [False, False]
