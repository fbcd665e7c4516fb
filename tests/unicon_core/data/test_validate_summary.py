"""Validation output a new user can act on: problems grouped by (column, kind) with counts, first
rows, examples and fix hints; and a file used in two splits (same path or same bytes) flagged."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unicon_core.data import SiteValidationError, open_site, validate_site
from unicon_core.data.problems import (
    ERROR_SUMMARY_CHARS,
    Problem,
    ProblemKind,
    group_problems,
    summarize_problems,
)

from .sites import CLS_SPEC, CTPET_SPEC, cls_site, ctpet_site, read_rows, rewrite


def _line(summary: str, start: str) -> str:
    (line,) = [ln for ln in summary.splitlines() if ln.startswith(f"  - {start}")]
    return line


def test_pandas_cohort_gives_a_short_summary_with_every_kind(
    make_cohort: Callable[..., Path],
) -> None:
    # Prepare: 300 'no'/'yes' cells, 4 empty ages, 3 zero times, pandas' index column
    site = make_cohort(n=300, zero_times=(16, 120, 250))
    # Execute
    problems = validate_site(site)
    summary = summarize_problems(problems)
    # Assert: one line per (column, kind), not one per cell
    assert len(problems) == 1 + 300 + 4 + 3
    assert len(summary.splitlines()) == 4
    time = _line(summary, "time:")
    assert time.startswith("  - time: 3 out-of-range values such as '0.0' (rows 17, 121, 251)")
    assert "survival times must be > 0" in time
    smoker = _line(summary, "smoker:")
    assert smoker.startswith("  - smoker: 300 non-numeric values such as ")
    assert "'no'" in smoker and "'yes'" in smoker and "(rows 1, 2, 3, 4, 5, …)" in smoker
    assert "encode as 0/1 ('no' → 0, 'yes' → 1)" in smoker
    age = _line(summary, "age:")
    assert age.startswith("  - age: 4 empty cells (rows 4, 41, 42, 78)")
    assert "pandas writes a missing value as an empty cell" in age
    index = _line(summary, "manifest.csv:")
    assert "1 unknown column 'Unnamed: 0'" in index and "index=False" in index
    # the rare, serious problem is listed before the 300 cells
    lines = summary.splitlines()
    assert lines.index(time) < lines.index(smoker)


def test_value_free_summary_keeps_counts_and_rows_but_no_cells(
    make_cohort: Callable[..., Path],
) -> None:
    site = make_cohort(n=40, zero_times=(5,))
    summary = summarize_problems(validate_site(site), values=False)
    assert "smoker: 40 non-numeric values (rows 1, 2, 3, 4, 5, …) — encode as 0/1" in summary
    assert "time: 1 out-of-range value (row 6)" in summary
    assert "'no'" not in summary and "'yes'" not in summary and "0.0" not in summary


def test_site_validation_error_is_the_bounded_value_free_summary(tmp_path: Path) -> None:
    # Prepare: 400 different kinds of problem in 400 columns would be 400 lines
    problems = [
        Problem("manifest.csv", row, f"col{row}", "x", kind=ProblemKind.NOT_A_NUMBER, value="SEE")
        for row in range(1, 401)
    ]
    # Execute
    text = str(SiteValidationError("siteX", problems))
    # Assert
    assert len(text) < ERROR_SUMMARY_CHARS + 300
    assert "400 problems in 400 groups" in text and "more group(s)" in text
    assert "SEE" not in text


def test_summary_bound_drops_least_serious_groups_first() -> None:
    problems = [
        Problem("manifest.csv", r, "smoker", "x", kind=ProblemKind.NOT_A_NUMBER, value="no")
        for r in range(1, 500)
    ] + [Problem("manifest.csv", 9, "time", "x", kind=ProblemKind.OUT_OF_RANGE, value="0")]
    lines = summarize_problems(problems, max_chars=100).splitlines()
    assert lines[0].startswith("  - time: 1 out-of-range value '0' (row 9)")
    assert lines[-1] == "  … and 1 more group(s)"


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        (ProblemKind.NOT_A_NUMBER, "write numbers only"),
        (ProblemKind.EMPTY_CELL, "fill them in or drop those rows"),
        (ProblemKind.MISSING_FILE, "relative to the site folder"),
        (ProblemKind.WRONG_CHANNELS, "single-channel image per file"),
        (ProblemKind.DICOM, "dcm2niix"),
        (ProblemKind.OUT_OF_RANGE, "allowed values"),
        (ProblemKind.SAME_CONTENT_IN_SPLITS, "leaks held-out data"),
    ],
)
def test_each_kind_has_a_default_hint(kind: ProblemKind, hint: str) -> None:
    problems = [Problem("manifest.csv", 3, "c", "m", kind=kind, value="1e999")]
    (group,) = group_problems(problems)
    assert hint in group.hint() and hint in group.line()


def test_missing_files_are_one_line_with_rows_and_paths(tmp_path: Path) -> None:
    site = ctpet_site(tmp_path / "site", n=6)
    for i in (0, 2, 5):
        (site / f"img/p{i}_pet.nii.gz").unlink()
    summary = summarize_problems(validate_site(site))
    assert summary.splitlines() == [
        "  - pet: 3 missing files 'img/p0_pet.nii.gz', 'img/p2_pet.nii.gz', 'img/p5_pet.nii.gz' "
        "(rows 1, 3, 6) — paths are relative to the site folder and case-sensitive; check the "
        "spelling"
    ]


def test_colour_image_says_how_to_convert_to_grayscale(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "site")
    colour = np.random.default_rng(3).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(colour).save(site / "img/1.png")
    (problem,) = validate_site(site)
    assert problem.kind is ProblemKind.WRONG_CHANNELS
    line = summarize_problems([problem])
    assert "image: 1 image with the wrong channel count 'img/1.png' (row 2)" in line
    assert "Image.open(p).convert('L')" in line and "cannot fix this" in line


# ------------------------------------------------------------------------- files in two splits
def _point_row(site: Path, row: int, column: str, cell: str) -> None:
    rows = read_rows(site)
    rows[row][column] = cell
    rewrite(site, rows, CLS_SPEC if column == "image" else CTPET_SPEC)


def test_same_file_in_two_splits_is_flagged(tmp_path: Path) -> None:
    # Prepare: row 3 (test) names row 1's (train) image
    site = cls_site(tmp_path / "site")
    assert validate_site(site) == []
    _point_row(site, 2, "image", "img/0.png")
    # Execute
    (problem,) = validate_site(site)
    # Assert
    assert problem.kind is ProblemKind.SAME_FILE_IN_SPLITS
    assert (problem.row, problem.column, problem.path) == (3, "image", "img/0.png")
    assert "row 1 in split 'train'; this row is in 'test'" in problem.message
    assert "image: 1 file used in two splits 'img/0.png' (row 3)" in summarize_problems([problem])


def test_same_path_spelt_differently_is_the_same_file(tmp_path: Path) -> None:
    site = cls_site(tmp_path / "site")
    _point_row(site, 1, "image", "./img//0.png")
    (problem,) = validate_site(site)
    assert problem.kind is ProblemKind.SAME_FILE_IN_SPLITS and problem.row == 2


def test_same_bytes_under_another_name_in_another_split_is_flagged(tmp_path: Path) -> None:
    # Prepare: a copy of row 1's (train) image, renamed, used by row 3 (test)
    site = cls_site(tmp_path / "site")
    shutil.copy(site / "img/0.png", site / "img/copy_of_0.png")
    _point_row(site, 2, "image", "img/copy_of_0.png")
    # Execute
    (problem,) = validate_site(site)
    # Assert
    assert problem.kind is ProblemKind.SAME_CONTENT_IN_SPLITS
    assert (problem.row, problem.path) == (3, "img/copy_of_0.png")
    assert "same bytes as 'img/0.png' (row 1, split 'train')" in problem.message


def test_same_bytes_in_one_split_or_same_size_are_not_flagged(tmp_path: Path) -> None:
    # Prepare: row 4 (train) uses a copy of row 1's (train) image; every other file has the
    # same size as another (uncompressed NIfTI), so they are all hashed, and all differ
    site = cls_site(tmp_path / "site")
    shutil.copy(site / "img/0.png", site / "img/copy_of_0.png")
    _point_row(site, 3, "image", "img/copy_of_0.png")
    ct_site = ctpet_site(tmp_path / "ct", n=6)
    # Execute / Assert
    assert validate_site(site) == []
    assert validate_site(ct_site) == []


def test_same_ct_file_in_train_and_test_stops_open_site(tmp_path: Path) -> None:
    site = ctpet_site(tmp_path / "site", n=3)
    _point_row(site, 2, "ct", "img/p0_ct.nii.gz")  # row 3 is test, row 1 train
    with pytest.raises(SiteValidationError, match=r"ct: 1 file used in two splits \(row 3\)"):
        open_site(site)
