"""The learned router's statistics: per-site feature prototypes, their aggregation, scoring.

Routing must pick a skill from the input alone, before any task's preprocessing or stem has
been chosen, so its feature is task-agnostic: :func:`input_descriptor` summarises the *raw*
input by intensity statistics (signed-log quantiles, mean, spread, background and integer
fractions) and geometry (log sizes, log voxel spacing). Every candidate skill sees the same
vector, so distances to the candidates' prototypes are comparable. (Embeddings through each
task's own stem were tried first: each candidate then lives in another space and the demo's two
2D MRI skills were told apart only about two times in three.)

Federation (no raw data leaves a site): each site computes, on its own train split,
:func:`site_prototype` = ``([mean(f), mean(f**2)], n)``: first and second moments of the
descriptor per dimension (no covariance) and its number of examples. The server averages the
vectors of a task's sites weighted by ``n`` (:func:`aggregate_prototypes`), which gives the
pooled moments exactly. At inference the candidates' prototypes are compared with one shared
diagonal metric (the candidates' mean within-task variance): the nearest prototype wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from unicon_core.model import UniconModel

#: Quantiles of the (signed-log) raw intensities in the descriptor.
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Length of :func:`input_descriptor`'s vector.
DESCRIPTOR_LENGTH = len(QUANTILES) + 8
#: Relative floor on a dimension's variance (a dimension constant everywhere would divide by 0).
VARIANCE_FLOOR = 1e-3


def _slog(x: np.ndarray | float) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def input_descriptor(array: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Task-agnostic vector of a raw input: ``(C, *spatial)`` image or ``(F,)`` feature row.

    Intensities are pooled over channels; sizes and spacing are log-scaled (missing axes 0).
    """
    values = np.asarray(array, dtype=np.float64)
    flat = values.reshape(-1)
    if flat.size == 0:
        raise ValueError("input_descriptor: the input has no values")
    spatial = values.shape[1:] if values.ndim > 1 else values.shape
    sizes = sorted((np.log(float(s)) for s in spatial), reverse=True)[:3]
    sizes += [0.0] * (3 - len(sizes))
    step = float(np.mean(spacing)) if spacing is not None and len(spacing) else 1.0
    stats = [
        float(_slog(flat.mean())),
        float(np.log1p(flat.std())),
        float(np.mean(flat == flat.min())),
        float(np.mean(flat == np.round(flat))),
        float(np.log(step)) if step > 0 else 0.0,
    ]
    return np.concatenate([_slog(np.quantile(flat, QUANTILES)), stats, sizes])


