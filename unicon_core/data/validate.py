"""Validation of a site folder before training: every problem at once, each with file and row.

:func:`validate_site` never stops at the first problem and never drops a row silently; the
dataset opener (:func:`unicon_core.data.site.open_site`) raises
:class:`~unicon_core.data.problems.SiteValidationError` listing all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    SiteRole,
    Split,
    image_columns,
    is_known_column,
    read_site_json,
    required_columns,
)
from unicon_core.data.problems import Problem, ProblemKind
from unicon_core.data.readers import (
    DICOM_ADVICE,
    GREYSCALE_ADVICE,
    NIFTI_SUFFIXES,
    ImageData,
    ImageRefusedError,
    is_supported,
    looks_like_dicom,
    read_image,
    resolves_inside,
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
        result.problems.append(
            Problem(
                str(site_dir), None, None, "site folder not found", kind=ProblemKind.SITE_FOLDER
            )
        )
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
    result.splits = _check_splits(rows, columns, result.problems, _role(site_dir))
    _check_files_across_splits(
        site_dir, rows, result.splits, image_columns(result.spec), result.problems
    )
    return result


def _check_site_json(
    site_dir: Path, spec: TaskSpec | None, problems: list[Problem]
) -> TaskSpec | None:
    path = site_dir / SITE_JSON_NAME
    if not path.is_file():
        problems.append(
            Problem(
                SITE_JSON_NAME, None, None, "missing (site metadata and task)",
                kind=ProblemKind.SITE_JSON,
            )
        )
        return spec
    try:
        meta = read_site_json(site_dir)
    except (ValueError, TypeError, OSError) as err:
        problems.append(
            Problem(SITE_JSON_NAME, None, None, f"invalid: {err}", kind=ProblemKind.SITE_JSON)
        )
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
                    kind=ProblemKind.SITE_JSON,
                )
            )
        return spec
    return meta.task


def _read_rows(
    site_dir: Path, problems: list[Problem]
) -> tuple[list[dict[str, str]] | None, list[str]]:
    path = site_dir / MANIFEST_NAME
    if not path.is_file():
        problems.append(Problem(MANIFEST_NAME, None, None, "missing", kind=ProblemKind.MANIFEST))
        return None, []
    from unicon_core.data.readers import read_manifest

    try:
        frame = read_manifest(path)
    except Exception as err:  # pandas raises many types for a broken CSV
        problems.append(
            Problem(MANIFEST_NAME, None, None, f"unreadable CSV ({err})", kind=ProblemKind.MANIFEST)
        )
        return None, []
    if frame.empty:
        problems.append(
            Problem(MANIFEST_NAME, None, None, "has no rows", kind=ProblemKind.MANIFEST)
        )
        return None, list(frame.columns)
    columns = [str(c) for c in frame.columns]
    return frame.to_dict(orient="records"), columns


def _role(site_dir: Path) -> SiteRole:
    """The site's role from ``site.json`` (train when it cannot be read: reported elsewhere)."""
    try:
        return read_site_json(site_dir).role
    except (ValueError, TypeError, OSError):
        return SiteRole.TRAIN


