"""MONAI dictionary pipelines per modality, built from a task spec.

The pipelines take a dict holding one ``(1, *spatial)`` array per image column (``ct``, ``pet``,
``image``...) and optionally ``mask``, and return ``input`` ``(C, *input_size)`` float32 and
``mask`` ``(1, *input_size)`` int64 tensors:

* CT: Hounsfield window, scaled to [0, 1] (clipped);
* PET: SUV divided by ``suv_max`` (clipped to [0, 1]);
* MRI: z-score per channel;
* then the columns are stacked channel-first, resized (or centre-cropped/padded) to
  ``input_size``, and for training randomly flipped and intensity-jittered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from unicon_core.config import Modality, TaskSpec
from unicon_core.data.manifest import Column, image_columns
from unicon_core.keys import BatchKey

if TYPE_CHECKING:
    from monai.transforms import Compose, MapTransform


@dataclass
class PreprocessConfig:
    """Intensity, geometry and augmentation settings of the site pipelines."""

    ct_window: tuple[float, float] = field(
        default=(-160.0, 240.0), metadata={"help": "HU range mapped to [0, 1] (soft tissue)."}
    )
    suv_max: float = field(default=10.0, metadata={"help": "SUV mapped to 1 (clipped above)."})
    spatial: str = field(
        default="resize", metadata={"help": "'resize' (interpolate) or 'crop_pad' (centre)."}
    )
    flip_prob: float = field(default=0.5, metadata={"help": "Per-axis flip probability."})
    intensity_jitter: float = field(
        default=0.1, metadata={"help": "Random scale/shift of the input (training only)."}
    )

    def __post_init__(self) -> None:
        low, high = self.ct_window
        if not high > low:
            raise ValueError(f"preprocess.ct_window: high must exceed low, got {self.ct_window}")
        if self.suv_max <= 0:
            raise ValueError(f"preprocess.suv_max: must be > 0, got {self.suv_max}")
        if self.spatial not in ("resize", "crop_pad"):
            raise ValueError(f"preprocess.spatial: {self.spatial!r} is not resize or crop_pad")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"preprocess.flip_prob: must be in [0, 1], got {self.flip_prob}")
        if self.intensity_jitter < 0:
            raise ValueError(
                f"preprocess.intensity_jitter: must be >= 0, got {self.intensity_jitter}"
            )


def _copy_float32(array: Any) -> np.ndarray:
    """A float32 copy: MONAI intensity transforms work in place, and inputs may be cached."""
    return np.array(array, dtype=np.float32, copy=True)


def _intensity(column: str, modality: Modality, cfg: PreprocessConfig) -> MapTransform:
    from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged

    if column == Column.CT.value:
        low, high = cfg.ct_window
        return ScaleIntensityRanged(
            keys=column, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True
        )
    if column == Column.PET.value:
        return ScaleIntensityRanged(
            keys=column, a_min=0.0, a_max=cfg.suv_max, b_min=0.0, b_max=1.0, clip=True
        )
    if modality is Modality.MRI:
        return NormalizeIntensityd(keys=column, channel_wise=True)
    raise ValueError(f"no intensity transform for column {column!r} of modality {modality.value}")


def build_transforms(
    spec: TaskSpec, config: PreprocessConfig | None = None, seed: int = 0
) -> tuple[Compose, Compose]:
    """Return the ``(train, eval)`` pipelines of an image task.

    Both share intensity scaling and geometry; only ``train`` adds random flips and intensity
    jitter, seeded with ``seed`` (call ``set_random_state`` to reseed). Inputs are copied first,
    so the caller's arrays are never modified.
    """
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        DeleteItemsd,
        EnsureTyped,
        Lambdad,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Resized,
        ResizeWithPadOrCropd,
    )

    if spec.modality is Modality.CLINICAL:
        raise ValueError(f"task {spec.name!r} is tabular: it has no image transforms")
    cfg = config or PreprocessConfig()
    cols = image_columns(spec)
    inp, mask = BatchKey.INPUT.value, BatchKey.MASK.value
    size = tuple(spec.input_size)
    common: list = [Lambdad(keys=[*cols, mask], func=_copy_float32, allow_missing_keys=True)]
    common += [_intensity(c, spec.modality, cfg) for c in cols]
    common += [ConcatItemsd(keys=cols, name=inp, dim=0), DeleteItemsd(keys=cols)]
    if cfg.spatial == "resize":
        linear = "bilinear" if spec.spatial_dims == 2 else "trilinear"
        common += [
            Resized(keys=inp, spatial_size=size, mode=linear, anti_aliasing=False),
            Resized(keys=mask, spatial_size=size, mode="nearest", allow_missing_keys=True),
        ]
    else:
        common.append(
            ResizeWithPadOrCropd(keys=[inp, mask], spatial_size=size, allow_missing_keys=True)
        )
    final = [
        EnsureTyped(keys=inp, dtype="float32", track_meta=False),
        EnsureTyped(keys=mask, dtype="int64", track_meta=False, allow_missing_keys=True),
    ]
    augment: list = [
        RandFlipd(keys=[inp, mask], prob=cfg.flip_prob, spatial_axis=axis, allow_missing_keys=True)
        for axis in range(spec.spatial_dims)
    ]
    if cfg.intensity_jitter > 0:
        augment += [
            RandScaleIntensityd(keys=inp, factors=cfg.intensity_jitter, prob=0.5),
            RandShiftIntensityd(keys=inp, offsets=cfg.intensity_jitter, prob=0.5),
        ]
    train = Compose(common + augment + final).set_random_state(seed=seed)
    evaluation = Compose(common + final)
    return train, evaluation
