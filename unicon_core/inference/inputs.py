"""Prediction inputs: what a command-line argument names, and reading one input.

An argument is one of

* a NIfTI, PNG or JPEG file: one image input;
* ``CT,PET`` (two image files joined by a comma): one multi-channel input, channels in the given
  order (CT first for a CT+PET task);
* a CSV file: one tabular input per row (``id`` column names it, else the row number);
* a folder: each supported file in it, sorted; ``<x>_ct.nii[.gz]`` next to ``<x>_pet.nii[.gz]``
  becomes one CT+PET pair.

Problems (missing, empty, unreadable, mismatched pair) raise :class:`InputError` naming the file.
Images are read by the readers ``validate`` uses, under the same rules (sizes checked from
headers, values kept or refused, never silently changed; see :mod:`unicon_core.data.readers`).
Each input gets an output name that is safe as a file name and unique in the run
(:func:`safe_name`), whatever its file name or CSV ``id`` holds.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unicon_core.data.readers import (
    NIFTI_SUFFIXES,
    ImageLimits,
    ImageRefusedError,
    is_supported,
)

CSV_SUFFIX = ".csv"
_PAIR_TAGS = ("_ct", "_pet")
#: Output names this long at most (before ``_mask.nii.gz``/``.json``).
MAX_NAME_LENGTH = 100
#: Names a run writes itself (``summary.json``), and names some systems reserve.
RESERVED_NAMES = frozenset(
    {"summary", "con", "prn", "aux", "nul"}
    | {f"{dev}{i}" for dev in ("com", "lpt") for i in range(1, 10)}
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class InputError(ValueError):
    """An input cannot be used; the message names the file."""


@dataclass
class InputRef:
    """One input before reading: its files, or one CSV row."""

    name: str
    paths: list[Path]
    row: dict[str, str] | None = None
    row_number: int | None = None

    @property
    def label(self) -> str:
        """How messages name this input (files, and the CSV row if any)."""
        files = ",".join(str(p) for p in self.paths)
        return f"{files} row {self.row_number}" if self.row is not None else files


@dataclass
class LoadedInput:
    """A read input: an image ``array`` ``(C, *spatial)`` with its geometry, or a CSV ``row``."""

    ref: InputRef
    array: np.ndarray | None = None
    affine: np.ndarray | None = None
    header: Any = None
    row: dict[str, str] | None = None
    columns: list[str] = field(default_factory=list)

    @property
    def is_tabular(self) -> bool:
        """True for a CSV row."""
        return self.row is not None

    @property
    def channels(self) -> int:
        """Channel count of an image (0 for a row)."""
        return 0 if self.array is None else int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of an image (empty for a row)."""
        return () if self.array is None else tuple(int(s) for s in self.array.shape[1:])

    @property
    def spatial_dims(self) -> int:
        """2 or 3 for an image, 0 for a row."""
        return len(self.spatial_shape)

    def describe(self) -> str:
        """e.g. ``3D image, 2 channels, shape (32, 32, 32)`` or ``CSV row``."""
        if self.is_tabular:
            return f"CSV row with columns {self.columns}"
        return f"{self.spatial_dims}D image, {self.channels} channel(s), shape {self.spatial_shape}"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, ".png", ".jpg", ".jpeg", CSV_SUFFIX):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _csv_refs(path: Path) -> list[InputRef]:
    import pandas as pd

    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser errors
        raise InputError(f"{path}: not a readable CSV file ({exc})") from exc
    if frame.empty:
        raise InputError(f"{path}: CSV has a header but no rows")
    refs = []
    for i, row in enumerate(frame.to_dict(orient="records"), start=1):
        name = str(row.get("id") or f"{_stem(path)}_row{i}")
        refs.append(InputRef(name=name, paths=[path], row=dict(row), row_number=i))
    return refs


def _folder_refs(folder: Path) -> list[InputRef]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    usable = [p for p in files if is_supported(p) or p.name.lower().endswith(CSV_SUFFIX)]
    if not usable:
        raise InputError(f"{folder}: folder holds no NIfTI, PNG, JPEG or CSV file")
    by_stem = {_stem(p): p for p in usable}
    refs: list[InputRef] = []
    used: set[Path] = set()
    for path in usable:
        if path in used:
            continue
        stem = _stem(path)
        if stem.endswith(_PAIR_TAGS[0]) and f"{stem[:-3]}{_PAIR_TAGS[1]}" in by_stem:
            pet = by_stem[f"{stem[:-3]}{_PAIR_TAGS[1]}"]
            refs.append(InputRef(name=stem[:-3], paths=[path, pet]))
            used.update({path, pet})
        elif stem.endswith(_PAIR_TAGS[1]) and f"{stem[:-4]}{_PAIR_TAGS[0]}" in by_stem:
            continue  # taken with its CT partner
        elif path.name.lower().endswith(CSV_SUFFIX):
            refs += _csv_refs(path)
        else:
            refs.append(InputRef(name=stem, paths=[path]))
    return refs


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")