def raw_inputs(dataset: Any) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``(array, spacing)`` of each raw input of a site dataset (images read as in training,
    from the validation cache when there; clinical rows as their feature values)."""
    from unicon_core.data.dataset import ImageSiteDataset, TabularSiteDataset, feature_matrix
    from unicon_core.data.readers import read_image

    if isinstance(dataset, TabularSiteDataset):
        yield from ((r, None) for r in feature_matrix(dataset.rows, dataset.spec.feature_names))
    elif isinstance(dataset, ImageSiteDataset):
        root = dataset.site_dir
        for row in dataset.rows:
            images = [
                dataset.cache.get(row[c]) or read_image(root / row[c], root=root)
                for c in dataset.columns
            ]
            yield np.concatenate([im.array for im in images]), images[0].spacing
    else:
        raise TypeError(
            f"site_prototype needs a site dataset (Site.dataset(...)), got {type(dataset).__name__}"
        )


def site_prototype(
    model: UniconModel, dataset: Any, task: str | None = None
) -> tuple[np.ndarray, int]:
    """A site's router statistic over ``dataset`` (its train split, ``Site.dataset("train")``).

    Returns ``(vector, count)``: ``vector`` concatenates the per-dimension mean and mean of
    squares of :func:`input_descriptor` (length ``2 * DESCRIPTOR_LENGTH``), ``count`` the number
    of examples. ``task`` defaults to the dataset's task and must be one of ``model``'s with the
    same spec (a prototype filed under the wrong task would misroute). Only these numbers leave
    the site.
    """
    spec = getattr(dataset, "spec", None)
    task = task or (spec.name if spec is not None else None)
    if task is None:
        raise ValueError("site_prototype: pass task= (the dataset has no .spec)")
    if spec is not None and model.spec(task).to_dict() != spec.to_dict():
        raise ValueError(f"site_prototype: the dataset's task differs from the model's {task!r}")
    feats = [input_descriptor(array, spacing) for array, spacing in raw_inputs(dataset)]
    if not feats:
        raise ValueError(f"site_prototype: the dataset of task {task!r} is empty")
    f = np.stack(feats)
    return np.concatenate([f.mean(0), (f**2).mean(0)]), len(f)


def feature_moments(
    rows: Sequence[Mapping[str, str]], names: Sequence[str]
) -> tuple[np.ndarray, int]:
    """A tabular site's raw-feature moments ``([mean, mean of squares], n)`` over ``rows``.

    Aggregated like prototypes, they give the pooled standardisation that :mod:`predict`
    applies to CSV rows (each site trained on its own train-split statistics).
    """
    from unicon_core.data.dataset import feature_matrix

    if not rows:
        raise ValueError("feature_moments: no rows")
    raw = feature_matrix(rows, names)
    return np.concatenate([raw.mean(0), (raw**2).mean(0)]), len(rows)


@dataclass
class Prototype:
    """Pooled first and second moments of one task's feature and its example count."""

    mean: np.ndarray
    mean_sq: np.ndarray
    count: int

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.mean_sq = np.asarray(self.mean_sq, dtype=np.float64)
        if self.mean.ndim != 1 or self.mean.shape != self.mean_sq.shape:
            raise ValueError(
                f"prototype: mean {self.mean.shape} and mean_sq {self.mean_sq.shape} must be "
                "equal-length vectors"
            )
        if self.count < 1:
            raise ValueError(f"prototype: count must be >= 1, got {self.count}")

    @property
    def variance(self) -> np.ndarray:
        """Per-dimension variance (pooled over the task's sites)."""
        return np.clip(self.mean_sq - self.mean**2, 0.0, None)

    def as_vector(self) -> np.ndarray:
        """``[mean, mean_sq]`` as :func:`site_prototype` returns it."""
        return np.concatenate([self.mean, self.mean_sq])

    @classmethod
    def from_vector(cls, vector: np.ndarray, count: int) -> Prototype:
        """Inverse of :meth:`as_vector`."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.ndim != 1 or len(vector) % 2:
            raise ValueError(f"prototype vector must be 1D of even length, got {vector.shape}")
        half = len(vector) // 2
        return cls(vector[:half], vector[half:], int(count))


def aggregate_prototypes(
    reports: Iterable[tuple[str, np.ndarray, int]],
) -> dict[str, Prototype]:
    """Server side: count-weighted mean of the sites' vectors per task.

    ``reports`` holds ``(task, vector, count)`` per site (what :func:`site_prototype` returned
    there). Averaging first and second moments by counts gives the pooled moments exactly.
    """
    grouped: dict[str, list[tuple[np.ndarray, int]]] = {}
    for task, vector, count in reports:
        if count < 1:
            raise ValueError(f"aggregate_prototypes: task {task!r} reported count {count}")
        grouped.setdefault(task, []).append((np.asarray(vector, dtype=np.float64), int(count)))
    out: dict[str, Prototype] = {}
    for task, items in sorted(grouped.items()):
        shapes = {v.shape for v, _ in items}
        if len(shapes) != 1:
            raise ValueError(
                f"aggregate_prototypes: task {task!r} vectors differ in shape {shapes}"
            )
        total = sum(n for _, n in items)
        mean = sum(v * (n / total) for v, n in items)
        out[task] = Prototype.from_vector(mean, total)
    return out


def nearest_prototype_scores(
    prototypes: Mapping[str, Prototype], features: np.ndarray, candidates: Sequence[str]
) -> dict[str, float]:
    """Mean squared standardised distance of ``features`` to each candidate's prototype.

    One diagonal metric for all candidates (their mean within-task variance, floored), so the
    scores are comparable; the lowest is the nearest prototype.
    """
    features = np.asarray(features, dtype=np.float64)
    protos = [prototypes[c] for c in candidates]
    for c, p in zip(candidates, protos, strict=True):
        if p.mean.shape != features.shape:
            raise ValueError(
                f"router prototype of {c!r} has length {p.mean.shape[0]}, the input's "
                f"descriptor {features.shape[0]} (bundle made by another unicon version?)"
            )
    var = np.mean([p.variance for p in protos], axis=0)
    var = var + VARIANCE_FLOOR * (float(var.mean()) + 1e-12)
    return {
        c: float(np.mean((features - p.mean) ** 2 / var))
        for c, p in zip(candidates, protos, strict=True)
    }
