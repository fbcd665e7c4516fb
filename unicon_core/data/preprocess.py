"""The declared file-to-tensor steps of a skill (:class:`PreprocessConfig`), validated.

Kept apart from :mod:`unicon_core.data.transforms` (which builds the MONAI pipelines and imports
:mod:`unicon_core.config`) so that ``TaskSpec`` can validate its ``preprocess`` section without
an import cycle. Pure Python: no torch or MONAI here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: MONAI's axis labels for nibabel-style (RAS+) affines, passed explicitly to ``Orientation``.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


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
    orientation: str | None = field(
        default="RAS",
        metadata={"help": "Axis codes 3D inputs are reoriented to (None: keep the file's)."},
    )
    spacing: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "Voxel size (x, y, z) 3D inputs are resampled to (None: keep)."},
    )
    crop_foreground: float | None = field(
        default=None,
        metadata={"help": "2D: crop to the box of pixels > this fraction of the image maximum "
                  "(None: no crop)."},
    )
    foreground_floor: float = field(
        default=0.0, metadata={"help": "Absolute floor of the foreground threshold."}
    )
    pad_square: bool = field(
        default=False, metadata={"help": "2D: pad (zeros, centred) to a square before resizing."}
    )
    to_gray: bool = field(
        default=False,
        metadata={"help": "A 3-channel (RGB) image of a 1-channel task becomes one grey channel "
                  "(luma 0.299 R + 0.587 G + 0.114 B) before any other step."},
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
        if self.orientation is not None:
            self.orientation = _check_axcodes(self.orientation)
        if self.spacing is not None:
            self.spacing = _check_spacing(self.spacing)
        self.ct_window = (float(low), float(high))
        if self.crop_foreground is not None and not 0.0 <= float(self.crop_foreground) < 1.0:
            raise ValueError(
                f"preprocess.crop_foreground: must be in [0, 1) or None, got {self.crop_foreground}"
            )
        if not math.isfinite(float(self.foreground_floor)):
            raise ValueError(
                f"preprocess.foreground_floor: must be finite, got {self.foreground_floor}"
            )
        if not isinstance(self.pad_square, bool):
            raise ValueError(f"preprocess.pad_square: must be true or false, got {self.pad_square}")
        if not isinstance(self.to_gray, bool):
            raise ValueError(f"preprocess.to_gray: must be true or false, got {self.to_gray}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build from a mapping (YAML/JSON: lists for tuples), naming any unknown key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"preprocess: must be a mapping of settings, got {data!r}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"preprocess: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}"
            )
        values = dict(data)
        if "ct_window" in values:
            values["ct_window"] = tuple(values["ct_window"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (tuples as lists) that :meth:`from_mapping` reads back."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @property
    def reshapes(self) -> bool:
        """Whether the pipeline crops/pads 2D images before the resize (not invertible onto
        the file's grid, so segmentation masks cannot be written back)."""
        return self.crop_foreground is not None or self.pad_square


def _check_axcodes(codes: Any) -> str:
    """Upper-case axis codes naming each of L/R, P/A, I/S once (e.g. ``RAS``, ``LPS``)."""
    text = str(codes).upper() if isinstance(codes, str) else ""
    pairs = [{a, b} for a, b in _RAS_LABELS]
    if len(text) != 3 or any(sum(c in pair for c in text) != 1 for pair in pairs):
        raise ValueError(
            f"preprocess.orientation: {codes!r} is not 3 axis codes using each of L/R, P/A, I/S "
            "once (e.g. 'RAS', 'LPS'), or None"
        )
    return text


def _check_spacing(spacing: Any) -> tuple[float, ...]:
    """Three positive finite voxel sizes (lists from YAML/JSON become a tuple)."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"preprocess.spacing: {spacing!r} is not 3 positive voxel sizes (x, y, z), or None"
        )
    return values
