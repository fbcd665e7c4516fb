"""Each validation error, from a tiny bad fixture, is reported with its file and row."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from unicon_core.data import SiteValidationError, open_site, validate_site
from unicon_core.data.readers import write_nifti

from .sites import (
    AFFINE,
    CLS_SPEC,
    CTPET_SPEC,
    SURV_SPEC,
    cls_site,
    ctpet_site,
    read_rows,
    rewrite,
    surv_site,
)


def _missing_file(site: Path) -> None:
    (site / "img/p1_pet.nii.gz").unlink()


def _truncated_nifti(site: Path) -> None:
    path = site / "img/p1_ct.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_voxels(site: Path) -> None:
    vol = np.zeros((8, 8, 8), np.float32)
    vol[1, 2, 3] = np.nan
    vol[0, 0, 0] = np.inf
    write_nifti(site / "img/p1_pet.nii.gz", vol, AFFINE)


def _ctpet_shape(site: Path) -> None:
    write_nifti(site / "img/p1_pet.nii.gz", np.zeros((8, 8, 6), np.float32), AFFINE)


def _ctpet_affine(site: Path) -> None:
    write_nifti(site / "img/p1_pet.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))


def _mask_labels(site: Path) -> None:
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[0, 0, :2] = (2, 5)
    write_nifti(site / "masks/p1.nii.gz", mask, AFFINE, dtype="uint8")


def _mask_shape(site: Path) -> None:
    write_nifti(site / "masks/p1.nii.gz", np.zeros((8, 8, 7), np.uint8), AFFINE, dtype="uint8")


def _edit(column: str, value: str) -> Callable[[Path], None]:
    def apply(site: Path) -> None:
        rows = read_rows(site)
        rows[1][column] = value
        rewrite(site, rows, CTPET_SPEC)

    return apply


def _unknown_column(site: Path) -> None:
    rows = read_rows(site)
    for row in rows:
        row["weight_kg"] = "70"
    rewrite(site, rows, CTPET_SPEC)


def _empty_split(site: Path) -> None:
    rows = read_rows(site)
    rows[1]["split"] = "train"
    rewrite(site, rows, CTPET_SPEC)


def _missing_column(site: Path) -> None:
    rows = read_rows(site)
    for row in rows:
        del row["pet"]
    rewrite(site, rows, CTPET_SPEC)


def _dicom_folder(site: Path) -> None:
    series = site / "dicom/p1_ct"
    series.mkdir(parents=True)
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    _edit("ct", "dicom/p1_ct")(site)


def _dicom_file(site: Path) -> None:
    (site / "img/p1_ct.dcm").write_bytes(b"\0" * 128 + b"DICM")
    _edit("ct", "img/p1_ct.dcm")(site)


# (case name, how to break the valid CT+PET site, expected row, expected text in the message)
CASES = [
    ("missing file", _missing_file, 2, "(pet: img/p1_pet.nii.gz): file not found"),
    ("truncated nifti", _truncated_nifti, 2, "(ct: img/p1_ct.nii.gz): corrupt or truncated NIfTI"),
    ("nan voxels", _nan_voxels, 2, "(pet: img/p1_pet.nii.gz): 2 NaN/Inf voxel(s)"),
    ("ct/pet shape", _ctpet_shape, 2, "pet shape (8, 8, 6) != ct shape (8, 8, 8)"),
    ("ct/pet affine", _ctpet_affine, 2, "pet affine differs from ct affine"),
    ("mask labels", _mask_labels, 2, "mask labels [2, 5] outside the task's classes 0..1"),
    ("mask shape", _mask_shape, 2, "mask shape (8, 8, 7) != image shape (8, 8, 8)"),
    ("time zero", _edit("time", "0"), 2, "(time): non-positive survival time '0'"),
    ("time negative", _edit("time", "-3.5"), 2, "non-positive survival time '-3.5'"),
    ("event", _edit("event", "2"), 2, "(event): event '2' is not 0 or 1"),
    ("bad split", _edit("split", "training"), 2, "(split): 'training' is not one of"),
    ("unknown column", _unknown_column, None, "(weight_kg): unknown column"),
    ("empty split", _empty_split, None, "(split): split 'val' is empty"),
    ("missing column", _missing_column, None, "(pet): required column missing"),
    ("dicom folder", _dicom_folder, 2, "is a folder of DICOM files, not an image file; DICOM"),
    ("dicom file", _dicom_file, 2, "(ct: img/p1_ct.dcm): unsupported file type: DICOM is not"),
]


@pytest.mark.parametrize(("name", "breaker", "row", "text"), CASES, ids=[c[0] for c in CASES])
def test_each_problem_is_reported_with_file_and_row(
    tmp_path: Path, name: str, breaker: Callable[[Path], None], row: int | None, text: str
) -> None:
    # Prepare
    site = ctpet_site(tmp_path / "site")
    assert validate_site(site) == []
    breaker(site)
    # Execute
    problems = validate_site(site)
    # Assert
    messages = [str(p) for p in problems]
    matching = [p for p in problems if text in str(p)]
    assert matching, f"{name}: {text!r} not in {messages}"
    assert matching[0].file == "manifest.csv"
    assert matching[0].row == row
    prefix = "manifest.csv" if row is None else f"manifest.csv row {row}"
    assert str(matching[0]).startswith(prefix)


def test_mask_shape_message_reads_as_documented(tmp_path: Path) -> None:
    site = ctpet_site(tmp_path / "site")
    _mask_shape(site)
    (problem,) = validate_site(site)
    assert str(problem) == (
        "manifest.csv row 2 (mask: masks/p1.nii.gz): mask shape (8, 8, 7) != image shape (8, 8, 8)"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    # Prepare: three different rows broken in three different ways
    site = ctpet_site(tmp_path / "site", n=6)
    (site / "img/p0_ct.nii.gz").unlink()
    _mask_shape(site)
    rows = read_rows(site)
    rows[4]["time"] = "0"
    rewrite(site, rows, CTPET_SPEC)
    # Execute
    problems = validate_site(site)
    # Assert
    assert sorted(p.row for p in problems) == [1, 2, 5]
    with pytest.raises(SiteValidationError) as info:
        open_site(site)
    assert len(info.value.problems) == 3
    assert "row 1" in str(info.value) and "row 5" in str(info.value)


def test_bad_label_value(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "site")
    rows = read_rows(site)
    rows[3]["label"] = "2"
    rows[4]["label"] = "yes"
    rewrite(site, rows, CLS_SPEC)
    problems = [str(p) for p in validate_site(site)]
    assert problems == [
        "manifest.csv row 4 (label): label '2' is not an integer in 0..1",
        "manifest.csv row 5 (label): label 'yes' is not an integer in 0..1",
    ]


def test_unreadable_image(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "site")
    (site / "img/2.png").write_bytes(b"not a png at all")
    (problem,) = validate_site(site)
    assert problem.row == 3 and problem.column == "image" and "unreadable image" in str(problem)


def test_colour_image_for_grayscale_task(tmp_path: Path) -> None:
    from PIL import Image

    site = cls_site(tmp_path / "site")
    colour = np.random.default_rng(3).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(colour).save(site / "img/1.png")  # (three equal channels would be grey)
    (problem,) = validate_site(site)
    assert problem.row == 2 and "3 channel(s), expected 1" in problem.message


def test_clinical_feature_not_a_number(tmp_path: Path) -> None:
    site = surv_site(tmp_path / "site")
    rows = read_rows(site)
    rows[0]["age"] = "nan"
    rows[6]["size"] = ""
    rewrite(site, rows, SURV_SPEC)
    rows_reported = sorted((p.row, p.column) for p in validate_site(site))
    assert rows_reported == [(1, "age"), (7, "size")]


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (None, "site.json: missing"),
        ("{not json", "not valid JSON"),
        ('{"site": "x"}', "missing keys"),
    ],
)
def test_bad_or_missing_site_json(tmp_path: Path, content: str | None, text: str) -> None:
    site = ctpet_site(tmp_path / "site")
    if content is None:
        (site / "site.json").unlink()
    else:
        (site / "site.json").write_text(content)
    problems = validate_site(site)
    assert problems and problems[0].file == "site.json" and text in str(problems[0])


def test_site_json_with_invalid_task(tmp_path: Path) -> None:
    site = ctpet_site(tmp_path / "site")
    data = json.loads((site / "site.json").read_text())
    data["task"]["channels"] = 3
    (site / "site.json").write_text(json.dumps(data))
    (problem,) = validate_site(site)
    assert problem.file == "site.json" and "channels" in problem.message


def test_expected_spec_must_match_site_json(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "site")
    other = CLS_SPEC.to_dict() | {"num_classes": 3}
    from unicon_core.config import TaskSpec

    problems = validate_site(site, TaskSpec.from_dict(other))
    assert [p.column for p in problems] == ["task"] and "num_classes" in problems[0].message


def test_missing_manifest_and_folder(tmp_path: Path) -> None:
    assert "site folder not found" in str(validate_site(tmp_path / "nowhere")[0])
    site = ctpet_site(tmp_path / "site")
    (site / "manifest.csv").unlink()
    assert [str(p) for p in validate_site(site)] == ["manifest.csv: missing"]


def test_gzip_garbage_is_corrupt_nifti(tmp_path: Path) -> None:
    site = ctpet_site(tmp_path / "site")
    (site / "img/p2_pet.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    (problem,) = validate_site(site)
    assert problem.row == 3 and "corrupt or truncated NIfTI" in problem.message


def test_patient_in_two_splits_is_leakage(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "site")
    rows = read_rows(site)
    rows[1]["patient_id"] = rows[0]["patient_id"]
    rewrite(site, rows, CLS_SPEC)
    problems = [str(p) for p in validate_site(site)]
    assert problems == [
        "manifest.csv (patient_id): patient 'p0' is in several splits ['train', 'val'] (leakage)"
    ]
