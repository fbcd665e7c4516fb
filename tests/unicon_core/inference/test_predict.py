"""`predict`: masks land in the input's space (affine, header, shape), classification and risk
outputs and JSON summaries are written, and bad inputs fail with errors naming the file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.unicon_core.inference._tiny import (
    blob_image,
    tiny_model,
    trained_on,
    write_nifti,
)
from unicon_core.cli import app
from unicon_core.commands.errors import EXIT_OK, EXIT_USAGE, UsageError
from unicon_core.commands.inference import predict_command
from unicon_core.device import module_device
from unicon_core.inference.bundle import load_bundle, save_bundle
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.inputs import InputError, collect_inputs, load_input
from unicon_core.inference.predict import SYNTHETIC_WARNING, Predictor, predict_device
from unicon_core.inference.routing import RoutingError

FEATURES = {"surv": (np.array([50.0, 20.0, 2.0]), np.array([10.0, 5.0, 1.0]))}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model()
    bundle = bundle_from_model(model, trained_on(model), feature_stats=FEATURES)
    return save_bundle(bundle, tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return Predictor(load_bundle(bundle_dir))


def _one(predictor: Predictor, arg: Path | str, **kw: str):
    (ref,) = collect_inputs([Path(arg)])
    return predictor.predict(load_input(ref), **kw)


def test_mask_has_the_input_affine_header_and_shape(predictor: Predictor, tmp_path: Path) -> None:
    # Prepare: a CT volume of another size than the skill's 8^3, with an oblique affine
    ct = write_nifti(
        tmp_path / "case_ct.nii.gz", np.random.default_rng(0).normal(0, 80, (10, 13, 7))
    )
    original = nib.load(str(ct))
    # Execute
    pred = _one(predictor, ct)
    summary = predictor.write(pred, tmp_path / "out")
    # Assert
    mask = nib.load(summary["result"]["mask"])
    assert summary["task"] == "ct_seg"
    assert mask.shape == (10, 13, 7)
    np.testing.assert_array_equal(mask.affine, original.affine)
    np.testing.assert_array_equal(mask.header.get_zooms(), original.header.get_zooms())
    assert mask.header.get_xyzt_units() == ("mm", "sec")
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    assert summary["trained_on_synthetic_data"] is True
    assert summary["warning"] == SYNTHETIC_WARNING


def test_mask_is_the_model_output_on_the_input_grid(predictor: Predictor, tmp_path: Path) -> None:
    # Prepare: volumes at the skill's own size, so neither resize nor resampling happens
    rng = np.random.default_rng(1)
    ras = write_nifti(tmp_path / "ras.nii.gz", rng.normal(0, 80, (8, 8, 8)), np.eye(4))
    swapped = write_nifti(tmp_path / "swapped.nii.gz", rng.normal(0, 80, (8, 8, 8)))
    # Execute
    pred_ras, pred_swapped = _one(predictor, ras), _one(predictor, swapped)
    written = predictor.write(pred_swapped, tmp_path / "out")["result"]["mask"]
    # Assert: in RAS the mask is the argmax itself; for a permuted/flipped affine the model ran
    # on the RAS-reoriented volume (as in training) and the mask, seen in RAS, is its argmax
    assert np.array_equal(predictor.mask_in_input_space(pred_ras), pred_ras.output.argmax(1)[0])
    canonical = nib.as_closest_canonical(nib.load(written))
    assert np.array_equal(np.asarray(canonical.dataobj), pred_swapped.output.argmax(1)[0].numpy())


def test_ct_pet_pair_and_folder_pairing(predictor: Predictor, tmp_path: Path) -> None:
    # Prepare
    rng = np.random.default_rng(2)
    folder = tmp_path / "in"
    folder.mkdir()
    write_nifti(folder / "p1_ct.nii.gz", rng.normal(0, 80, (9, 9, 9)))
    write_nifti(folder / "p1_pet.nii.gz", rng.uniform(0, 5, (9, 9, 9)))
    # Execute
    (ref,) = collect_inputs([folder])
    pred = predictor.predict(load_input(ref), question="segment")
    by_arg = _one(predictor, f"{folder / 'p1_ct.nii.gz'},{folder / 'p1_pet.nii.gz'}")
    # Assert
    assert ref.name == "p1" and len(ref.paths) == 2
    assert pred.decision.task == by_arg.decision.task == "ctpet_seg"
    assert torch.equal(pred.output, by_arg.output)


def test_png_classification_and_csv_risk(predictor: Predictor, tmp_path: Path) -> None:
    # Prepare
    png = tmp_path / "scan.png"
    Image.fromarray(np.clip(blob_image(np.random.default_rng(3)), 0, 255).astype(np.uint8)).save(
        png
    )
    csv = tmp_path / "patients.csv"
    csv.write_text("id,age,size,grade\npa,61,25,2\npb,40,10,1\n")
    # Execute
    cls = predictor.write(_one(predictor, png, task="blob_cls"), tmp_path / "out")
    risks = [
        predictor.write(predictor.predict(load_input(r)), tmp_path / "out")
        for r in collect_inputs([csv])
    ]
    # Assert
    assert cls["routing"]["method"] == "explicit-task"
    assert sum(cls["result"]["probabilities"]) == pytest.approx(1.0)
    assert cls["trained_on_synthetic_data"] is False and cls["warning"] is None
    assert [r["task"] for r in risks] == ["surv", "surv"]
    assert risks[0]["result"]["risk_score"] != risks[1]["result"]["risk_score"]
    assert json.loads((tmp_path / "out" / "pa.json").read_text())["csv_row"] == 1


def test_predictions_equal_those_of_the_in_memory_model(bundle_dir: Path, tmp_path: Path) -> None:
    model = tiny_model()
    live = Predictor(bundle_from_model(model, trained_on(model), feature_stats=FEATURES))
    loaded = Predictor(load_bundle(bundle_dir))
    ct = write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(4).normal(0, 80, (8, 9, 10)))
    assert torch.equal(_one(live, ct).output, _one(loaded, ct).output)


#: Unreadable inputs: (content, file name, the error it must give). The gzip member has a
#: timestamp, so the test ids are the file names (pytest-xdist workers must agree on them).
CORRUPT_INPUTS = [
    (b"", "empty.nii.gz", r"empty\.nii\.gz: file is empty"),
    (
        gzip.compress(b"this is not a nifti file" * 20),
        "bad.nii.gz",
        r"bad\.nii\.gz: cannot read",
    ),
    (b"\x89PNG\r\n\x1a\n garbage", "broken.png", r"broken\.png: cannot read"),
    (
        b"id,age,size,grade\n",
        "header_only.csv",
        r"header_only\.csv: CSV has a header but no rows",
    ),
    (b"x", "notes.txt", r"notes\.txt: unsupported file type"),
]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    CORRUPT_INPUTS,
    ids=[name for _, name, _ in CORRUPT_INPUTS],
)
def test_corrupt_and_empty_inputs_name_the_file(
    tmp_path: Path, content: bytes, name: str, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        for ref in collect_inputs([path]):
            load_input(ref)


def test_missing_input_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        collect_inputs([tmp_path / "nope.nii.gz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no NIfTI"):
        collect_inputs([tmp_path / "empty"])


def test_wrong_modality_and_bad_cells_name_the_file(predictor: Predictor, tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(png)
    with pytest.raises(RoutingError, match=r"photo\.png: task 'ct_seg' takes 3D"):
        _one(predictor, png, task="ct_seg")
    rgb = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
        rgb
    )
    with pytest.raises(RoutingError, match=r"colour\.png: no skill .*3 channel"):
        _one(predictor, rgb)
    csv = tmp_path / "rows.csv"
    csv.write_text("age,size,grade\n61,big,2\n")
    with pytest.raises(InputError, match=r"rows\.csv row 1: column 'size' is 'big'"):
        _one(predictor, csv)
    write_nifti(tmp_path / "a.nii.gz", np.zeros((8, 8, 8)))
    write_nifti(tmp_path / "b.nii.gz", np.zeros((8, 8, 9)))
    with pytest.raises(InputError, match="must be aligned"):
        _one(predictor, f"{tmp_path / 'a.nii.gz'},{tmp_path / 'b.nii.gz'}")


def test_predict_command_keeps_going_and_reports_every_input(
    bundle_dir: Path, tmp_path: Path
) -> None:
    # Prepare: a folder with two good inputs and a corrupt one
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(6)
    write_nifti(folder / "v1.nii.gz", rng.normal(0, 80, (8, 8, 8)))
    (folder / "v2.nii.gz").write_bytes(b"")
    (folder / "rows.csv").write_text("age,size,grade\n50,20,2\n")
    # Execute
    code = predict_command(bundle_dir, tmp_path / "out", [folder], None, None)
    # Assert
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 1
    assert [p["task"] for p in summary["predictions"]] == ["surv", "ct_seg"]
    assert len(summary["errors"]) == 1 and "v2.nii.gz" in summary["errors"][0]["input"]
    assert (tmp_path / "out" / "v1_mask.nii.gz").is_file()
    assert predict_command(bundle_dir, tmp_path / "o2", [folder / "v1.nii.gz"], None, None) == 0
    with pytest.raises(UsageError, match=r"bundle folder not found: .*missing"):
        predict_command(tmp_path / "missing", tmp_path / "o3", [folder], None, None)


# ------------------------------------------------------------------------- device
def test_predictor_runs_on_the_device_it_is_given(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: record the device each prediction runs under
    import unicon_core.device

    seen: list[torch.device] = []
    real_autocast = unicon_core.device.autocast

    def spy(device: torch.device, enabled: bool = True):
        seen.append(device)
        return real_autocast(device, enabled)

    monkeypatch.setattr(unicon_core.device, "autocast", spy)
    predictor = Predictor(load_bundle(bundle_dir), device="cpu")
    ct = write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(8).normal(0, 80, (8, 8, 8)))
    # Execute
    pred = _one(predictor, ct)
    # Assert
    assert predictor.device == torch.device("cpu") == module_device(predictor.bundle.model)
    assert seen == [torch.device("cpu")]
    assert pred.output.device.type == "cpu" and pred.output.dtype == torch.float32


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", r"--device 'gpu' is not auto, cpu, cuda or cuda:<index>"),
        ("cuda:x", r"--device 'cuda:x' is not auto"),
        ("CPU", r"--device 'CPU' is not auto"),
        ("cuda", r"--device='cuda' but no CUDA GPU is visible here; use --device cpu"),
        ("cuda:1", r"--device='cuda:1' but no CUDA GPU is visible here"),
    ],
)
def test_bad_or_absent_device_is_a_clear_error(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch, device: str, message: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    with pytest.raises(ValueError, match=message):
        Predictor(predictor.bundle, device=device)
    assert predict_device("auto") == torch.device("cpu")


def test_cli_predict_device_option_and_usage_errors(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    ct = write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(9).normal(0, 80, (8, 8, 8)))
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, ["predict", str(ct), "--bundle", str(bundle_dir), *args])

    # Execute / Assert: --device cpu runs
    ok = run("--out", str(tmp_path / "o1"), "--device", "cpu")
    assert ok.exit_code == EXIT_OK, ok.output
    assert (tmp_path / "o1" / "v_mask.nii.gz").is_file()
    # a value that is no device, or a GPU that is not there: usage errors, nothing written
    bad = run("--out", str(tmp_path / "o2"), "--device", "gpu")
    assert bad.exit_code == EXIT_USAGE
    assert "error: --device 'gpu' is not auto, cpu, cuda or cuda:<index>" in bad.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    absent = run("--out", str(tmp_path / "o3"), "--device", "cuda")
    assert absent.exit_code == EXIT_USAGE and "no CUDA GPU is visible here" in absent.output
    assert "Traceback" not in bad.output + absent.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    # a bundle folder that does not exist: usage error, as for every command
    missing = runner.invoke(
        app, ["predict", str(ct), "--bundle", str(tmp_path / "nowhere"), "--out", str(tmp_path)]
    )
    assert missing.exit_code == EXIT_USAGE
    assert f"error: bundle folder not found: {tmp_path / 'nowhere'}" in missing.output
