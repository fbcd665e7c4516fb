"""``unicon init-site``: a plain folder of images (or a CSV) becomes a site folder.

What it reads (``SRC``):

* a folder of **class subfolders** (``SRC/<class>/*.png|jpg|nii.gz``): classification, labels
  0, 1, ... in sorted class-name order (``site.json`` ``labels`` keeps the names);
* a folder with ``images/`` and ``masks/`` (files paired by name): segmentation, classes from
  the largest mask value;
* a folder or file with a **labels CSV** whose file column names images relative to it;
* a **clinical CSV**: survival when it has time and event columns, classification when it has a
  label column; every other numeric column is a feature (two-valued text columns are coded
  0/1, said so).

It writes ``OUT/site.json`` (the inferred task, its preprocessing included: colour files get
``to_gray`` and 2D classification ``pad_square``, so training, evaluation and ``predict`` do the
same), ``OUT/manifest.csv`` (with a seeded split, stratified by label or event and grouped by
patient when there is a patient column), the images copied under ``OUT/files/`` and
``OUT/skipped.csv`` listing every file, row or column left out and why. Nothing is asked
interactively: what was inferred is returned (and printed by the command); flags override it.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.manifest import (
    MANIFEST_NAME,
    Column,
    SiteMetadata,
    SiteRole,
    Split,
    image_columns,
    write_site_json,
)
from unicon_core.data.readers import (
    DICOM_ADVICE,
    NIFTI_SUFFIXES,
    PIL_SUFFIXES,
    is_supported,
    looks_like_dicom,
    read_image,
)
from unicon_core.data.splits import DEFAULT_FRACTIONS, stratified_splits

SKIPPED_NAME = "skipped.csv"
FILES_DIR = "files"
#: Default input size per spatial dimensionality (multiples of the default patch size 8).
DEFAULT_SIZE = {2: [64, 64], 3: [32, 32, 32]}
_TIME = re.compile(r"^(time|survival_?time|duration|os_?time|rfs_?time|.*_time|time_.*|days|"
                   r"months|follow_?up)$", re.I)
_EVENT = re.compile(r"^(event|status|dead|death|died|censor.*|cens|os_?event|.*_event)$", re.I)
_LABEL = re.compile(r"^(label|target|outcome|class|diagnosis|y)$", re.I)
_PATIENT = re.compile(r"^(patient_?id|patient|pid|subject_?id|subject)$", re.I)
_ID = re.compile(r"^(id|record_?id|row_?id|index|unnamed: ?0)$", re.I)
_FILE = re.compile(r"^(image|file|filename|path|image_?path|img)$", re.I)
_NAME_BAD = re.compile(r"[^a-z0-9_]+")


class InitSiteError(ValueError):
    """``SRC`` cannot become a site; the message names the file, row or column."""


@dataclass
class InitOptions:
    """Overrides of what :func:`init_site` infers (``None``: infer)."""

    task_name: str | None = None
    kind: str | None = None
    modality: str | None = None
    label_column: str | None = None
    time_column: str | None = None
    event_column: str | None = None
    image_column: str | None = None
    patient_column: str | None = None
    size: list[int] | None = None
    fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    seed: int = 0
    site_name: str | None = None
    role: str = SiteRole.TRAIN.value
    task_file: Path | None = None
    synthetic: bool = False


@dataclass
class InitReport:
    """What :func:`init_site` wrote and inferred."""

    site_dir: Path
    metadata: SiteMetadata
    rows: list[dict[str, str]]
    skipped: list[tuple[str, str]]
    inferred: list[str]

    def text(self) -> str:
        """Human-readable summary: what was inferred, split sizes, every skipped item."""
        counts = Counter(r[Column.SPLIT.value] for r in self.rows)
        spec = self.metadata.task
        lines = [f"site {self.metadata.site!r} in {self.site_dir}: task {spec.name!r} "
                 f"({spec.kind.value}, {spec.modality.value}), {len(self.rows)} rows "
                 f"(train {counts['train']}, val {counts['val']}, test {counts['test']})"]
        lines += [f"  inferred: {line}" for line in self.inferred]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} (listed in "
                         f"{self.site_dir / SKIPPED_NAME}):")
            lines += [f"    {what}: {why}" for what, why in self.skipped]
        else:
            lines.append("  skipped nothing")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ helpers
def task_name_from(text: str) -> str:
    """A valid task name (``[a-z][a-z0-9_]*``, at most 48 characters) from a folder name."""
    name = _NAME_BAD.sub("_", text.lower()).strip("_") or "task"
    if not name[0].isalpha():
        name = f"t_{name}"
    return name[:48]


def read_task_file(path: Path) -> dict[str, Any]:
    """A task spec mapping from a YAML or JSON file (hydra's ``defaults`` key ignored)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise InitSiteError(f"{path}: cannot read the task file ({err})") from None
    if not isinstance(data, dict):
        raise InitSiteError(f"{path}: a task file holds a mapping of TaskSpec fields")
    data.pop("defaults", None)
    return data


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [dict(r) for r in reader]
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InitSiteError(f"{path}: unreadable CSV ({err})") from None
    if not columns:
        raise InitSiteError(f"{path}: the CSV has no header row")
    for number, row in enumerate(rows, start=1):
        if None in row:
            raise InitSiteError(f"{path}: row {number} has more cells than the header")
    return columns, [{k: (v or "").strip() for k, v in r.items()} for r in rows]


def _pick(columns: Sequence[str], pattern: re.Pattern[str], given: str | None,
          what: str, src: Path) -> str | None:
    if given is not None:
        if given not in columns:
            raise InitSiteError(f"{src}: no column {given!r} for the {what} (columns: "
                                f"{list(columns)})")
        return given
    found = [c for c in columns if pattern.match(c.strip())]
    return found[0] if found else None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _event(text: str) -> int | None:
    low = text.strip().lower()
    if low in {"1", "1.0", "true", "yes", "dead", "died", "event"}:
        return 1
    if low in {"0", "0.0", "false", "no", "alive", "censored"}:
        return 0
    return None


def _code_labels(values: Sequence[str]) -> tuple[list[int], list[str]]:
    """Integer codes 0..K-1 (kept when the labels already are), and the class names."""
    distinct = sorted(set(values))
    ints = [int(v) for v in distinct if re.fullmatch(r"\d+", v)]
    if len(ints) == len(distinct) and sorted(ints) == list(range(len(ints))):
        return [int(v) for v in values], [str(i) for i in range(len(ints))]
    index = {v: i for i, v in enumerate(distinct)}
    return [index[v] for v in values], distinct


# ------------------------------------------------------------------------------ images
@dataclass
class _Image:
    source: Path
    label: str | None = None
    mask: Path | None = None
    patient: str | None = None
    dims: int = 0
    channels: int = 0
    shape: tuple[int, ...] = ()


def _probe(item: _Image, skipped: list[tuple[str, str]], where: str) -> bool:
    """Read the file (header-checked, as validate does); record why when it cannot be used."""
    try:
        data = read_image(item.source, root=item.source.parent)
    except (ValueError, OSError) as err:
        skipped.append((where, f"unreadable: {err}"))
        return False
    item.dims = data.array.ndim - 1
    item.channels = int(data.array.shape[0])
    item.shape = tuple(data.array.shape[1:])
    if item.dims not in (2, 3):
        skipped.append((where, f"{item.dims}D image (2D or 3D only)"))
        return False
    if item.channels not in (1, 3) or (item.channels == 3 and item.dims != 2):
        skipped.append((where, f"{item.channels} channels (one grey channel, or RGB PNG/JPEG)"))
        return False
    if item.mask is not None:
        try:
            mask = read_image(item.mask, root=item.mask.parent).array
        except (ValueError, OSError) as err:
            skipped.append((where, f"mask {item.mask.name} unreadable: {err}"))
            return False
        if tuple(mask.shape[1:]) != item.shape or mask.shape[0] != 1:
            skipped.append((where, f"mask {item.mask.name} shape {tuple(mask.shape)} does not "
                            f"match the image's {item.shape}"))
            return False
        if np.any(mask < 0) or np.any(mask != np.round(mask)):
            skipped.append((where, f"mask {item.mask.name} holds values that are not "
                            "non-negative integer labels"))
            return False
        item.label = str(int(mask.max()))
    return True


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _from_class_folders(src: Path, skipped: list[tuple[str, str]]) -> list[_Image]:
    items = []
    for path in _image_files(src):
        rel = path.relative_to(src)
        if len(rel.parts) < 2:
            skipped.append((str(rel), "not inside a class subfolder"))
        elif not is_supported(path):
            skipped.append((str(rel), _not_an_image(path)))
        else:
            items.append(_Image(path, label=rel.parts[0]))
    return items


def _not_an_image(path: Path) -> str:
    """Why a file is not read: DICOM (with how to convert it), else not an image suffix."""
    if looks_like_dicom(path):
        return DICOM_ADVICE
    return f"not an image file ({'/'.join(NIFTI_SUFFIXES + PIL_SUFFIXES)})"


def _from_masks(src: Path, skipped: list[tuple[str, str]]) -> list[_Image]:
    masks = {_stem(p): p for p in _image_files(src / "masks") if is_supported(p)}
    items = []
    for path in _image_files(src / "images"):
        rel = str(path.relative_to(src))
        if not is_supported(path):
            skipped.append((rel, _not_an_image(path)))
        elif _stem(path) not in masks:
            skipped.append((rel, f"no mask named {_stem(path)}.* in masks/"))
        else:
            items.append(_Image(path, mask=masks.pop(_stem(path))))
    skipped += [(str(p.relative_to(src)), "mask without an image") for p in masks.values()]
    return items


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *PIL_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _from_labels_csv(
    path: Path, opts: InitOptions, skipped: list[tuple[str, str]]
) -> list[_Image]:
    columns, rows = _read_csv(path)
    file_col = _pick(columns, _FILE, opts.image_column, "image files", path)
    label_col = _pick(columns, _LABEL, opts.label_column, "label", path)
    if file_col is None or label_col is None:
        raise InitSiteError(f"{path}: a labels CSV needs an image-file column and a label "
                            f"column (found {columns}); name them with --image-column and "
                            "--label-column")
    pid_col = _pick(columns, _PATIENT, opts.patient_column, "patient id", path)
    items = []
    for number, row in enumerate(rows, start=1):
        where = f"{path.name} row {number}"
        file = path.parent / row[file_col]
        if not row[file_col] or not file.is_file():
            skipped.append((where, f"{file_col} {row[file_col]!r}: no such file"))
        elif not row[label_col]:
            skipped.append((where, f"empty {label_col}"))
        else:
            items.append(_Image(file, label=row[label_col],
                                patient=row[pid_col] if pid_col else None))
    return items


def _copy(item: _Image, src: Path, out: Path, sub: str, index: int) -> str:
    """Copy a file into the site (sites are self-contained) and return its manifest path."""
    source = item.mask if sub == "masks" else item.source
    assert source is not None
    name = f"{index:06d}_{_NAME_BAD.sub('_', _stem(source).lower())[:60]}"
    suffix = source.name[len(_stem(source)):].lower()
    rel = Path(FILES_DIR) / sub / f"{name}{suffix}"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out / rel)
    return rel.as_posix()


