"""MONAI dictionary pipelines per modality, built from a task spec.

The pipelines take a dict holding one ``(1, *spatial)`` array per image column (``ct``, ``pet``,
``image``...) and optionally ``mask``, and return ``input`` ``(C, *input_size)`` float32 and
``mask`` ``(1, *input_size)`` int64 tensors:

* 3D inputs given as :class:`~monai.data.MetaTensor` (carrying the file's voxel-to-world
  affine, see :func:`to_meta_tensor`) are reoriented to ``orientation`` (RAS by default) and,
  when ``spacing`` is set, resampled to that voxel size (masks with nearest neighbour, so they
  stay integer and aligned). Plain arrays carry no geometry and are used as they are, as are
  2D images (PNG/JPEG have no affine);
* CT: Hounsfield window, scaled to [0, 1] (clipped);
* PET: SUV divided by ``suv_max`` (clipped to [0, 1]);
* MRI: z-score per channel;
* declared per task (``TaskSpec.preprocess``, see :func:`task_preprocess`), 2D images may first
  be cropped to their foreground (``crop_foreground``) and padded to a square (``pad_square``),
  the steps the Br35H demo builder applies, so raw files and predict inputs go the same way;
* then the columns are stacked channel-first, resized (or centre-cropped/padded) to
  ``input_size``, and for training randomly flipped and intensity-jittered.

When geometry was applied, the output also holds :data:`GEOMETRY_KEY`: the affine and spatial
shape of the reoriented/resampled grid *before* the resize/crop, which
:func:`to_input_space` uses to bring a prediction back onto the input file's grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unicon_core.config import Modality, TaskSpec
from unicon_core.data.manifest import Column, image_columns
from unicon_core.data.preprocess import _RAS_LABELS, PreprocessConfig
from unicon_core.keys import BatchKey

if TYPE_CHECKING:
    from monai.data import MetaTensor
    from monai.transforms import Compose, MapTransform

#: Output key of the grid after reorientation/resampling (``affine`` 4x4, ``shape``), present
#: only when the first image column carried an affine.
GEOMETRY_KEY = "geometry"


def task_preprocess(spec: TaskSpec, fallback: PreprocessConfig | None = None) -> PreprocessConfig:
    """The one preprocessing config of ``spec``'s pipeline, for training, evaluation and predict.

    A task declaring ``preprocess`` (``TaskSpec.preprocess``, in its YAML and ``site.json``)
    uses exactly that (unset fields at their defaults); a task declaring none uses
    ``fallback`` (the run's or bundle's global section), else the defaults.
    """
    if spec.preprocess:
        return PreprocessConfig.from_mapping(spec.preprocess)
    return fallback or PreprocessConfig()


def to_meta_tensor(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """A ``MetaTensor`` sharing ``array``'s memory and carrying its voxel-to-world ``affine``
    (nibabel's RAS+ convention), for the pipelines' reorientation/resampling."""
    from monai.data import MetaTensor

    return MetaTensor(
        torch.from_numpy(np.asarray(array)), affine=torch.as_tensor(affine, dtype=torch.float64)
    )


def _copy_float32(array: Any) -> Any:
    """A float32 copy: MONAI intensity transforms work in place, and inputs may be cached.

    A ``MetaTensor`` stays one (its affine is kept); anything else becomes a numpy array.
    """
    from monai.data import MetaTensor

    if isinstance(array, MetaTensor):
        return array.to(torch.float32, copy=True)
    return np.array(array, dtype=np.float32, copy=True)


def _geometry_transform() -> type:
    """Build the geometry transform class lazily (MONAI is imported only when needed)."""
    from monai.data import MetaTensor
    from monai.transforms import MapTransform, Orientation, Spacing
    from nibabel.orientations import aff2axcodes

    class CanonicalGeometryd(MapTransform):
        """Reorient (``Orientation``) and resample (``Spacing``) the keys holding a
        ``MetaTensor``; ``nearest_keys`` (masks) use nearest-neighbour interpolation. Plain
        arrays carry no affine and pass through. Volumes already in ``axcodes`` (or at
        ``pixdim``) skip that step, so task-size RAS data stay cheap. The grid of the first key
        is recorded under ``record_key``; keys leave as plain tensors."""

        def __init__(
            self,
            keys: Sequence[Hashable],
            nearest_keys: Sequence[Hashable],
            axcodes: str | None,
            pixdim: tuple[float, ...] | None,
            record_key: str,
        ) -> None:
            super().__init__(keys, allow_missing_keys=True)
            self.nearest_keys = set(nearest_keys)
            self.record_key = record_key
            self.axcodes = axcodes
            self.pixdim = pixdim
            self.orient = (
                Orientation(axcodes=axcodes, labels=_RAS_LABELS) if axcodes is not None else None
            )
            self.linear = Spacing(pixdim=pixdim, mode="bilinear") if pixdim else None
            self.nearest = Spacing(pixdim=pixdim, mode="nearest") if pixdim else None

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            for key in self.key_iterator(d):
                value = d[key]
                if not isinstance(value, MetaTensor):
                    continue
                if value.ndim != 4:
                    raise ValueError(
                        f"key {key!r}: reorientation needs a (C, X, Y, Z) image, got shape "
                        f"{tuple(value.shape)}"
                    )
                affine = np.asarray(value.affine, dtype=np.float64)
                if self.orient is not None and aff2axcodes(affine) != tuple(self.axcodes):
                    value = self.orient(value)
                    affine = np.asarray(value.affine, dtype=np.float64)
                spacing = np.linalg.norm(affine[:3, :3], axis=0)
                if self.linear is not None and not np.allclose(spacing, self.pixdim):
                    resample = self.nearest if key in self.nearest_keys else self.linear
                    value = resample(value)
                    affine = np.asarray(value.affine, dtype=np.float64)
                if self.record_key not in d:
                    d[self.record_key] = {
                        "affine": torch.from_numpy(affine.copy()),
                        "shape": torch.tensor(tuple(value.shape[1:]), dtype=torch.int64),
                    }
                # the grid is recorded: later transforms need no meta (plain tensors are faster)
                d[key] = value.as_tensor()
            return d

    return CanonicalGeometryd


def foreground_square(
    data: Mapping[Hashable, Any],
    keys: Sequence[str],
    crop: float | None,
    floor: float = 0.0,
    square: bool = False,
) -> dict[Hashable, Any]:
    """Crop 2D ``(C, H, W)`` entries to the foreground box of ``keys[0]`` (pixels above
    ``max(floor, crop * max)``, any channel) and zero-pad them, centred, to a square.

    Every key present (image columns, mask) gets the same box and padding, so masks stay
    aligned; an image without foreground is left uncropped. The Br35H demo builder's
    ``square_gray`` is this with ``crop=0.1, floor=10, square=True``.
    """
    d = dict(data)
    present = [k for k in keys if k in d]
    if not present:
        return d
    first = torch.as_tensor(d[present[0]])
    if first.ndim != 3:
        raise ValueError(
            f"preprocess crop_foreground/pad_square: 2D (C, H, W) images only, got shape "
            f"{tuple(first.shape)}"
        )
    box = (slice(None), slice(None))
    if crop is not None:
        fg = (first > max(float(floor), float(crop) * float(first.max()))).any(dim=0)
        if bool(fg.any()):
            rows = torch.nonzero(fg.any(dim=1)).flatten()
            cols = torch.nonzero(fg.any(dim=0)).flatten()
            box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    for key in present:
        x = torch.as_tensor(d[key])[:, box[0], box[1]]
        if square:
            h, w = x.shape[1:]
            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            canvas = x.new_zeros((x.shape[0], side, side))
            canvas[:, top : top + h, left : left + w] = x
            x = canvas
        d[key] = x
    return d


#: ITU-R BT.601 luma weights (PIL's ``convert("L")``) of :func:`rgb_to_gray`.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_gray(x: Any) -> Any:
    """``(3, ...)`` colour to ``(1, ...)`` luma (``preprocess.to_gray``); other channel counts
    pass unchanged (a grey image, or a task whose channels are not colour)."""
    if x.shape[0] != 3:
        return x
    t = torch.as_tensor(x)
    w = torch.tensor(LUMA_WEIGHTS, dtype=t.dtype).reshape(3, *([1] * (t.ndim - 1)))
    return (t * w).sum(dim=0, keepdim=True)


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

    Both share reorientation/resampling (3D inputs given as ``MetaTensor``), intensity scaling
    and resize/crop; only ``train`` adds random flips and intensity jitter, seeded with ``seed``
    (call ``set_random_state`` to reseed). Inputs are copied first, so the caller's arrays are
    never modified.
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
    if cfg.to_gray:
        if spec.channels != 1 or len(cols) != 1:
            raise ValueError(
                f"task {spec.name!r}: preprocess to_gray needs a 1-channel task with one image "
                f"column, the task has {spec.channels} channel(s)"
            )
        common.append(Lambdad(keys=cols, func=rgb_to_gray))
    if cfg.reshapes:
        if spec.spatial_dims != 2:
            raise ValueError(
                f"task {spec.name!r}: preprocess crop_foreground/pad_square apply to 2D images "
                f"only, the task is {spec.spatial_dims}D"
            )
        from functools import partial

        common.append(
            partial(
                foreground_square,
                keys=[*cols, mask],
                crop=cfg.crop_foreground,
                floor=cfg.foreground_floor,
                square=cfg.pad_square,
            )
        )
    if spec.spatial_dims == 3 and (cfg.orientation is not None or cfg.spacing is not None):
        geometry = _geometry_transform()
        common.append(geometry([*cols, mask], [mask], cfg.orientation, cfg.spacing, GEOMETRY_KEY))
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


def _uncrop_pad(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Exact inverse of MONAI ``ResizeWithPadOrCrop`` (symmetric pad, centre crop) to ``shape``."""
    for axis, full in enumerate(int(n) for n in shape):
        dim = axis + 1
        size = x.shape[dim]
        if size > full:  # the forward pass padded: before = (size - full) // 2
            x = x.narrow(dim, (size - full) // 2, full)
        elif size < full:  # the forward pass cropped from centre: start = full//2 - size//2
            before = full // 2 - size // 2
            pad_shape = list(x.shape)
            pad_shape[dim] = before
            after_shape = list(x.shape)
            after_shape[dim] = full - size - before
            x = torch.cat([x.new_zeros(pad_shape), x, x.new_zeros(after_shape)], dim=dim)
    return x


def to_input_space(
    prediction: torch.Tensor | np.ndarray,
    affine: torch.Tensor | np.ndarray,
    shape: Sequence[int],
    geometry: Mapping[str, Any] | None = None,
    spatial: str = "resize",
    mode: str = "nearest",
) -> torch.Tensor:
    """Bring a ``(C, *input_size)`` prediction back onto the input file's grid ``(C, *shape)``.

    ``affine``/``shape`` are the file's (``meta["affine"]``, ``meta["shape"]`` of a dataset
    item); ``geometry`` is the item's ``meta["geometry"]`` (the reoriented/resampled grid before
    resize/crop), ``None`` when no reorientation/resampling happened. The resize (or centre
    crop/pad, ``spatial="crop_pad"``) is undone first, then the grid is resampled onto the
    file's affine. ``mode``: ``"nearest"`` for label maps, ``"linear"`` for probabilities.
    """
    from monai.data import MetaTensor
    from monai.transforms import Resize, SpatialResample

    if mode not in ("nearest", "linear"):
        raise ValueError(f"to_input_space: mode {mode!r} is not 'nearest' or 'linear'")
    x = torch.as_tensor(prediction).as_subclass(torch.Tensor).detach().cpu().to(torch.float32)
    target = tuple(int(n) for n in shape)
    grid = target if geometry is None else tuple(int(n) for n in geometry["shape"])
    dims = len(grid)
    if x.ndim != dims + 1:
        raise ValueError(
            f"to_input_space: prediction shape {tuple(x.shape)} is not (C, *spatial) for "
            f"{dims}D shape {grid}"
        )
    if tuple(x.shape[1:]) != grid:
        if spatial == "resize":
            linear = "bilinear" if dims == 2 else "trilinear"
            resize = Resize(spatial_size=grid, mode="nearest" if mode == "nearest" else linear)
            x = torch.as_tensor(resize(x)).as_subclass(torch.Tensor)
        else:
            x = _uncrop_pad(x, grid)
    same = (
        geometry is not None
        and grid == target
        and np.allclose(
            np.asarray(geometry["affine"], dtype=np.float64), np.asarray(affine, dtype=np.float64)
        )
    )
    if geometry is not None and not same:
        src = MetaTensor(x, affine=torch.as_tensor(geometry["affine"], dtype=torch.float64))
        resample = SpatialResample(mode="nearest" if mode == "nearest" else "bilinear")
        dst = torch.as_tensor(np.asarray(affine), dtype=torch.float64)
        x = resample(src, dst_affine=dst, spatial_size=target)
    return torch.as_tensor(x).as_subclass(torch.Tensor)
