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
    assert "convert it to greyscale first" in line and ".convert('L')" in line


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


# ------------------------------------------------------------------------- refused files
def test_refused_image_has_its_own_kind_with_the_refusal_as_hint(tmp_path: Path) -> None:
    # Prepare: a 5000 x 5000 PNG header, far over what a 16 x 16 task's site may hold
    from tests.unicon_core.data.crafted import png_bytes

    site = cls_site(tmp_path / "site")
    (site / "img/3.png").write_bytes(png_bytes(5000, 5000))
    # Execute
    (problem,) = validate_site(site)
    line = summarize_problems([problem])
    # Assert: not "unreadable" with "re-export or re-copy"; the hint is the reader's reason
    assert problem.kind is ProblemKind.REFUSED_FILE
    assert (problem.row, problem.column, problem.path) == (4, "image", "img/3.png")
    assert problem.message == f"refused: {problem.hint}"
    assert problem.hint is not None and problem.hint.startswith("5000 x 5000 pixels")
    assert "over the limit" in problem.hint and str(site) not in problem.hint
    assert line.startswith("  - image: 1 refused image 'img/3.png' (row 4) — 5000 x 5000 pixels")
    assert "unreadable" not in line and "re-export" not in line


def test_refused_nifti_is_not_called_corrupt(tmp_path: Path) -> None:
    from tests.unicon_core.data.crafted import nifti_claiming

    site = ctpet_site(tmp_path / "site")
    nifti_claiming(site / "img/p1_pet.nii.gz", (2048, 2048, 1024))
    (problem,) = validate_site(site, CTPET_SPEC)
    assert problem.kind is ProblemKind.REFUSED_FILE and (problem.row, problem.column) == (2, "pet")
    assert "corrupt" not in problem.message and "over the limit" in problem.message


def test_refusal_paths_stay_out_of_the_summary_without_values(tmp_path: Path) -> None:
    # Prepare: a symlink to a file outside the site (its resolved path is in the refusal)
    site = cls_site(tmp_path / "site")
    outside = tmp_path / "private" / "secret.png"
    outside.parent.mkdir()
    shutil.move(site / "img/2.png", outside)
    (site / "img/2.png").symlink_to(outside)
    problems = validate_site(site)
    # Execute
    shown, hidden = summarize_problems(problems), summarize_problems(problems, values=False)
    # Assert: the reason with values, the kind's hint without them
    assert str(outside) in shown and "outside the site folder" in shown
    assert str(outside) not in hidden and "private" not in hidden
    assert hidden.startswith("  - image: 1 refused image (row 3) — a reading rule refuses it")


# ------------------------------------------------------------------------- one greyscale advice
def test_validate_and_predict_give_the_same_greyscale_advice(tmp_path: Path) -> None:
    from unicon_core.data.readers import GREYSCALE_ADVICE
    from unicon_core.inference.inputs import collect_inputs, load_input
    from unicon_core.inference.routing import incompatibility

    site = cls_site(tmp_path / "site")
    colour = np.random.default_rng(3).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(colour).save(site / "img/1.png")
    (problem,) = validate_site(site)
    (ref,) = collect_inputs([site / "img/1.png"])
    why = incompatibility(CLS_SPEC, load_input(ref))
    assert problem.message == "3 channel(s), expected 1" and problem.hint == GREYSCALE_ADVICE
    assert why is not None and GREYSCALE_ADVICE in why


# ------------------------------------------------------------------------- links leaving the site
def _link_outside(site: Path, rows: tuple[int, ...], same_target: bool, root: Path) -> list[Path]:
    """Replace ``img/<row>.png`` by links to files outside the site, with equal bytes (one
    shared target when ``same_target``); returns the targets."""
    root.mkdir()
    pixels = np.full((20, 24), 9, np.uint8)
    targets = []
    for i in rows:
        target = root / ("shared.png" if same_target else f"copy{i}.png")
        Image.fromarray(pixels).save(target)
        (site / f"img/{i}.png").unlink()
        (site / f"img/{i}.png").symlink_to(target)
        targets.append(target)
    return targets


@pytest.mark.parametrize("same_target", [True, False])
def test_links_leaving_the_site_are_not_hashed_or_compared_across_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_target: bool
) -> None:
    # Prepare: rows 1 (train) and 3 (test) link out of the site, to one file or to equal copies
    from unicon_core.data import validate as validate_module

    site = cls_site(tmp_path / "site")
    targets = _link_outside(site, (0, 2), same_target, tmp_path / "outside")
    hashed: list[Path] = []
    real_digest = validate_module._digest
    monkeypatch.setattr(
        validate_module, "_digest", lambda p: hashed.append(p) or real_digest(p)
    )
    # Execute
    problems = validate_site(site)
    # Assert: only the two refusals; nothing outside the site was opened for the split check
    assert [(p.row, p.kind) for p in problems] == [
        (1, ProblemKind.REFUSED_FILE), (3, ProblemKind.REFUSED_FILE)
    ]
    assert not any(p.resolve() in targets for p in hashed)