def _image_site(
    src: Path, out: Path, items: list[_Image], kind: TaskKind, opts: InitOptions,
    skipped: list[tuple[str, str]], inferred: list[str],
) -> tuple[dict[str, Any], list[dict[str, str]], list[str] | None]:
    usable = [it for it in items if _probe(it, skipped, _rel(it.source, src))]
    if not usable:
        raise InitSiteError(f"{src}: no usable image (see the skipped list: "
                            f"{skipped[:3]})")
    dims = Counter(it.dims for it in usable).most_common(1)[0][0]
    for it in [it for it in usable if it.dims != dims]:
        skipped.append((_rel(it.source, src), f"{it.dims}D, the other images are {dims}D"))
    usable = [it for it in usable if it.dims == dims]
    colour = sum(it.channels == 3 for it in usable)
    preprocess: dict[str, Any] = {}
    if colour:
        preprocess["to_gray"] = True
        inferred.append(f"{colour} colour image(s): converted to grey by the task's "
                        "preprocess (to_gray), in training, evaluation and predict alike")
    if kind is TaskKind.CLASSIFICATION and dims == 2:
        preprocess["pad_square"] = True
        inferred.append("2D classification: every image padded square, then resized to one "
                        "size (image geometry cannot tell the label)")
    size = list(opts.size) if opts.size else DEFAULT_SIZE[dims]
    shapes = Counter(it.shape for it in usable)
    inferred.append(f"{dims}D, {len(shapes)} distinct image size(s) (most common "
                    f"{shapes.most_common(1)[0][0]}), resized to {size}")
    labels = [str(it.label) for it in usable]
    names: list[str] | None
    if kind is TaskKind.SEGMENTATION:
        num_classes = max(2, max(int(v) for v in labels) + 1)
        codes, names = [0] * len(usable), None
        inferred.append(f"segmentation, {num_classes} classes (0 = background) from the masks")
    else:
        codes, names = _code_labels(labels)
        num_classes = max(2, len(names))
        inferred.append("labels " + ", ".join(f"{n!r} -> {i}" for i, n in enumerate(names)))
    spec = {
        "kind": kind.value, "modality": (opts.modality or Modality.MRI.value),
        "spatial_dims": dims, "channels": 1, "input_size": size, "num_classes": num_classes,
        **({"preprocess": preprocess} if preprocess else {}),
    }
    column = image_columns(TaskSpec(**{k: v for k, v in spec.items() if k != "preprocess"},
                                    name="probe"))[0]
    rows = []
    for i, (it, code) in enumerate(zip(usable, codes, strict=True)):
        row = {Column.ID.value: f"{i:06d}", column: _copy(it, src, out, "images", i)}
        if kind is TaskKind.SEGMENTATION:
            row[Column.MASK.value] = _copy(it, src, out, "masks", i)
        else:
            row[Column.LABEL.value] = str(code)
        if it.patient:
            row[Column.PATIENT_ID.value] = it.patient
        row["meta_source"] = _rel(it.source, src)
        rows.append(row)
    strata = [str(c) for c in codes] if kind is not TaskKind.SEGMENTATION else None
    groups = [it.patient or f"row{i}" for i, it in enumerate(usable)]
    return spec, _with_splits(rows, groups, strata, opts), names