def collect_inputs(args: list[Path]) -> list[InputRef]:
    """Expand command-line arguments into inputs (folders, pairs, CSV rows)."""
    if not args:
        raise InputError("no input given: name a file, a CT,PET pair, a CSV file or a folder")
    refs: list[InputRef] = []
    for arg in args:
        parts = [Path(p) for p in str(arg).split(",")] if "," in str(arg) else [Path(arg)]
        for part in parts:
            _check_file(part)
        if len(parts) > 1:
            bad = [str(p) for p in parts if not is_supported(p)]
            if bad:
                raise InputError(f"{arg}: multi-channel inputs must be images, not {bad}")
            refs.append(InputRef(name=_stem(parts[0]).removesuffix(_PAIR_TAGS[0]), paths=parts))
        elif parts[0].is_dir():
            refs += _folder_refs(parts[0])
        elif parts[0].name.lower().endswith(CSV_SUFFIX):
            refs += _csv_refs(parts[0])
        elif is_supported(parts[0]):
            refs.append(InputRef(name=_stem(parts[0]), paths=parts))
        else:
            raise InputError(
                f"{parts[0]}: unsupported file type (NIfTI, PNG, JPEG or CSV; convert DICOM to "
                "NIfTI first)"
            )
    return unique_names(refs)


def safe_name(name: str) -> str:
    """``name`` as a file name that cannot leave its folder or hide: ASCII letters, digits,
    ``.``, ``_`` and ``-`` only, not starting with ``.`` or ``-``, at most
    ``MAX_NAME_LENGTH`` characters (a long name keeps a hash of the whole), never empty and
    never a reserved name. Safe names are returned unchanged."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", ascii_text).strip("._-")
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    if len(text) > MAX_NAME_LENGTH:
        text = f"{text[: MAX_NAME_LENGTH - 9].rstrip('._-')}_{digest}"
    if not text:
        text = f"input_{digest}"
    if text.split(".")[0].lower() in RESERVED_NAMES:
        text = f"{text}_"
    return text


def unique_names(refs: list[InputRef]) -> list[InputRef]:
    """Give every input a :func:`safe_name` unique in the run, ignoring case (a second ``a``
    becomes ``a_2``, or ``a_3`` if an input is already called ``a_2``). Changes ``ref.name``."""
    taken = set(RESERVED_NAMES)
    for ref in refs:
        base = safe_name(ref.name)
        name, count = base, 1
        while name.lower() in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name.lower())
        ref.name = name
    return refs


def _read_one(path: Path, limits: ImageLimits | None) -> tuple[np.ndarray, np.ndarray, Any]:
    from unicon_core.data.readers import read_image

    _check_file(path)
    try:
        image = read_image(path, limits)
    except ImageRefusedError as exc:  # the message names the file and what to do
        raise InputError(str(exc)) from exc
    except Exception as exc:  # nibabel/PIL/zlib raise many types for a corrupt file
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    array = image.array
    if array.size == 0:
        raise InputError(f"{path}: image has no voxels (shape {array.shape})")
    bad = int(array.size - np.isfinite(array).sum())
    if bad:
        raise InputError(f"{path}: image holds {bad} NaN or infinite value(s)")
    header = image.header.copy() if image.header is not None else None
    return array, image.affine, header


def load_input(ref: InputRef, limits: ImageLimits | None = None) -> LoadedInput:
    """Read an input's files (or take its CSV row); channels of several files are stacked.

    ``limits`` bound each file's size (checked from its header; see
    :meth:`~unicon_core.data.readers.ImageLimits.for_tasks` for a bundle's); by default a
    file in a site folder gets its site's limits and any other file the cap.
    """
    if ref.row is not None:
        return LoadedInput(ref=ref, row=ref.row, columns=list(ref.row))
    arrays, affine, header = [], None, None
    for path in ref.paths:
        array, aff, hdr = _read_one(path, limits)
        if arrays and array.shape[1:] != arrays[0].shape[1:]:
            raise InputError(
                f"{ref.label}: {path} has spatial shape {array.shape[1:]} but {ref.paths[0]} has "
                f"{arrays[0].shape[1:]}; the files of one input must be aligned"
            )
        if affine is None:
            affine, header = aff, hdr
        arrays.append(array)
    return LoadedInput(ref=ref, array=np.concatenate(arrays, axis=0), affine=affine, header=header)
