"""Out-of-distribution flags at inference, calibrated on held-out (validation) data.

The score of an input for a skill is its mean squared standardised distance to that skill's
router prototype, measured with the skill's *own* pooled variance (the router compares
candidates with a shared metric instead): :func:`ood_score` on the task-agnostic
:func:`~unicon_core.inference.prototypes.input_descriptor` of the raw input. The prototype is
the federated summary of the train splits, so the threshold must come from other rows:
:func:`calibrate_ood` scores every site's **validation** split (never ``test``, which stays
for reporting) and sets ``threshold = margin * quantile(scores, q)``. An input scoring above
it is flagged ``in_distribution: false``; ``predict --refuse-ood`` then skips it and reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from unicon_core.inference.prototypes import (
    VARIANCE_FLOOR,
    Prototype,
    input_descriptor,
    raw_inputs,
)

#: The only split calibration reads (the prototypes come from ``train``; ``test`` is reserved).
CALIBRATION_SPLIT = "val"
#: Quantile of the validation scores the threshold starts from, and the margin applied to it.
DEFAULT_QUANTILE = 0.99
DEFAULT_MARGIN = 1.5


@dataclass
class OODCalibration:
    """A skill's OOD threshold and how it was chosen (stored in the bundle's manifest)."""

    threshold: float
    quantile: float = DEFAULT_QUANTILE
    margin: float = DEFAULT_MARGIN
    split: str = CALIBRATION_SPLIT
    count: int = 0
    sites: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.threshold = float(self.threshold)
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise ValueError(f"ood calibration: threshold must be > 0, got {self.threshold}")
        if self.split != CALIBRATION_SPLIT:
            raise ValueError(
                f"ood calibration: chosen on split {self.split!r}; only {CALIBRATION_SPLIT!r} "
                "is allowed (test rows are for reporting)"
            )
        self.sites = [str(s) for s in self.sites]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OODCalibration:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(data))


def ood_score(prototype: Prototype, descriptor: np.ndarray) -> float:
    """Mean squared standardised distance of ``descriptor`` to ``prototype`` (its own
    variance, floored as the router floors it); about 1 for a typical training input."""
    features = np.asarray(descriptor, dtype=np.float64)
    if features.shape != prototype.mean.shape:
        raise ValueError(
            f"ood_score: descriptor length {features.shape} != prototype {prototype.mean.shape}"
        )
    var = prototype.variance
    var = var + VARIANCE_FLOOR * (float(var.mean()) + 1e-12)
    return float(np.mean((features - prototype.mean) ** 2 / var))


def dataset_scores(prototype: Prototype, dataset: Any) -> np.ndarray:
    """:func:`ood_score` of every raw input of a site dataset (images as read in training)."""
    return np.array(
        [ood_score(prototype, input_descriptor(a, s)) for a, s in raw_inputs(dataset)],
        dtype=np.float64,
    )


def calibrate_ood(
    prototypes: Mapping[str, Prototype],
    sites: Iterable[Any],
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
) -> dict[str, OODCalibration]:
    """Per task with a prototype, the threshold from its sites' validation splits.

    ``sites`` are opened :class:`~unicon_core.data.site.Site` objects; only
    ``site.dataset("val")`` is read. A task whose sites have no validation rows gets no
    calibration (its predictions say ``in_distribution: null``).
    """
    if not 0.0 < quantile <= 1.0 or margin < 1.0:
        raise ValueError(f"calibrate_ood: quantile in (0, 1] and margin >= 1, got {quantile}, "
                         f"{margin}")
    scores: dict[str, list[np.ndarray]] = {}
    names: dict[str, list[str]] = {}
    for site in sites:
        task = site.task_spec.name
        if task not in prototypes or not site.split_rows(CALIBRATION_SPLIT):
            continue
        scores.setdefault(task, []).append(
            dataset_scores(prototypes[task], site.dataset(CALIBRATION_SPLIT))
        )
        names.setdefault(task, []).append(site.name)
    out = {}
    for task, parts in sorted(scores.items()):
        values = np.concatenate(parts)
        base = float(np.quantile(values, quantile))
        out[task] = OODCalibration(
            threshold=max(margin * base, 1e-6),
            quantile=quantile,
            margin=margin,
            count=len(values),
            sites=sorted(names[task]),
        )
    return out


def ood_flag(
    prototype: Prototype | None, calibration: OODCalibration | None, descriptor: np.ndarray
) -> dict[str, Any]:
    """What a prediction reports: ``in_distribution`` (``None`` without a calibrated
    threshold), ``score``, ``threshold`` and the split the threshold was chosen on."""
    if prototype is None or calibration is None:
        return {
            "in_distribution": None,
            "score": None,
            "threshold": None,
            "reason": "the bundle holds no OOD calibration for this skill",
        }
    score = ood_score(prototype, descriptor)
    return {
        "in_distribution": bool(score <= calibration.threshold),
        "score": score,
        "threshold": calibration.threshold,
        "calibrated_on": f"{calibration.split} split of {calibration.count} input(s)",
    }