def _rel(path: Path, src: Path) -> str:
    try:
        return str(path.relative_to(src))
    except ValueError:
        return str(path)


def _with_splits(
    rows: list[dict[str, str]], groups: list[str], strata: list[str] | None, opts: InitOptions
) -> list[dict[str, str]]:
    if SiteRole(opts.role) is SiteRole.EVALUATION:
        splits = [Split.TEST.value] * len(rows)
    else:
        splits = stratified_splits(groups, strata, opts.fractions, seed=opts.seed)
    for row, split in zip(rows, splits, strict=True):
        row[Column.SPLIT.value] = split
    return rows


# ---------------------------------------------------------------------------- clinical
def _clinical_site(
    path: Path, opts: InitOptions, skipped: list[tuple[str, str]], inferred: list[str]
) -> tuple[dict[str, Any], list[dict[str, str]], list[str] | None]:
    columns, raw = _read_csv(path)
    if not raw:
        raise InitSiteError(f"{path}: the CSV has no data rows")
    time_col = _pick(columns, _TIME, opts.time_column, "survival time", path)
    event_col = _pick(columns, _EVENT, opts.event_column, "event", path)
    label_col = _pick(columns, _LABEL, opts.label_column, "label", path)
    kind = TaskKind(opts.kind) if opts.kind else (
        TaskKind.SURVIVAL if time_col and event_col else TaskKind.CLASSIFICATION
    )
    if kind is TaskKind.SURVIVAL and not (time_col and event_col):
        raise InitSiteError(f"{path}: survival needs a time and an event column (found "
                            f"{columns}); name them with --time-column and --event-column")
    if kind is TaskKind.CLASSIFICATION and not label_col:
        raise InitSiteError(f"{path}: no label column (found {columns}); name it with "
                            "--label-column, or give --time-column/--event-column for survival")
    if kind is TaskKind.SEGMENTATION:
        raise InitSiteError(f"{path}: a clinical CSV cannot be a segmentation task")
    targets = [time_col, event_col] if kind is TaskKind.SURVIVAL else [label_col]
    pid_col = _pick(columns, _PATIENT, opts.patient_column, "patient id", path)
    reserved = {c for c in (*targets, pid_col) if c}
    if kind is TaskKind.SURVIVAL:
        inferred.append(f"survival: time {time_col!r}, event {event_col!r}")
    else:
        inferred.append(f"classification: label {label_col!r}")
    features, codes = [], {}
    for col in columns:
        if col in reserved:
            continue
        if _ID.match(col.strip()) or col.strip().lower() in {c.value for c in Column}:
            skipped.append((f"column {col!r}", "an identifier or reserved name, not a feature"))
            continue
        values = [r[col] for r in raw if r[col] != ""]
        numeric = [v for v in values if _number(v) is not None]
        distinct = sorted(set(values))
        if values and len(numeric) == len(values):
            features.append(col)
        elif len(distinct) == 2:
            codes[col] = {distinct[0]: "0", distinct[1]: "1"}
            features.append(col)
            inferred.append(f"column {col!r} coded {distinct[0]!r} -> 0, {distinct[1]!r} -> 1")
        else:
            bad = sorted(set(values) - set(numeric))[:3]
            skipped.append((f"column {col!r}", f"not numeric (e.g. {bad}) and not two-valued; "
                            "encode it as numbers to use it"))
    if not features:
        raise InitSiteError(f"{path}: no numeric feature column besides {sorted(reserved)}")
    reserved_names = {c.value for c in Column}
    names = [task_name_from(f) for f in features]
    names = [f"f_{n}" if n in reserved_names or n.startswith("meta_") else n for n in names]
    if len(set(names)) != len(names):
        raise InitSiteError(f"{path}: feature columns {features} give clashing names {names}; "
                            "rename them")
    renamed = [f"{f!r} -> {n!r}" for f, n in zip(features, names, strict=True) if f != n]
    if renamed:
        inferred.append(f"feature columns renamed: {', '.join(renamed)}")
    inferred.append(f"{len(features)} feature(s): {', '.join(features)}")
    rows, groups, strata = [], [], []
    for number, r in enumerate(raw, start=1):
        where = f"{path.name} row {number}"
        missing = [c for c in (*features, *targets) if r[c] == ""]
        if missing:
            skipped.append((where, f"empty {', '.join(missing)}"))
            continue
        row: dict[str, str] = {Column.ID.value: f"{number:06d}"}
        for col, name in zip(features, names, strict=True):
            row[name] = codes[col][r[col]] if col in codes else r[col]
        if kind is TaskKind.SURVIVAL:
            t, e = _number(r[time_col]), _event(r[event_col])
            if t is None or t <= 0:
                skipped.append((where, f"{time_col} {r[time_col]!r} is not a positive number"))
                continue
            if e is None:
                skipped.append((where, f"{event_col} {r[event_col]!r} is not 0/1"))
                continue
            row[Column.TIME.value], row[Column.EVENT.value] = repr(t), str(e)
            strata.append(str(e))
        else:
            row[Column.LABEL.value] = r[label_col]
            strata.append(r[label_col])
        if pid_col:
            row[Column.PATIENT_ID.value] = r[pid_col]
        groups.append(r[pid_col] if pid_col else f"row{number}")
        rows.append(row)
    if not rows:
        raise InitSiteError(f"{path}: every row was skipped ({skipped[:3]})")
    label_names = None
    if kind is TaskKind.CLASSIFICATION:
        label_codes, label_names = _code_labels([r[Column.LABEL.value] for r in rows])
        for row, code in zip(rows, label_codes, strict=True):
            row[Column.LABEL.value] = str(code)
        strata = [str(c) for c in label_codes]
        inferred.append("labels " + ", ".join(f"{n!r} -> {i}" for i, n in enumerate(label_names)))
    spec = {"kind": kind.value, "modality": Modality.CLINICAL.value, "spatial_dims": 0,
            "input_size": [len(names)], "feature_names": names,
            "num_classes": max(2, len(label_names or []))}
    return spec, _with_splits(rows, groups, strata, opts), label_names