def _check_splits(
    rows: list[dict[str, str]],
    columns: list[str],
    problems: list[Problem],
    role: SiteRole = SiteRole.TRAIN,
) -> list[str]:
    """Every row's split; each split must hold rows, except on an evaluation-only site (role
    ``evaluation`` or a ``split`` column naming only ``test``), whose rows must all be test."""
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
                    Problem(
                        MANIFEST_NAME, number, split_col, f"{value!r} is not one of {SPLITS}",
                        kind=ProblemKind.INVALID_VALUE, value=value,
                        hint=f"split names are {', '.join(SPLITS)} (lower case)",
                    )
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
                        kind=ProblemKind.PATIENT_IN_SPLITS,
                        value=pid,
                    )
                )
    only_test = has_split and set(splits) == {Split.TEST.value}
    if role is SiteRole.EVALUATION or only_test:
        not_test = [n for n, s in enumerate(splits, start=1) if s != Split.TEST.value]
        if not has_split or not_test:
            problems.append(
                Problem(
                    MANIFEST_NAME, not_test[0] if not_test else None, split_col,
                    "an evaluation-only site (site.json role 'evaluation') holds test rows only, "
                    f"found {len(not_test) if has_split else len(splits)} other row(s)",
                    kind=ProblemKind.EMPTY_SPLIT, value=None,
                    hint="give every row split=test, or drop role 'evaluation' to train here",
                )
            )
        return splits
    for name in SPLITS:
        if name not in splits:
            how = "split column" if has_split else "splits assigned by patient_id"
            problems.append(
                Problem(
                    MANIFEST_NAME, None, split_col, f"split {name!r} is empty ({how})",
                    kind=ProblemKind.EMPTY_SPLIT, value=name,
                )
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


def _is_number(text: str) -> bool:
    value = _parse_float(text)
    return value is not None and math.isfinite(value)


def _usable_cell(site_dir: Path, cell: str) -> Path | None:
    """The file a manifest cell names, if it is a relative path to an existing file that
    resolves inside the site folder (one reached through a symlink leaving the site is refused
    by the image check and never opened here)."""
    if not cell or Path(cell).is_absolute() or ".." in Path(cell).parts:
        return None
    path = site_dir / cell
    if not path.is_file() or not resolves_inside(site_dir, path):
        return None
    return path


def _digest(path: Path) -> str | None:
    """A content hash of the file, or ``None`` if it cannot be read (reported elsewhere)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _refusal_reason(err: ImageRefusedError, path: Path) -> str:
    """A refusal's message without the leading ``<path>: `` (the problem names the file)."""
    text = str(err)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


@dataclass(frozen=True)
class _Use:
    """One manifest cell naming a file: where it is and which split its row is in."""

    row: int
    column: str
    cell: str
    split: str


def _check_files_across_splits(
    site_dir: Path,
    rows: list[dict[str, str]],
    splits: list[str],
    columns: list[str],
    problems: list[Problem],
) -> None:
    """Flag an input file used by rows of different splits: a test image that is also a
    training image makes held-out metrics meaningless.

    Same file: cells naming one file (after resolving ``./``, symlinks). Same content: files
    with equal bytes under different names; only files whose size matches another's are
    hashed, each once, so a site without copies costs one ``stat`` per file. A row is flagged
    when its split differs from the split of the first row using that file (or content).
    Files that resolve outside the site folder are skipped, never opened: the image check
    reports them as refused.
    """
    by_file: dict[Path, list[_Use]] = {}
    for number, (row, split) in enumerate(zip(rows, splits, strict=True), start=1):
        for column in columns:
            path = _usable_cell(site_dir, str(row.get(column) or ""))
            if path is not None:
                use = _Use(number, column, row[column], split)
                by_file.setdefault(path.resolve(), []).append(use)
    flagged: set[tuple[int, str]] = set()

    def flag(use: _Use, first: _Use, what: str, kind: ProblemKind) -> None:
        """Report ``use`` once when its split differs from ``first``'s."""
        if use.split == first.split or (use.row, use.column) in flagged:
            return
        flagged.add((use.row, use.column))
        problems.append(Problem(MANIFEST_NAME, use.row, use.column,
                                f"{what}; this row is in {use.split!r}", use.cell, kind=kind))

    for uses in by_file.values():
        first = uses[0]
        for use in uses[1:]:
            flag(use, first, f"file also used by row {first.row} in split {first.split!r}",
                 ProblemKind.SAME_FILE_IN_SPLITS)
    by_size: dict[int, list[Path]] = {}
    for path in by_file:
        with contextlib.suppress(OSError):
            by_size.setdefault(path.stat().st_size, []).append(path)
    by_digest: dict[str, list[Path]] = {}
    for paths in by_size.values():
        for path in paths if len(paths) > 1 else ():
            digest = _digest(path)
            if digest is not None:
                by_digest.setdefault(digest, []).append(path)
    for paths in by_digest.values():
        if len(paths) < 2:
            continue
        paths = sorted(paths, key=lambda p: by_file[p][0].row)
        first = by_file[paths[0]][0]
        for path in paths[1:]:
            for use in by_file[path]:
                flag(use, first,
                     f"same bytes as {first.cell!r} (row {first.row}, split {first.split!r})",
                     ProblemKind.SAME_CONTENT_IN_SPLITS)


#: Fix for pandas' index written as the first, unnamed column.
PANDAS_INDEX_HINT = "pandas wrote its index as a column: save with df.to_csv(path, index=False)"
TIME_HINT = "survival times must be > 0 (e.g. days to event or censoring); fix or drop these rows"
EVENT_HINT = "event is 1 (event observed) or 0 (censored)"


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
        #: colour files are converted by the task's own pipeline (``preprocess.to_gray``)
        self.to_gray = bool((spec.preprocess or {}).get("to_gray", False))
        self.ids: dict[str, int] = {}
        self.columns: list[str] = []

    def add(
        self,
        row: int | None,
        column: str | None,
        message: str,
        path: str | None = None,
        kind: ProblemKind = ProblemKind.OTHER,
        value: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problems.append(Problem(MANIFEST_NAME, row, column, message, path, kind, value, hint))

    def check_columns(self, columns: list[str]) -> None:
        self.columns = columns
        for name in required_columns(self.spec):
            if name not in columns:
                self.add(
                    None,
                    name,
                    f"required column missing (task {self.spec.name!r})",
                    kind=ProblemKind.MISSING_COLUMN,
                )
        for name in columns:
            if not is_known_column(name, self.spec):
                self.add(
                    None,
                    name,
                    "unknown column (not used by this task; prefix provenance columns with "
                    "'meta_')",
                    kind=ProblemKind.UNKNOWN_COLUMN,
                    hint=PANDAS_INDEX_HINT if name.startswith("Unnamed: ") else None,
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
                self.add(number, Column.ID.value, "empty id", kind=ProblemKind.EMPTY_CELL)
            elif sample_id in self.ids:
                self.add(
                    number,
                    Column.ID.value,
                    f"id {sample_id!r} repeats row {self.ids[sample_id]}",
                    kind=ProblemKind.DUPLICATE_ID,
                    value=sample_id,
                )
            else:
                self.ids[sample_id] = number
        if Column.PATIENT_ID.value in row and not row[Column.PATIENT_ID.value]:
            self.add(
                number, Column.PATIENT_ID.value, "empty patient_id", kind=ProblemKind.EMPTY_CELL
            )

    def _is_target(self, column: str) -> bool:
        return column in required_columns(self.spec)

    def _check_targets(self, number: int, row: dict[str, str]) -> None:
        label, time, event = Column.LABEL.value, Column.TIME.value, Column.EVENT.value
        if label in row and (row[label] or self._is_target(label)):
            limit = self.spec.num_classes if self.spec.kind is TaskKind.CLASSIFICATION else None
            text = row[label]
            value = _parse_int(text)
            if value is None or value < 0 or (limit is not None and value >= limit):
                want = f"an integer in 0..{limit - 1}" if limit else "an integer >= 0"
                if not text.strip():
                    self.add(number, label, "empty label", kind=ProblemKind.EMPTY_CELL)
                elif not _is_number(text):
                    self.add(
                        number, label, f"label {text!r} is not {want}",
                        kind=ProblemKind.NOT_A_NUMBER, value=text,
                    )
                else:
                    self.add(
                        number, label, f"label {text!r} is not {want}",
                        kind=ProblemKind.OUT_OF_RANGE, value=text,
                        hint=f"labels are class codes, {want}",
                    )
        if time in row and (row[time] or self._is_target(time)):
            self._number(
                number, time, row[time], "survival time", lambda v: v > 0, "> 0", TIME_HINT
            )
        if event in row and (row[event] or self._is_target(event)):
            text = row[event]
            if not text.strip():
                self.add(number, event, "empty event", kind=ProblemKind.EMPTY_CELL)
            elif _parse_float(text) not in (0.0, 1.0):
                kind = ProblemKind.OUT_OF_RANGE if _is_number(text) else ProblemKind.NOT_A_NUMBER
                hint = EVENT_HINT if kind is ProblemKind.OUT_OF_RANGE else None
                self.add(
                    number, event, f"event {text!r} is not 0 or 1", kind=kind, value=text,
                    hint=hint,
                )

    def _number(
        self,
        number: int,
        column: str,
        text: str,
        what: str,
        ok: Callable[[float], bool],
        want: str,
        hint: str | None = None,
    ) -> None:
        if not str(text).strip():
            self.add(number, column, f"empty {what}", kind=ProblemKind.EMPTY_CELL)
            return
        value = _parse_float(text)
        if value is None or not math.isfinite(value):
            self.add(
                number, column, f"{what} {text!r} is not a finite number",
                kind=ProblemKind.NOT_A_NUMBER, value=text,
            )
        elif not ok(value):
            label = "non-positive " if want == "> 0" else ""
            self.add(
                number, column, f"{label}{what} {text!r} (must be {want})",
                kind=ProblemKind.OUT_OF_RANGE, value=text, hint=hint,
            )

    def _image(
        self, number: int, column: str, cell: str, is_mask: bool = False
    ) -> ImageData | None:
        """Read one file a cell names, reporting why it cannot be used."""
        if not cell:
            self.add(number, column, "empty path", kind=ProblemKind.EMPTY_CELL)
            return None
        path = self.site_dir / cell
        if Path(cell).is_absolute() or ".." in Path(cell).parts:
            self.add(
                number, column, "path must be relative to the site folder", cell,
                kind=ProblemKind.BAD_PATH,
            )
            return None
        if path.is_dir():
            dicom = looks_like_dicom(path)
            what = "a folder of DICOM files" if dicom else "a folder"
            self.add(
                number, column, f"is {what}, not an image file; {DICOM_ADVICE}", cell,
                kind=ProblemKind.DICOM if dicom else ProblemKind.BAD_PATH,
            )
            return None
        if not path.is_file():
            self.add(number, column, "file not found", cell, kind=ProblemKind.MISSING_FILE)
            return None
        if not is_supported(path):
            dicom = looks_like_dicom(path)
            advice = f": {DICOM_ADVICE}" if dicom else ""
            self.add(
                number, column, f"unsupported file type{advice}", cell,
                kind=ProblemKind.DICOM if dicom else ProblemKind.UNSUPPORTED_FILE,
            )
            return None
        try:
            image = read_image(path)
        except ImageRefusedError as err:  # a rule of the readers, not a broken file
            reason = _refusal_reason(err, path)
            self.add(
                number, column, f"refused: {reason}", cell, kind=ProblemKind.REFUSED_FILE,
                hint=reason,
            )
            return None
        except Exception as err:  # nibabel/PIL/zlib raise many types for a broken file
            kind = (
                "corrupt or truncated NIfTI"
                if cell.lower().endswith(NIFTI_SUFFIXES)
                else ("unreadable image")
            )
            self.add(
                number, column, f"{kind} ({type(err).__name__}: {err})", cell,
                kind=ProblemKind.UNREADABLE_FILE,
            )
            return None
        bad = int(np.size(image.array) - np.isfinite(image.array).sum())
        if bad:
            self.add(
                number, column, f"{bad} NaN/Inf voxel(s)", cell,
                kind=ProblemKind.NON_FINITE_VOXELS,
            )
            return None
        dims = image.array.ndim - 1
        if dims != self.spec.spatial_dims:
            self.add(
                number,
                column,
                f"{dims}D image, task {self.spec.name!r} is {self.spec.spatial_dims}D "
                f"(shape {image.spatial_shape})",
                cell,
                kind=ProblemKind.WRONG_DIMENSIONS,
            )
            return None
        want = 1 if (is_mask or len(self.image_cols) > 1) else self.spec.channels
        have = image.array.shape[0]
        if have == 3 and want == 1 and not is_mask and self.to_gray:
            have = 1  # the task's preprocess (to_gray) makes it one grey channel
        if have != want:
            colour = want == 1 and have in (3, 4) and not cell.lower().endswith(NIFTI_SUFFIXES)
            self.add(
                number, column, f"{have} channel(s), expected {want}", cell,
                kind=ProblemKind.WRONG_CHANNELS, hint=GREYSCALE_ADVICE if colour else None,
            )
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
                    kind=ProblemKind.GEOMETRY_MISMATCH,
                )
            elif not np.allclose(other.affine, ref.affine, atol=1e-4):
                self.add(
                    number, col, f"{col} affine differs from {first} affine", row[col],
                    kind=ProblemKind.GEOMETRY_MISMATCH,
                )

    def _check_mask(self, number: int, row: dict[str, str], loaded: dict[str, ImageData]) -> None:
        column = Column.MASK.value
        cell = row[column]
        if self.spec.modality is Modality.CLINICAL:
            return
        mask = self._image(number, column, cell, is_mask=True)
        if mask is None:
            return
        classes = f"0..{self.spec.num_classes - 1}"
        hint = f"mask values are integer labels {classes} (0 = background)"
        values = np.unique(mask.array)
        if not np.all(values == np.round(values)):
            self.add(
                number, column, "mask has non-integer values", cell,
                kind=ProblemKind.MASK_VALUES, hint=hint,
            )
            return
        outside = [int(v) for v in values if v < 0 or v >= self.spec.num_classes]
        if outside:
            self.add(
                number,
                column,
                f"mask labels {outside} outside the task's classes {classes}",
                cell,
                kind=ProblemKind.MASK_VALUES,
                hint=hint,
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
                    kind=ProblemKind.GEOMETRY_MISMATCH,
                )
            elif not np.allclose(mask.affine, ref.affine, atol=1e-4):
                self.add(
                    number, column, f"mask affine differs from {ref_col} affine", cell,
                    kind=ProblemKind.GEOMETRY_MISMATCH,
                )
