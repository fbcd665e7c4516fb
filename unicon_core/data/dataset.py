"""Torch datasets over one split of a validated site; items are dicts keyed by ``BatchKey``.

Images: ``input`` float32 ``(C, *input_size)``; clinical: ``input`` float32 ``(F,)`` z-scored with
the site's train-split statistics. Targets: ``label`` int64 scalar, ``mask`` int64
``(1, *input_size)``, ``time`` float32, ``event`` float32 (0/1); ``id`` a string. Every item of a
dataset has the same keys, so ``DataLoader``'s default collate works. ``with_meta=True`` adds
``meta`` to write predictions back in the input's space (see :class:`ImageSiteDataset`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unicon_core.config import TaskKind, TaskSpec
from unicon_core.data.manifest import Column, image_columns
from unicon_core.data.readers import ImageData, read_image
from unicon_core.data.transforms import GEOMETRY_KEY, to_meta_tensor
from unicon_core.keys import BatchKey

#: Key of the optional per-item metadata dict (``with_meta=True``).
META_KEY = BatchKey.META.value


def target_keys(spec: TaskSpec, rows: Sequence[Mapping[str, str]]) -> list[str]:
    """Target columns items carry: the task's own plus any optional target column filled in
    every given row (a CT segmentation site may also carry survival time and event)."""
    keys = {
        TaskKind.CLASSIFICATION: [Column.LABEL.value],
        TaskKind.SEGMENTATION: [Column.MASK.value],
        TaskKind.SURVIVAL: [Column.TIME.value, Column.EVENT.value],
    }[spec.kind]
    optional = [Column.LABEL.value, Column.TIME.value, Column.EVENT.value]
    if spec.modality.value != "clinical":
        optional.append(Column.MASK.value)
    for name in optional:
        if name not in keys and rows and all(row.get(name, "") != "" for row in rows):
            keys.append(name)
    return keys


def _scalar_targets(row: Mapping[str, str], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if Column.LABEL.value in keys:
        out[BatchKey.LABEL.value] = torch.tensor(int(float(row[Column.LABEL.value])))
    if Column.TIME.value in keys:
        out[BatchKey.TIME.value] = torch.tensor(float(row[Column.TIME.value]), dtype=torch.float32)
    if Column.EVENT.value in keys:
        out[BatchKey.EVENT.value] = torch.tensor(
            float(row[Column.EVENT.value]), dtype=torch.float32
        )
    return out


class _SiteRows(Dataset):
    """Shared bookkeeping: the split's rows, their manifest numbers and sample ids."""

    def __init__(
        self,
        site_name: str,
        rows: Sequence[Mapping[str, str]],
        numbers: Sequence[int],
        spec: TaskSpec,
        with_meta: bool,
    ) -> None:
        if len(rows) != len(numbers):
            raise ValueError("rows and manifest row numbers differ in length")
        self.site_name = site_name
        self.rows = list(rows)
        self.numbers = list(numbers)
        self.spec = spec
        self.with_meta = with_meta
        self.targets = target_keys(spec, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def sample_id(self, index: int) -> str:
        """The row's ``id`` cell, else ``<site>:<manifest row>``."""
        row = self.rows[index]
        return row.get(Column.ID.value) or f"{self.site_name}:{self.numbers[index]}"


@dataclass
class ItemMemo:
    """Outputs of a deterministic (evaluation) pipeline by item index, up to ``max_bytes``.

    Evaluation reads the same held-out items every round and stage; reorientation, resizing
    and intensity scaling cost more than the tiny models' forward pass, so a site keeps the
    results. Items past the budget are simply recomputed each time.
    """

    max_bytes: int
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    nbytes: int = 0

    def get(self, index: int) -> dict[str, Any] | None:
        """A shallow copy of the stored item (its tensors are shared, never modified)."""
        item = self.items.get(index)
        return None if item is None else dict(item)

    def put(self, index: int, item: Mapping[str, Any]) -> None:
        """Keep ``item`` if it fits in the budget."""
        size = sum(v.nbytes for v in item.values() if isinstance(v, (torch.Tensor, np.ndarray)))
        if index not in self.items and self.nbytes + size <= self.max_bytes:
            self.items[index] = dict(item)
            self.nbytes += size


class ImageSiteDataset(_SiteRows):
    """Image samples of one split, read (or taken from the validation cache) and transformed.

    For training pipelines, augmentation is reseeded per item from ``(seed, epoch, index)`` so
    it is deterministic whatever the worker or order; call :meth:`set_epoch` every epoch. 3D
    images reach the pipeline as ``MetaTensor`` carrying their file's affine, so they are
    reoriented/resampled as configured; cached arrays are shared, never modified.

    ``with_meta=True`` adds ``meta`` describing the first image column's file (the input
    space): ``affine`` its 4x4 voxel-to-world matrix as stored on disk (nibabel's RAS+ mm
    convention; identity for PNG/JPEG), ``spacing`` and ``shape`` (spatial, before any
    preprocessing), ``geometry`` (``affine`` and ``shape`` of the reoriented/resampled grid
    just before resize/crop; the file's own for 2D or when nothing was reoriented), ``row``
    (manifest row) and ``path``. :func:`~unicon_core.data.transforms.to_input_space` maps a
    prediction back onto the file's grid with them.
    """

    def __init__(
        self,
        site_dir: Path,
        site_name: str,
        rows: Sequence[Mapping[str, str]],
        numbers: Sequence[int],
        spec: TaskSpec,
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        train: bool = False,
        seed: int = 0,
        cache: Mapping[str, ImageData] | None = None,
        with_meta: bool = False,
        memo: ItemMemo | None = None,
    ) -> None:
        super().__init__(site_name, rows, numbers, spec, with_meta)
        if memo is not None and (train or with_meta):
            raise ValueError("memo: only for deterministic evaluation items without meta")
        self.memo = memo
        self.site_dir = Path(site_dir)
        self.transform = transform
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.cache = cache if cache is not None else {}
        self.columns = image_columns(spec)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (training datasets only matter)."""
        self.epoch = int(epoch)

    def _load(self, cell: str) -> ImageData:
        """The validation cache's copy, else the file read under the site's rules (it must
        still resolve inside the site folder: it may have changed since validation)."""
        return self.cache.get(cell) or read_image(self.site_dir / cell, root=self.site_dir)

    def _pipeline_input(self, image: ImageData) -> Any:
        """3D: a ``MetaTensor`` sharing the (cached) array and carrying the affine; 2D: the
        array (PNG/JPEG have no real affine, 2D slices are not reoriented)."""
        if self.spec.spatial_dims == 3:
            return to_meta_tensor(image.array, image.affine)
        return image.array

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.memo is not None and (kept := self.memo.get(index)) is not None:
            return kept
        row = self.rows[index]
        images = {c: self._load(row[c]) for c in self.columns}
        data: dict[str, Any] = {c: self._pipeline_input(im) for c, im in images.items()}
        if Column.MASK.value in self.targets:
            mask = self._load(row[Column.MASK.value])
            data[BatchKey.MASK.value] = self._pipeline_input(mask)
        if self.train and hasattr(self.transform, "set_random_state"):
            draw = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
            self.transform.set_random_state(seed=int(draw))
        out = dict(self.transform(data))
        geometry = out.pop(GEOMETRY_KEY, None)
        out.update(_scalar_targets(row, self.targets))
        out[BatchKey.ID.value] = self.sample_id(index)
        if self.with_meta:
            first = images[self.columns[0]]
            affine = torch.as_tensor(first.affine, dtype=torch.float64)
            shape = torch.as_tensor(first.spatial_shape, dtype=torch.int64)
            out[META_KEY] = {
                "affine": affine,
                "spacing": torch.as_tensor(first.spacing, dtype=torch.float64),
                "shape": shape,
                "geometry": geometry or {"affine": affine.clone(), "shape": shape.clone()},
                "row": torch.tensor(self.numbers[index]),
                "path": row[self.columns[0]],
            }
        if self.memo is not None:
            self.memo.put(index, out)
        return out


class TabularSiteDataset(_SiteRows):
    """Clinical samples of one split: features z-scored with given (train-split) statistics."""

    def __init__(
        self,
        site_name: str,
        rows: Sequence[Mapping[str, str]],
        numbers: Sequence[int],
        spec: TaskSpec,
        mean: np.ndarray,
        std: np.ndarray,
        with_meta: bool = False,
    ) -> None:
        super().__init__(site_name, rows, numbers, spec, with_meta)
        raw = feature_matrix(self.rows, spec.feature_names)
        self.features = torch.as_tensor((raw - mean) / std, dtype=torch.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {BatchKey.INPUT.value: self.features[index]}
        out.update(_scalar_targets(self.rows[index], self.targets))
        out[BatchKey.ID.value] = self.sample_id(index)
        if self.with_meta:
            out[META_KEY] = {"row": torch.tensor(self.numbers[index])}
        return out


def feature_matrix(rows: Sequence[Mapping[str, str]], names: Sequence[str]) -> np.ndarray:
    """``(N, F)`` float64 matrix of the named feature columns."""
    return np.array([[float(row[n]) for n in names] for row in rows], dtype=np.float64).reshape(
        len(rows), len(names)
    )


def standardisation(
    train_rows: Sequence[Mapping[str, str]], names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature over the train rows (std 0 becomes 1)."""
    if not train_rows:
        raise ValueError("feature statistics need at least one train row")
    raw = feature_matrix(train_rows, names)
    std = raw.std(axis=0)
    return raw.mean(axis=0), np.where(std > 0, std, 1.0)