# ------------------------------------------------------------------------------ entry
def init_site(src: Path, out: Path, opts: InitOptions | None = None) -> InitReport:
    """Build site folder ``out`` from ``src`` (see the module docstring); ``out`` must be new
    or empty. Raises :class:`InitSiteError` naming the file, row or column when it cannot."""
    opts = opts or InitOptions()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(2, "no such file or folder", str(src))
    if out.exists() and any(out.iterdir()):
        raise InitSiteError(f"{out}: not empty; init-site writes a new site folder")
    SiteRole(opts.role)  # a bad role fails before anything is written
    skipped: list[tuple[str, str]] = []
    inferred: list[str] = []
    csvs = [src] if src.is_file() else sorted(src.glob("*.csv"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        spec_data, rows, names = _build(src, out, csvs, opts, skipped, inferred)
        name = opts.task_name or task_name_from(src.stem if src.is_file() else src.name)
        spec_data["name"] = name
        if opts.task_file is not None:
            given = read_task_file(opts.task_file)
            inferred.append(f"task fields {sorted(given)} from {opts.task_file}")
            spec_data.update(given)
        try:
            spec = TaskSpec.from_dict(spec_data)
        except (TypeError, ValueError) as err:
            raise InitSiteError(f"the task spec is not valid: {err}") from None
        meta = SiteMetadata(
            site=opts.site_name or out.name,
            synthetic=bool(opts.synthetic),
            source=f"unicon init-site from {src.name}",
            description=f"built by unicon init-site from {src} (seed {opts.seed})",
            task=spec,
            role=SiteRole(opts.role),
            labels=names,
        )
    except BaseException:
        shutil.rmtree(out / FILES_DIR, ignore_errors=True)
        raise
    _write_rows(out / MANIFEST_NAME, rows)
    write_site_json(out, meta)
    _write_rows(out / SKIPPED_NAME, [{"what": w, "why": y} for w, y in skipped],
                columns=["what", "why"])
    return InitReport(out, meta, rows, skipped, inferred)


def _build(
    src: Path, out: Path, csvs: list[Path], opts: InitOptions,
    skipped: list[tuple[str, str]], inferred: list[str],
) -> tuple[dict[str, Any], list[dict[str, str]], list[str] | None]:
    if src.is_file() or (csvs and not any(p.is_dir() for p in src.iterdir())):
        path = csvs[0] if len(csvs) == 1 else None
        if path is None:
            raise InitSiteError(f"{src}: {len(csvs)} CSV files; pass the one to use")
        columns, _ = _read_csv(path)
        file_col = _pick(columns, _FILE, opts.image_column, "image files", path)
        if file_col is not None:
            kind = TaskKind(opts.kind or TaskKind.CLASSIFICATION.value)
            items = _from_labels_csv(path, opts, skipped)
            return _image_site(path.parent, out, items, kind, opts, skipped, inferred)
        return _clinical_site(path, opts, skipped, inferred)
    if (src / "images").is_dir() and (src / "masks").is_dir():
        items = _from_masks(src, skipped)
        return _image_site(src, out, items, TaskKind.SEGMENTATION, opts, skipped, inferred)
    if len(csvs) == 1:
        items = _from_labels_csv(csvs[0], opts, skipped)
        kind = TaskKind(opts.kind or TaskKind.CLASSIFICATION.value)
        return _image_site(src, out, items, kind, opts, skipped, inferred)
    classes = [p for p in src.iterdir() if p.is_dir()]
    if len(classes) < 2:
        raise InitSiteError(f"{src}: found neither class subfolders (two or more), images/ + "
                            "masks/, a labels CSV nor a clinical CSV")
    items = _from_class_folders(src, skipped)
    return _image_site(src, out, items, TaskKind.CLASSIFICATION, opts, skipped, inferred)


def _write_rows(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
