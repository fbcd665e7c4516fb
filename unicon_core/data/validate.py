"""Validation of a site folder before training: every problem at once, each with file and row.

:func:`validate_site` never stops at the first problem and never drops a row silently; the
dataset opener (:func:`unicon_core.data.site.open_site`) raises
:class:`~unicon_core.data.problems.SiteValidationError` listing all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.manifest import (
    MANIFEST_NAME,
    SITE_JSON_NAME,
    SPLITS,
    Column,
    image_columns,
    is_known_column,
    read_site_json,
    required_columns,
)
from unicon_core.data.problems import Problem
from unicon_core.data.readers import (
    DICOM_ADVICE,
    NIFTI_SUFFIXES,
    ImageData,
    is_supported,
    looks_like_dicom,
    read_image,
)
from unicon_core.data.splits import manifest_splits

#: Keep arrays read during validation for the dataset while their total stays under this.
DEFAULT_CACHE_BYTES = 512 * 2**20


@dataclass
class ValidationResult:
    """Problems plus what was read on the way (so opening a site does not read files twice)."""

    problems: list[Problem] = field(default_factory=list)
    spec: TaskSpec | None = None
    rows: list[dict[str, str]] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    cache: dict[str, ImageData] = field(default_factory=dict)


def validate_site(site_dir: Path | str, spec: TaskSpec | None = None) -> list[Problem]:
    """Check a site folder against its ``site.json`` task (or ``spec`` when given).

    Returns every problem found (an empty list means the site is ready); see ``Problem`` for
    how each names its file and manifest row.
    """
    return check_site(site_dir, spec, cache_bytes=0).problems


def check_site(
    site_dir: Path | str, spec: TaskSpec | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES
) -> ValidationResult:
    """:func:`validate_site` that also returns the manifest rows, splits and images it read."""
    site_dir = Path(site_dir)
    result = ValidationResult()
    if not site_dir.is_dir():
        result.problems.append(Problem(str(site_dir), None, None, "site folder not found"))
        return result
    result.spec = _check_site_json(site_dir, spec, result.problems)
    rows, columns = _read_rows(site_dir, result.problems)
    if rows is None or result.spec is None:
        return result
    result.rows = rows
    checker = _RowChecker(site_dir, result.spec, result.problems, result.cache, cache_bytes)
    checker.check_columns(columns)
    for number, row in enumerate(rows, start=1):
        checker.check_row(number, row)
    result.splits = _check_splits(rows, columns, result.problems)
    return result


def _check_site_json(
    site_dir: Path, spec: TaskSpec | None, problems: list[Problem]
) -> TaskSpec | None:
    path = site_dir / SITE_JSON_NAME
    if not path.is_file():
        problems.append(Problem(SITE_JSON_NAME, None, None, "missing (site metadata and task)"))
        return spec
    try:
        meta = read_site_json(site_dir)
    except (ValueError, TypeError, OSError) as err:
        problems.append(Problem(SITE_JSON_NAME, None, None, f"invalid: {err}"))
        return spec
    if spec is not None:
        ours, theirs = meta.task.to_dict(), spec.to_dict()
        diff = sorted(k for k in theirs if ours.get(k) != theirs[k])
        if diff:
            problems.append(
                Problem(
                    SITE_JSON_NAME,
                    None,
                    "task",
                    f"task differs from the expected task {spec.name!r} in {diff}",
                )
            )
        return spec
    return meta.task


def _read_rows(
    site_dir: Path, problems: list[Problem]
) -> tuple[list[dict[str, str]] | None, list[str]]:
    path = site_dir / MANIFEST_NAME
    if not path.is_file():
        problems.append(Problem(MANIFEST_NAME, None, None, "missing"))
        return None, []
    from unicon_core.data.readers import read_manifest

    try:
        frame = read_manifest(path)
    except Exception as err:  # pandas raises many types for a broken CSV
        problems.append(Problem(MANIFEST_NAME, None, None, f"unreadable CSV ({err})"))
        return None, []
    if frame.empty:
        problems.append(Problem(MANIFEST_NAME, None, None, "has no rows"))
        return None, list(frame.columns)
    columns = [str(c) for c in frame.columns]
    return frame.to_dict(orient="records"), columns


def _check_splits(
    rows: list[dict[str, str]], columns: list[str], problems: list[Problem]
) -> list[str]:
    split_col = Column.SPLIT.value
    has_split = split_col in columns
    pid_col = Column.PATIENT_ID.value
    splits = manifest_splits(
        [r[split_col] for r in rows] if has_split else None,
        [r[pid_col] for r in rows] if pid_col in columns else None,
        len(rows),
    )
    if has_split:
        for number, value in enumerate(splits, start=1):
            if value not in SPLITS:
                problems.append(
                    Problem(MANIFEST_NAME, number, split_col, f"{value!r} is not one of {SPLITS}")
                )
    if has_split and pid_col in columns:
        seen: dict[str, set[str]] = {}
        for row, split in zip(rows, splits, strict=True):
            seen.setdefault(row[pid_col], set()).add(split)
        for pid, where in sorted(seen.items()):
            if len(where) > 1:
                problems.append(
                    Problem(
                        MANIFEST_NAME,
                        None,
                        pid_col,
                        f"patient {pid!r} is in several splits {sorted(where)} (leakage)",
                    )
                )
    for name in SPLITS:
        if name not in splits:
            how = "split column" if has_split else "splits assigned by patient_id"
            problems.append(
                Problem(MANIFEST_NAME, None, split_col, f"split {name!r} is empty ({how})")
            )
    return splits


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _parse_int(text: str) -> int | None:
    value = _parse_float(text)
    if value is None or not math.isfinite(value) or value != int(value):
        return None
    return int(value)


class _RowChecker:
    """Checks one manifest row at a time, appending to a shared problem list."""

    def __init__(
        self,
        site_dir: Path,
        spec: TaskSpec,
        problems: list[Problem],
        cache: dict[str, ImageData],
        cache_bytes: int,
    ) -> None:
        self.site_dir = site_dir
        self.spec = spec
        self.problems = problems
        self.cache = cache
        self.cache_left = cache_bytes
        self.image_cols = image_columns(spec)
        self.ids: dict[str, int] = {}
        self.columns: list[str] = []

    def add(
        self, row: int | None, column: str | None, message: str, path: str | None = None
    ) -> None:
        self.problems.append(Problem(MANIFEST_NAME, row, column, message, path))

    def check_columns(self, columns: list[str]) -> None:
        self.columns = columns
        for name in required_columns(self.spec):
            if name not in columns:
                self.add(None, name, f"required column missing (task {self.spec.name!r})")
        for name in columns:
            if not is_known_column(name, self.spec):
                self.add(
                    None,
                    name,
                    "unknown column (not used by this task; prefix provenance columns with "
                    "'meta_')",
                )

    def check_row(self, number: int, row: dict[str, str]) -> None:
        images = {c: self._image(number, c, row[c]) for c in self.image_cols if c in row}
        loaded = {c: im for c, im in images.items() if im is not None}
        self._check_image_pairs(number, row, loaded)
        if Column.MASK.value in row and (row[Column.MASK.value] or self._is_target("mask")):
            self._check_mask(number, row, loaded)
        for name in self.spec.feature_names:
            if name in row:
                self._number(number, name, row[name], "feature", lambda v: True, "a number")
        self._check_targets(number, row)
        if Column.ID.value in row:
            sample_id = row[Column.ID.value]
            if not sample_id:
                self.add(number, Column.ID.value, "empty id")
            elif sample_id in self.ids:
                self.add(
                    number, Column.ID.value, f"id {sample_id!r} repeats row {self.ids[sample_id]}"
                )
            else:
                self.ids[sample_id] = number
        if Column.PATIENT_ID.value in row and not row[Column.PATIENT_ID.value]:
            self.add(number, Column.PATIENT_ID.value, "empty patient_id")

    def _is_target(self, column: str) -> bool:
        return column in required_columns(self.spec)

    def _check_targets(self, number: int, row: dict[str, str]) -> None:
        label, time, event = Column.LABEL.value, Column.TIME.value, Column.EVENT.value
        if label in row and (row[label] or self._is_target(label)):
            limit = self.spec.num_classes if self.spec.kind is TaskKind.CLASSIFICATION else None
            value = _parse_int(row[label])
            if value is None or value < 0 or (limit is not None and value >= limit):
                want = f"an integer in 0..{limit - 1}" if limit else "an integer >= 0"
                self.add(number, label, f"label {row[label]!r} is not {want}")
        if time in row and (row[time] or self._is_target(time)):
            self._number(number, time, row[time], "survival time", lambda v: v > 0, "> 0")
        if event in row and (row[event] or self._is_target(event)):
            value = _parse_float(row[event])
            if value not in (0.0, 1.0):
                self.add(number, event, f"event {row[event]!r} is not 0 or 1")

    def _number(
        self,
        number: int,
        column: str,
        text: str,
        what: str,
        ok: Callable[[float], bool],
        want: str,
    ) -> None:
        value = _parse_float(text)
        if value is None or not math.isfinite(value):
            self.add(number, column, f"{what} {text!r} is not a finite number")
        elif not ok(value):
            label = "non-positive " if want == "> 0" else ""
            self.add(number, column, f"{label}{what} {text!r} (must be {want})")

    def _image(
        self, number: int, column: str, cell: str, is_mask: bool = False
    ) -> ImageData | None:
        """Read one file a cell names, reporting why it cannot be used."""
        if not cell:
            self.add(number, column, "empty path")
            return None
        path = self.site_dir / cell
        if Path(cell).is_absolute() or ".." in Path(cell).parts:
            self.add(number, column, "path must be relative to the site folder", cell)
            return None
        if path.is_dir():
            what = "a folder of DICOM files" if looks_like_dicom(path) else "a folder"
            self.add(number, column, f"is {what}, not an image file; {DICOM_ADVICE}", cell)
            return None
        if not path.is_file():
            self.add(number, column, "file not found", cell)
            return None
        if not is_supported(path):
            advice = f": {DICOM_ADVICE}" if looks_like_dicom(path) else ""
            self.add(number, column, f"unsupported file type{advice}", cell)
            return None
        try:
            image = read_image(path)
        except Exception as err:  # nibabel/PIL/zlib raise many types for a broken file
            kind = (
                "corrupt or truncated NIfTI"
                if cell.lower().endswith(NIFTI_SUFFIXES)
                else ("unreadable image")
            )
            self.add(number, column, f"{kind} ({type(err).__name__}: {err})", cell)
            return None
        bad = int(np.size(image.array) - np.isfinite(image.array).sum())
        if bad:
            self.add(number, column, f"{bad} NaN/Inf voxel(s)", cell)
            return None
        dims = image.array.ndim - 1
        if dims != self.spec.spatial_dims:
            self.add(
                number,
                column,
                f"{dims}D image, task {self.spec.name!r} is {self.spec.spatial_dims}D "
                f"(shape {image.spatial_shape})",
                cell,
            )
            return None
        want = 1 if (is_mask or len(self.image_cols) > 1) else self.spec.channels
        if image.array.shape[0] != want:
            self.add(number, column, f"{image.array.shape[0]} channel(s), expected {want}", cell)
            return None
        if image.array.nbytes <= self.cache_left:
            self.cache[cell] = image
            self.cache_left -= image.array.nbytes
        return image

    def _check_image_pairs(
        self, number: int, row: dict[str, str], loaded: dict[str, ImageData]
    ) -> None:
        if len(loaded) < 2:
            return
        first, *rest = loaded
        ref = loaded[first]
        for col in rest:
            other = loaded[col]
            if other.spatial_shape != ref.spatial_shape:
                self.add(
                    number,
                    col,
                    f"{col} shape {other.spatial_shape} != {first} shape {ref.spatial_shape}",
                    row[col],
                )
            elif not np.allclose(other.affine, ref.affine, atol=1e-4):
                self.add(number, col, f"{col} affine differs from {first} affine", row[col])

    def _check_mask(self, number: int, row: dict[str, str], loaded: dict[str, ImageData]) -> None:
        column = Column.MASK.value
        cell = row[column]
        if self.spec.modality is Modality.CLINICAL:
            return
        mask = self._image(number, column, cell, is_mask=True)
        if mask is None:
            return
        values = np.unique(mask.array)
        if not np.all(values == np.round(values)):
            self.add(number, column, "mask has non-integer values", cell)
            return
        outside = [int(v) for v in values if v < 0 or v >= self.spec.num_classes]
        if outside:
            self.add(
                number,
                column,
                f"mask labels {outside} outside the task's classes 0..{self.spec.num_classes - 1}",
                cell,
            )
        if loaded:
            ref_col = next(iter(loaded))
            ref = loaded[ref_col]
            if mask.spatial_shape != ref.spatial_shape:
                self.add(
                    number,
                    column,
                    f"mask shape {mask.spatial_shape} != image shape {ref.spatial_shape}",
                    cell,
                )
            elif not np.allclose(mask.affine, ref.affine, atol=1e-4):
                self.add(number, column, f"mask affine differs from {ref_col} affine", cell)
